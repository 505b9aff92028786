"""The GPU image on a host without a GPU: the CUDA provider cannot start because the driver's
libcuda.so.1 is missing (every other CUDA library is in the image), and readiness says so.

docker/smoke.sh checks this against the real image; here the same path runs with the CPU
onnxruntime, told that CUDA is available, and the driver probe stubbed either way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from service.engine import options, sessions
from service.engine.sessions import CPU, CUDA, Engine, cuda_driver_error
from tests.service.tiny_model import build_tiny_artifact

MISSING = "libcuda.so.1: cannot open shared object file: No such file or directory"


def _no_driver(name: str) -> None:
    assert name == "libcuda.so.1"
    raise OSError(MISSING)


def test_driver_probe_names_what_does_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.sys, "platform", "linux")
    monkeypatch.setattr(options.ctypes, "CDLL", _no_driver)
    assert cuda_driver_error() == MISSING
    monkeypatch.setattr(options.ctypes, "CDLL", lambda name: object())
    assert cuda_driver_error() is None
    monkeypatch.setattr(options.sys, "platform", "darwin")
    assert cuda_driver_error() is None


@pytest.mark.parametrize("driver", [MISSING, None])
def test_readiness_detail_names_the_missing_driver(driver: str | None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    # as in the GPU image: the build offers CUDA, the session comes up on the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(sessions, "cuda_driver_error", lambda: driver)
    with warnings.catch_warnings():  # the CPU build's own complaint about the provider list
        warnings.simplefilter("ignore")
        engine = Engine(model, provider="auto", max_batch=1)
    assert engine.provider == CPU
    assert engine.fallback_reason is not None and engine.fallback_reason.startswith(f"{CUDA} did not start")
    if driver:
        assert f"the NVIDIA driver does not load: {MISSING}" in engine.fallback_reason
    else:
        assert "see the onnxruntime log above" in engine.fallback_reason
