"""Fixtures shared by the app-level tests: the anyio backend and the tiny served artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.tiny_model import build_tiny_artifact


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact (32x48 tile, 5 classes) most app tests serve; one per test module."""
    return build_tiny_artifact(tmp_path_factory.mktemp("m") / "tiny.onnx", tile=(32, 48), num_classes=5)


def pytest_configure(config: pytest.Config) -> None:
    # test_cuda_real.py: the real CUDA provider, run by scripts/gpu_check.sh (`pytest -m gpu`)
    config.addinivalue_line("markers", "gpu: needs onnxruntime-gpu, an NVIDIA GPU and PSPNET_GPU_TESTS=1")
