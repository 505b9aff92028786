"""Engine: real ONNX Runtime on CPU with the tiny artifact; CUDA paths through a fake session.

No CUDA here, so the CUDA branch is checked by construction: a fake
InferenceSession records the providers, options and IO-binding calls the engine
makes, and plays back what a real session would report.
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.artifact import METADATA_KEY, ArtifactError
from service.engine import CPU, CUDA, Engine
from tests.service.tiny_model import build_tiny_artifact, tiny_reference

TILE = (32, 48)
CLASSES = 5


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "tiny.onnx"
    return build_tiny_artifact(path, tile=TILE, num_classes=CLASSES)


def random_tiles(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, *TILE)).astype(np.float32)


# -- real ONNX Runtime, CPU ---------------------------------------------------------------------

def test_cpu_run_matches_numpy_reference(artifact: Path) -> None:
    engine = Engine(artifact, provider="cpu", max_batch=4)
    assert engine.provider == CPU and engine.fallback_reason is None
    tiles = random_tiles(4)
    out = engine.run(tiles)
    assert out.shape == (4, CLASSES, *TILE) and out.dtype == np.float32
    # measured over 30 random batches: max |ORT - float64 numpy| = 1.55e-6 (logits up to ~11)
    np.testing.assert_allclose(out, tiny_reference(tiles, CLASSES), rtol=0, atol=3e-6)
    # a tile's logits do not depend on its batch neighbours (measured: bit-identical on CPU)
    alone = np.concatenate([engine.run(tiles[i:i + 1]) for i in range(4)])
    np.testing.assert_array_equal(alone, out)


def test_run_refuses_what_the_batcher_never_sends(artifact: Path) -> None:
    engine = Engine(artifact, provider="cpu", max_batch=2)
    with pytest.raises(ValueError, match="batch of 3"):
        engine.run(random_tiles(3))
    with pytest.raises(ValueError, match="batch of 0"):
        engine.run(random_tiles(0))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 48\)"):
        engine.run(np.zeros((1, 3, 48, 32), np.float32))
    with pytest.raises(TypeError):
        engine.run(random_tiles(1).astype(np.float64))


def test_warmup_runs_every_batch_size_then_ready(artifact: Path) -> None:
    engine = Engine(artifact, provider="cpu", max_batch=3)
    seen: list[int] = []
    real_run = engine.run

    def spy(tiles: np.ndarray) -> np.ndarray:
        seen.append(len(tiles))
        return real_run(tiles)

    engine.run = spy  # type: ignore[method-assign]
    assert not engine.ready and engine.warmup_seconds is None
    seconds = engine.warmup()
    assert seen == [1, 2, 3]
    assert engine.ready and engine.warmup_seconds == seconds and seconds > 0
    assert engine.describe()["ready"] is True
    with pytest.raises(ValueError):
        engine.warmup([4])


def test_bad_options_and_mismatched_output(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Engine(artifact, provider="gpu", max_batch=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Engine(artifact, max_batch=0)
    # metadata that names 4 classes on a graph with 5 output channels
    m = onnx.load(str(artifact))
    prop = next(p for p in m.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(prop.value)
    meta["classes"], meta["palette"] = meta["classes"][:4], meta["palette"][:4]
    prop.value = json.dumps(meta)
    onnx.save(m, str(tmp_path / "bad.onnx"))
    with pytest.raises(ArtifactError, match="5 channels"):
        Engine(tmp_path / "bad.onnx", provider="cpu")


# -- CUDA by construction: a fake session ------------------------------------------------------

class FakeOutput:
    def __init__(self, shape: list[Any]) -> None:
        self.name, self.shape = "logits", shape


class FakeBinding:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.input: np.ndarray | None = None
        self.output: tuple[list[int], int] | None = None

    def bind_cpu_input(self, name: str, arr: np.ndarray) -> None:
        self.calls.append(("bind_cpu_input", name, arr.shape))
        self.input = arr

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: list[int] | None = None, buffer_ptr: int | None = None) -> None:
        self.calls.append(("bind_output", name, device_type, element_type, tuple(shape or ())))
        assert shape is not None and buffer_ptr is not None
        self.output = (shape, buffer_ptr)


def fake_logits(tiles: np.ndarray) -> np.ndarray:
    return np.stack([tiles[:, 0] * (c + 1) for c in range(CLASSES)], axis=1)


class FakeSession:
    """Stands in for ort.InferenceSession; class attributes steer it, instances record."""

    available: ClassVar[list[str]] = [CUDA, CPU]
    fail_cuda: ClassVar[str | None] = None  # error raised when CUDA is asked for
    drop_cuda: ClassVar[bool] = False  # come up on CPU although CUDA was asked (ORT does that)
    created: ClassVar[list[FakeSession]] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if CUDA in names and self.fail_cuda:
            raise RuntimeError(self.fail_cuda)
        self.path, self.sess_options, self.providers = path, sess_options, providers
        self.names = [n for n in names if not (n == CUDA and self.drop_cuda)]
        self.binding = FakeBinding()
        self.plain_runs = 0
        self.bound_runs = 0
        self.fallback_disabled = False
        FakeSession.created.append(self)

    def get_providers(self) -> list[str]:
        return self.names

    def get_outputs(self) -> list[FakeOutput]:
        return [FakeOutput(["N", CLASSES, *TILE])]

    def disable_fallback(self) -> None:
        self.fallback_disabled = True

    def io_binding(self) -> FakeBinding:
        return self.binding

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.plain_runs += 1
        return [fake_logits(feed["image"])]

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        # write into the bound host buffer through its raw pointer, as ORT does
        assert binding.input is not None and binding.output is not None
        self.bound_runs += 1
        shape, ptr = binding.output
        size = int(np.prod(shape))
        buf = np.ctypeslib.as_array((ctypes.c_float * size).from_address(ptr)).reshape(shape)
        buf[...] = fake_logits(binding.input)


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    monkeypatch.setattr(FakeSession, "available", [CUDA, CPU])
    monkeypatch.setattr(FakeSession, "fail_cuda", None)
    monkeypatch.setattr(FakeSession, "drop_cuda", False)
    monkeypatch.setattr(FakeSession, "created", [])
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(FakeSession.available))
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    return FakeSession


def test_cuda_session_options_and_io_binding(artifact: Path, fake_ort: type[FakeSession]) -> None:
    engine = Engine(artifact, provider="auto", intra_op_threads=3, inter_op_threads=2, max_batch=4)
    (s,) = fake_ort.created
    assert engine.provider == CUDA and engine.fallback_reason is None
    name, opts = s.providers[0]
    assert name == CUDA and s.providers[1:] == [CPU]
    assert opts["cudnn_conv_algo_search"] == "HEURISTIC"
    assert opts["do_copy_in_default_stream"] == "1" and opts["device_id"] == "0"
    so = s.sess_options
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 2
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert s.fallback_disabled, "ORT's silent run-time fallback must be off"

    tiles = random_tiles(3)
    out = engine.run(tiles)
    np.testing.assert_array_equal(out, fake_logits(tiles))
    assert s.bound_runs == 1 and s.plain_runs == 0
    assert s.binding.calls == [("bind_cpu_input", "image", (3, 3, *TILE)),
                               ("bind_output", "logits", "cpu", np.float32, (3, CLASSES, *TILE))]
    # every call gets its own output buffer: a caller's rows survive the next run
    again = engine.run(random_tiles(3, seed=1))
    np.testing.assert_array_equal(out, fake_logits(tiles))
    assert not np.shares_memory(out, again)
    engine.warmup()
    assert s.bound_runs == 2 + 4 and engine.ready


def test_cpu_choice_never_tries_cuda(artifact: Path, fake_ort: type[FakeSession]) -> None:
    engine = Engine(artifact, provider="cpu", intra_op_threads=0, inter_op_threads=1, max_batch=2)
    (s,) = fake_ort.created
    assert s.providers == [CPU] and engine.provider == CPU and engine.fallback_reason is None
    assert s.sess_options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    engine.run(random_tiles(2))
    assert s.plain_runs == 1 and s.bound_runs == 0


def test_auto_without_cuda_build_is_quietly_cpu(artifact: Path, fake_ort: type[FakeSession],
                                                caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.available = [CPU]
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(artifact, provider="auto", max_batch=2)
    assert engine.provider == CPU and engine.fallback_reason is None and not caplog.records


def test_cuda_requested_but_not_built_falls_back_loudly(artifact: Path, fake_ort: type[FakeSession],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.available = [CPU]
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(artifact, provider="cuda", max_batch=2)
    assert engine.provider == CPU and fake_ort.created[0].providers == [CPU]
    assert engine.fallback_reason is not None and "onnxruntime-gpu" in engine.fallback_reason
    assert engine.describe()["fallback_reason"] == engine.fallback_reason
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "CUDA FALLBACK" in caplog.records[0].getMessage()


def test_cuda_that_fails_to_start_falls_back_loudly(artifact: Path, fake_ort: type[FakeSession],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.fail_cuda = "CUDA failure 100: no CUDA-capable device is detected"
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(artifact, provider="auto", max_batch=2)
    assert engine.provider == CPU and [s.providers for s in fake_ort.created] == [[CPU]]
    assert engine.fallback_reason is not None and "no CUDA-capable device" in engine.fallback_reason
    assert any("CUDA FALLBACK" in r.getMessage() for r in caplog.records)
    engine.run(random_tiles(1))
    assert fake_ort.created[0].plain_runs == 1  # no IO binding on CPU


def test_provider_is_read_back_from_the_session(artifact: Path, fake_ort: type[FakeSession],
                                                caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.drop_cuda = True  # CUDA asked for and "created", but the session runs on CPU
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(artifact, provider="cuda", max_batch=2)
    assert engine.provider == CPU and engine.fallback_reason is not None
    assert any("CUDA FALLBACK" in r.getMessage() for r in caplog.records)
