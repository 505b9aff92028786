"""The two images: what they copy, how they install, run, and are configured.

No Docker engine here, so these read the Dockerfiles; the install step itself
runs for real in test_install.py.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from service.settings import Settings

from .helpers import (
    DOCKERFILES,
    ROOT,
    copy_sources,
    dockerignore_keeps,
    dockerignore_patterns,
    parse_dockerfile,
)

SETTING_VARS = {f"PSPNET_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_multi_stage_builder_then_runtime(flavour: str) -> None:
    stages = {s.name: s for s in parse_dockerfile(DOCKERFILES[flavour])}
    assert {"base", "builder", "runtime"} <= set(stages)
    # the runtime is the last stage (what `docker build` tags) and takes only the venv from the builder
    last = parse_dockerfile(DOCKERFILES[flavour])[-1]
    assert last.name == "runtime"
    from_builder = [i.flags_and_words() for i in last.all("COPY") if "--from" in i.args]
    assert from_builder == [({"from": "builder"}, ["/opt/venv", "/opt/venv"])]


def test_builder_runs_the_install_script_for_its_flavour(flavour: str) -> None:
    builder = next(s for s in parse_dockerfile(DOCKERFILES[flavour]) if s.name == "builder")
    runs = [i.args for i in builder.all("RUN")]
    # deps-only first (cached layer), then the project; both through the one script CI runs
    assert runs[0].endswith(f"docker/install.sh {flavour} /opt/venv --deps-only")
    assert runs[-1].endswith(f"docker/install.sh {flavour} /opt/venv")
    assert all("pip install" not in r for r in runs), "installs go through docker/install.sh only"
    copied = {src for sources, _ in copy_sources(builder) for src in sources}
    assert f"docker/requirements-{flavour}.txt" in copied


def test_builder_copies_only_what_serving_needs(flavour: str) -> None:
    # model/ is torch code and pspnet-model, benchmarks/load/ the load generator: neither can or should run
    # in the image; the artifacts go to /app/weights in the runtime stage, not into the wheel
    builder = next(s for s in parse_dockerfile(DOCKERFILES[flavour]) if s.name == "builder")
    copied = {src.rstrip("/") for sources, _ in copy_sources(builder) for src in sources}
    assert "service" in copied
    assert not copied & {"model", "benchmarks", "weights", "tests", "scripts"}, copied


def test_every_copy_source_exists_and_is_in_the_build_context(flavour: str) -> None:
    patterns = dockerignore_patterns()
    for stage in parse_dockerfile(DOCKERFILES[flavour]):
        for sources, _ in copy_sources(stage):
            for src in sources:
                assert (ROOT / src).exists(), f"{DOCKERFILES[flavour].name} copies missing {src}"
                assert dockerignore_keeps(src.rstrip("/"), patterns), f".dockerignore drops {src}"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns()
    for heavy in ("runs/x", ".venv/bin/python", ".git/HEAD", "service/__pycache__/a.pyc", "weights/x.pt"):
        assert not dockerignore_keeps(heavy, patterns), heavy


def test_runtime_runs_as_non_root_with_exec_form_entrypoint(flavour: str) -> None:
    runtime = parse_dockerfile(DOCKERFILES[flavour])[-1]
    (user,) = runtime.all("USER")
    uid, _, gid = user.args.partition(":")
    # numeric, so Kubernetes' runAsNonRoot can verify it
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    (entrypoint,) = runtime.all("ENTRYPOINT")
    argv = entrypoint.exec_form()
    assert argv is not None, "ENTRYPOINT must be exec form so SIGTERM reaches the server"
    assert argv[-1] == "pspnet-serve"
    (cmd,) = runtime.all("CMD")
    assert cmd.exec_form() == []
    (health,) = runtime.all("HEALTHCHECK")
    assert health.exec_form() == ["python", "/app/healthcheck.py"]
    (expose,) = runtime.all("EXPOSE")
    assert expose.args == runtime.env()["PSPNET_PORT"] == "8000"


def test_runtime_settings_are_real_settings_and_name_the_baked_model(flavour: str) -> None:
    runtime = parse_dockerfile(DOCKERFILES[flavour])[-1]
    env = runtime.env()
    pspnet_vars = {k for k in env if k.startswith("PSPNET_")}
    assert pspnet_vars <= SETTING_VARS, pspnet_vars - SETTING_VARS
    baked = {dest for _, dest in copy_sources(runtime) if dest.endswith(".onnx")}
    assert env["PSPNET_MODEL"] in baked


def test_no_syntax_directive_and_one_python_base_by_build_argument(flavour: str) -> None:
    # a `# syntax=` line makes BuildKit fetch a frontend image first: no build where no registry is reachable
    text = DOCKERFILES[flavour].read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    stages = parse_dockerfile(DOCKERFILES[flavour])
    assert stages[0].base == "${PYTHON_IMAGE}"
    # both images on the same Python base (the GPU one has no vendor base: its CUDA comes from wheels);
    # docker/lock.sh resolves both locks for its Python, 3.11, and docker/base.sh builds it from Debian
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert {s.base for s in stages[1:]} == {"base"}


def test_runtime_home_is_writable_and_labels_name_the_build(flavour: str) -> None:
    runtime = parse_dockerfile(DOCKERFILES[flavour])[-1]
    # not /app (root's): ONNX Runtime writes a telemetry id under HOME; /tmp is the writable mount
    assert runtime.env()["HOME"] == "/tmp"
    labels = " ".join(i.args for i in runtime.all("LABEL"))
    args = {i.args.split("=", 1)[0]: i.args.partition("=")[2] for i in runtime.all("ARG")}
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels, key
        assert arg in args
    assert args["VERSION"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # the build arguments come last: a new revision rebuilds no layer
    keywords = [i.keyword for i in runtime.instructions]
    assert set(keywords[keywords.index("ARG"):]) == {"ARG", "LABEL"}


def test_gpu_image_loader_finds_the_cuda_wheels() -> None:
    runtime = parse_dockerfile(DOCKERFILES["gpu"])[-1]
    (ldconfig,) = [i.args for i in runtime.all("RUN") if "ldconfig" in i.args]
    # CUDA 13 wheels share one folder (nvidia/cu13); cuDNN keeps its own
    assert "site-packages/nvidia/cu13/lib" in ldconfig and "site-packages/nvidia/cudnn/lib" in ldconfig
    assert "/etc/ld.so.conf.d/" in ldconfig
    # after the venv is copied in
    steps = [(i.keyword, "--from" in i.args or "ldconfig" in i.args) for i in runtime.instructions]
    assert steps.index(("RUN", True)) > steps.index(("COPY", True))
