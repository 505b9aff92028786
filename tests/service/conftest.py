"""Fixtures shared by the app-level tests: the anyio backend, the tiny served artifact, a gated engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from service.engine.sessions import Engine
from tests.service.tiny_model import build_tiny_artifact


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def slow_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Engine.run_outputs (every batch) blocks until the returned event is set (or 5 s pass)."""
    gate = threading.Event()
    original = Engine.run_outputs

    def run(self: Engine, tiles: np.ndarray, names: Sequence[str], *,
            session: int = 0) -> dict[str, np.ndarray]:
        gate.wait(5)
        return original(self, tiles, names, session=session)

    monkeypatch.setattr(Engine, "run_outputs", run)
    yield gate
    gate.set()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact (32x48 tile, 5 classes) most app tests serve; one per test module."""
    return build_tiny_artifact(tmp_path_factory.mktemp("m") / "tiny.onnx", tile=(32, 48), num_classes=5)


def pytest_configure(config: pytest.Config) -> None:
    # test_cuda_real.py: the real CUDA provider, run by benchmarks/gpu_check.sh (`pytest -m gpu`)
    config.addinivalue_line("markers", "gpu: needs onnxruntime-gpu, an NVIDIA GPU and PSPNET_GPU_TESTS=1")
