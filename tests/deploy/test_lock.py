"""The images' pins (docker/requirements-*.txt, written by docker/lock.sh) against pyproject.toml.

Offline: no resolver runs here. The lock is current when its direct pins are
exactly pyproject.toml's dependencies plus the flavour's extra (and, for the GPU
image, the CUDA wheels of docker/gpu-libs.in), each within its specifier, every
other pin is needed by a pin (uv's "# via" lines), and every pin carries hashes.
That the pinned set installs and is closed is test_install.py's job (pip
--require-hashes refuses anything unpinned).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .helpers import (
    LOCK_INPUTS,
    LOCK_ROOT,
    LOCKS,
    ROOT,
    lock_input_root,
    normalise,
    read_lock,
    read_requirements_in,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _direct(flavour: str) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][flavour]]]
    return {normalise(r.name): r for r in reqs}


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_direct_pins_are_pyprojects_requirements(flavour: str) -> None:
    pins = read_lock(LOCKS[flavour])
    direct = _direct(flavour)
    pinned_direct = {name for name, pin in pins.items() if LOCK_ROOT in pin.via}
    # a dependency added to or removed from pyproject.toml since the lock: re-run docker/lock.sh
    assert pinned_direct == set(direct), f"re-run docker/lock.sh: {pinned_direct ^ set(direct)}"
    for name, req in direct.items():
        assert req.specifier.contains(pins[name].version, prereleases=True), (
            f"{name}=={pins[name].version} does not satisfy pyproject.toml's {req}: re-run docker/lock.sh")


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_pins_of_the_added_requirement_files_are_theirs(flavour: str) -> None:
    pins = read_lock(LOCKS[flavour])
    for relpath in LOCK_INPUTS[flavour]:
        reqs = {normalise(r.name): r for r in map(Requirement, read_requirements_in(relpath))}
        root = lock_input_root(relpath)
        assert {name for name, pin in pins.items() if root in pin.via} == set(reqs), "re-run docker/lock.sh"
        for name, req in reqs.items():
            assert req.specifier.contains(pins[name].version), f"{name}=={pins[name].version} vs {req}"


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_every_pin_is_needed_and_hashed(flavour: str) -> None:
    pins = read_lock(LOCKS[flavour])
    roots = {LOCK_ROOT, *map(lock_input_root, LOCK_INPUTS[flavour])}
    for pin in pins.values():
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), pin.name
        assert pin.via, f"{pin.name} is pinned but nothing needs it"
        assert all(p in roots or p in pins for p in pin.via), f"{pin.name} via {pin.via}"


def test_gpu_lock_brings_cuda_13_0_and_cudnn_9() -> None:
    # the CUDA the pinned onnxruntime-gpu is built for (Dockerfile, docs/DEPLOYMENT.md), from wheels:
    # the GPU image has no vendor base; libcuda.so.1 alone comes from the host's driver
    pins = read_lock(LOCKS["gpu"])
    assert pins["nvidia-cuda-runtime"].version.startswith("13.0.")
    assert pins["nvidia-cublas"].version.startswith("13.")
    assert pins["nvidia-curand"].version.startswith("10.")
    assert pins["nvidia-cuda-nvrtc"].version.startswith("13.0.")
    assert pins["nvidia-cudnn-cu13"].version.startswith("9.")
    assert not any(n.startswith("nvidia-") for n in read_lock(LOCKS["cpu"]))


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_one_runtime_flavour_and_no_torch(flavour: str) -> None:
    pins = read_lock(LOCKS[flavour])
    wanted, unwanted = ("onnxruntime", "onnxruntime-gpu") if flavour == "cpu" else ("onnxruntime-gpu",
                                                                                     "onnxruntime")
    assert wanted in pins and unwanted not in pins
    assert not {"torch", "onnx", "httpx"} & set(pins), "the images carry serving dependencies only"


def test_reader_sees_a_stale_lock(tmp_path: Path) -> None:
    # the check above can fail: a lock missing a direct dependency, or with one nobody needs
    text = LOCKS["cpu"].read_text()
    assert "# via pspnet-serving (pyproject.toml)" in text
    stale = tmp_path / "stale.txt"
    stale.write_text(text.replace("# via pspnet-serving (pyproject.toml)", "# via nothing-here", 1))
    pins = read_lock(stale)
    assert {n for n, p in pins.items() if LOCK_ROOT in p.via} != set(_direct("cpu"))
