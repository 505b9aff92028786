"""docker/compose.yaml, prometheus.yml and the Grafana provisioning agree with each other and the images.

Schema validity is scripts/check_deploy.sh's job (check-jsonschema, promtool);
these check what a schema cannot: names, ports and paths that must line up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

from .helpers import DOCKERFILES, ROOT, load_yaml, parse_dockerfile

COMPOSE = "docker/compose.yaml"


def services() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE)["services"])


def mounts(service: str) -> dict[str, str]:
    """{source: target} of a service's volumes, sources resolved against docker/."""
    out = {}
    for v in services()[service].get("volumes", []):
        source, target = v.split(":")[:2]
        out[source] = target
    return out


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60}[text[-1]]


def test_cpu_by_default_gpu_profile_reserves_the_device() -> None:
    svc = services()
    cpu, gpu = svc["pspnet"], svc["pspnet-gpu"]
    assert "profiles" not in cpu
    assert gpu["profiles"] == ["gpu"]
    for svc_, flavour in ((cpu, "cpu"), (gpu, "gpu")):
        built = ROOT / "docker" / svc_["build"]["context"] / svc_["build"]["dockerfile"]
        assert built.resolve() == DOCKERFILES[flavour]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


@pytest.mark.parametrize("name", ["pspnet", "pspnet-gpu"])
def test_service_base_image_is_a_build_argument(name: str) -> None:
    # where no registry is reachable, PYTHON_IMAGE names docker/base.sh's image; by default the Dockerfile's
    svc = services()[name]
    dockerfile = (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
    default = dockerfile.read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]
    assert svc["build"]["args"] == {"PYTHON_IMAGE": f"${{PYTHON_IMAGE:-{default}}}"}


@pytest.mark.parametrize("name", ["pspnet", "pspnet-gpu"])
def test_service_settings_are_valid(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services()[name]
    env = {k: str(v) for k, v in svc["environment"].items()}
    fields = {f"PSPNET_{f.upper()}" for f in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    settings = Settings(model=model)  # raises on a bad value
    # SIGTERM drains in-flight requests: compose must wait longer than the longest one
    assert _seconds(svc["stop_grace_period"]) > settings.request_timeout_s
    # the container port is the image's
    runtime = parse_dockerfile(DOCKERFILES["cpu" if name == "pspnet" else "gpu"])[-1]
    (port,) = svc["ports"]
    assert port.split(":")[-1] == runtime.env()["PSPNET_PORT"] == str(settings.port)


def test_prometheus_scrapes_every_service_replica() -> None:
    config = load_yaml("docker/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pspnet"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    built = {name for name, s in services().items() if "build" in s}
    assert set(sd["names"]) == built
    assert sd["type"] == "A"
    assert str(sd["port"]) == parse_dockerfile(DOCKERFILES["cpu"])[-1].env()["PSPNET_PORT"]


def test_prometheus_gets_its_config_file() -> None:
    prom = services()["prometheus"]
    config_flag = next(c for c in prom["command"] if c.startswith("--config.file="))
    assert mounts("prometheus")["./prometheus.yml"] == config_flag.split("=", 1)[1]


def test_grafana_provisioning_lines_up() -> None:
    m = mounts("grafana")
    assert m["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml("docker/grafana/provisioning/dashboards/pspnet.yaml")["providers"]
    assert m["./grafana/dashboards"] == provider["options"]["path"]
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (ROOT / "docker" / "grafana" / "dashboards" / Path(home).name).is_file()
    (ds,) = load_yaml("docker/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    prom_port = services()["prometheus"]["ports"][0].split(":")[-1]
    assert ds["url"] == f"http://prometheus:{prom_port}"
