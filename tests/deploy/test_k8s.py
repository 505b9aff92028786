"""k8s/: the GPU base and the CPU overlay hold what the brief asks and agree with the images.

Schema validity (kubernetes-validate) is scripts/check_deploy.sh's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

from .helpers import DOCKERFILES, ROOT, load_module, parse_dockerfile

overlay = load_module("scripts/k8s_overlay.py")


def rendered(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in overlay.render(ROOT / "k8s" / name)}


@pytest.fixture(params=["base", "cpu"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def settings_of(docs: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = dict(docs["ConfigMap"]["data"])
    env.update({e["name"]: e["value"] for e in container(docs).get("env", [])})
    fields = {f"PSPNET_{f.upper()}" for f in Settings.model_fields}
    assert set(env) <= fields, f"not settings: {set(env) - fields}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    return Settings(model=model)  # raises on a bad value


def test_probes_ports_and_grace(variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(variant)
    c = container(docs)
    settings = settings_of(docs, tmp_path, monkeypatch)
    (port,) = c["ports"]
    assert port["containerPort"] == settings.port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    # generous for loading and warming up the model
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.request_timeout_s
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in c["resources"]["requests"], "CPU utilisation needs a CPU request"


def test_non_root_as_the_image_user(variant: str) -> None:
    docs = rendered(variant)
    pod_sc = docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    (user,) = parse_dockerfile(DOCKERFILES["gpu"])[-1].all("USER")
    assert pod_sc["runAsNonRoot"] is True
    assert str(pod_sc["runAsUser"]) == user.args.split(":")[0]
    sc = container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    # a read-only root needs a writable /tmp (upload spooling, CUDA cache)
    assert any(m["mountPath"] == "/tmp" for m in container(docs)["volumeMounts"])


def test_gpu_base_reserves_a_gpu_and_cpu_overlay_none() -> None:
    base, cpu = rendered("base"), rendered("cpu")
    gpu_res = container(base)["resources"]
    assert gpu_res["limits"]["nvidia.com/gpu"] == 1
    assert container(base)["image"].endswith(":cuda")
    assert base["ConfigMap"]["data"]["PSPNET_PROVIDER"] == "cuda"
    cpu_c = container(cpu)
    assert "nvidia.com/gpu" not in str(cpu_c["resources"])
    assert cpu_c["image"].endswith(":cpu")
    assert cpu["ConfigMap"]["data"]["PSPNET_PROVIDER"] == "cpu"
    # ONNX Runtime's threads fit the CPU limit, not the node
    threads = int(cpu["ConfigMap"]["data"]["PSPNET_INTRA_OP_THREADS"])
    assert 1 <= threads <= float(cpu_c["resources"]["limits"]["cpu"])


def test_baked_model_path_is_the_images() -> None:
    cm = rendered("base")["ConfigMap"]["data"]
    assert cm["PSPNET_MODEL"] == parse_dockerfile(DOCKERFILES["gpu"])[-1].env()["PSPNET_MODEL"]


# ---------------------------------------------------------------- the renderer itself

def test_apply_patch_ops() -> None:
    doc = {"a": {"b": [1, 2, 3]}, "c/d": 1, "e": 0}
    out = overlay.apply_patch(doc, [
        {"op": "replace", "path": "/a/b/0", "value": 9},
        {"op": "add", "path": "/a/b/-", "value": 4},
        {"op": "remove", "path": "/c~1d"},
        {"op": "add", "path": "/f", "value": {"g": 1}},
        {"op": "test", "path": "/e", "value": 0},
    ])
    assert out == {"a": {"b": [9, 2, 3, 4]}, "e": 0, "f": {"g": 1}}
    assert doc == {"a": {"b": [1, 2, 3]}, "c/d": 1, "e": 0}, "input untouched"


@pytest.mark.parametrize("ops", [
    [{"op": "replace", "path": "/missing", "value": 1}],
    [{"op": "remove", "path": "/a/x"}],
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "move", "path": "/a", "from": "/b"}],
])
def test_apply_patch_refuses(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(overlay.OverlayError):
        overlay.apply_patch({"a": 1}, ops)


def test_render_refuses_unsupported_kustomize_features(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages:\n  - name: x\n    newTag: y\n")
    with pytest.raises(overlay.OverlayError, match="unsupported keys"):
        overlay.render(tmp_path)
