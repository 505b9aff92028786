"""Engine: real ONNX Runtime on CPU with the tiny artifact; CUDA paths through a fake session.

No CUDA here, so the CUDA branch is checked by construction: a fake
InferenceSession records the providers, options and IO-binding calls the engine
makes, and plays back what a real session would report.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import service.engine.options
import service.engine.sessions
from service.contract.artifact import METADATA_KEY, ArtifactError
from service.engine.sessions import CPU, CUDA, Engine, SessionRunner, intra_op_threads_for
from tests.bounds import within
from tests.service.tiny_model import TINY_REFERENCE_BOUND, build_tiny_artifact, tiny_reference

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
    want = tiny_reference(tiles, CLASSES)
    assert out.shape == want.shape
    within("engine.tiny_vs_float64", np.abs(out - want).max(), TINY_REFERENCE_BOUND)
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
    real_run = engine.run_outputs

    def spy(tiles: np.ndarray, names: Any, *, session: int = 0) -> dict[str, np.ndarray]:
        assert tuple(names) == engine.outputs and session == 0
        seen.append(len(tiles))
        return real_run(tiles, names, session=session)

    engine.run_outputs = spy  # type: ignore[method-assign]
    assert engine.warmup_seconds is None
    seconds = engine.warmup()
    assert seen == [1, 2, 3]
    assert engine.warmup_seconds == seconds and seconds > 0
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


def test_named_outputs_on_cpu(tmp_path: Path) -> None:
    """labels come from the graph, equal to the argmax of its logits; only what is named is returned."""
    plain = Engine(build_tiny_artifact(tmp_path / "plain.onnx", tile=TILE, num_classes=CLASSES),
                   provider="cpu", max_batch=4)
    both = Engine(build_tiny_artifact(tmp_path / "labels.onnx", tile=TILE, num_classes=CLASSES,
                                      with_labels=True), provider="cpu", max_batch=4)
    assert plain.outputs == ("logits",) and both.outputs == ("logits", "labels")
    tiles = random_tiles(3, seed=4)
    logits = both.run(tiles)
    np.testing.assert_array_equal(logits, plain.run(tiles))  # the extra output changes nothing else
    out = both.run_outputs(tiles, ["labels"])
    assert list(out) == ["labels"]
    labels = out["labels"]
    assert labels.shape == (3, *TILE) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=1))  # same session, same logits
    pair = both.run_outputs(tiles, ("labels", "logits"))
    assert list(pair) == ["labels", "logits"]
    np.testing.assert_array_equal(pair["logits"], logits)
    np.testing.assert_array_equal(pair["labels"], labels)
    with pytest.raises(ValueError, match="no output 'labels'"):
        plain.run_outputs(tiles, ["labels"])
    for bad in ([], ["logits", "logits"], "logits", ["scores"]):
        with pytest.raises(ValueError):
            both.run_outputs(tiles, bad)


def test_large_cpu_outputs_land_in_buffers_the_caller_owns(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past OWN_OUTPUT_BYTES a CPU batch's outputs are bound to fresh numpy buffers (freed to the
    system when dropped), not ONNX Runtime's arena (kept by it for good); same values either way."""
    engine = Engine(build_tiny_artifact(tmp_path / "labels.onnx", tile=TILE, num_classes=CLASSES,
                                        with_labels=True), provider="cpu", max_batch=4)
    tiles = random_tiles(3, seed=5)
    arena = engine.run_outputs(tiles, ("logits", "labels"))
    assert not arena["logits"].flags.owndata  # ORT's memory, under a capsule
    monkeypatch.setattr(service.engine.sessions, "OWN_OUTPUT_BYTES", 0)
    owned = engine.run_outputs(tiles, ("logits", "labels"))
    for name in ("logits", "labels"):
        assert owned[name].flags.owndata and owned[name].dtype == arena[name].dtype
        np.testing.assert_array_equal(owned[name], arena[name])


def test_labels_of_many_classes_are_uint16(tmp_path: Path) -> None:
    path = build_tiny_artifact(tmp_path / "many.onnx", tile=(8, 8), num_classes=300, with_labels=True)
    engine = Engine(path, provider="cpu", max_batch=2)
    tiles = np.random.default_rng(1).uniform(0, 255, (2, 3, 8, 8)).astype(np.float32)
    out = engine.run_outputs(tiles, ["logits", "labels"])
    assert out["labels"].dtype == np.uint16 and out["labels"].shape == (2, 8, 8)
    np.testing.assert_array_equal(out["labels"], np.argmax(out["logits"], axis=1))
    assert out["labels"].max() > 255  # ids beyond uint8 do occur in this graph


def test_intra_op_threads_per_session() -> None:
    assert intra_op_threads_for(0, 1, cores=8) == 0  # one session: ORT's own default, as before
    assert intra_op_threads_for(3, 1, cores=8) == 3
    assert intra_op_threads_for(3, 4, cores=8) == 3  # a positive setting is per session, as given
    assert intra_op_threads_for(0, 2, cores=8) == 4
    assert intra_op_threads_for(0, 3, cores=8) == 2
    assert intra_op_threads_for(0, 2, cores=2) == 1
    assert intra_op_threads_for(0, 4, cores=2) == 1  # never 0 (which would mean ORT's default)
    assert intra_op_threads_for(0, 2) == max(1, service.engine.options.usable_cores() // 2)
    for bad in ((-1, 1), (0, 0)):
        with pytest.raises(ValueError):
            intra_op_threads_for(*bad)


def test_several_cpu_sessions_run_at_once_and_agree(artifact: Path) -> None:
    engine = Engine(artifact, provider="cpu", max_batch=2, sessions=2)
    half = max(1, service.engine.options.usable_cores() // 2)
    assert engine.sessions == 2 and engine.intra_op_threads == half
    runners = engine.runners()
    assert [r.session for r in runners] == [0, 1] and all(r.outputs == ("logits",) for r in runners)
    tiles = [random_tiles(2, seed=s) for s in range(8)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = runners[i % 2](tiles[i], ("logits",))["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(8):
        want = tiny_reference(tiles[i], CLASSES)
        assert results[i].shape == want.shape
        within("engine.tiny_vs_float64", np.abs(results[i] - want).max(), TINY_REFERENCE_BOUND)
    with pytest.raises(ValueError, match=r"sessions 0\.\.1"):
        engine.run(tiles[0], session=2)
    with pytest.raises(ValueError):
        Engine(artifact, provider="cpu", sessions=0)


# -- CUDA by construction: a fake session ------------------------------------------------------

class FakeOutput:
    def __init__(self, name: str, shape: list[Any], type_: str) -> None:
        self.name, self.shape, self.type = name, shape, type_


class FakeBinding:
    """Records calls; like ORT's IOBinding, outputs stay bound until cleared."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.clears = 0
        self.input: np.ndarray | None = None
        self.outputs: dict[str, tuple[Any, list[int], int]] = {}

    def bind_cpu_input(self, name: str, arr: np.ndarray) -> None:
        self.calls.append(("bind_cpu_input", name, arr.shape))
        self.input = arr

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: list[int] | None = None, buffer_ptr: int | None = None) -> None:
        self.calls.append(("bind_output", name, device_type, element_type, tuple(shape or ())))
        assert shape is not None and buffer_ptr is not None
        self.outputs[name] = (element_type, shape, buffer_ptr)

    def clear_binding_outputs(self) -> None:
        self.clears += 1
        self.outputs.clear()


def fake_logits(tiles: np.ndarray) -> np.ndarray:
    return np.stack([tiles[:, 0] * (c + 1) for c in range(CLASSES)], axis=1)


def fake_outputs(tiles: np.ndarray) -> dict[str, np.ndarray]:
    # labels that vary from pixel to pixel (the fake's logits would make nearly all of them 4)
    return {"logits": fake_logits(tiles), "labels": (tiles[:, 0].astype(np.int64) % CLASSES).astype(np.uint8)}


class FakeSession:
    """Stands in for ort.InferenceSession; class attributes steer it, instances record."""

    available: ClassVar[list[str]] = [CUDA, CPU]
    fail_cuda: ClassVar[str | None] = None  # error raised when CUDA is asked for
    drop_cuda: ClassVar[bool] = False  # come up on CPU although CUDA was asked (ORT does that)
    drop_cuda_from: ClassVar[int | None] = None  # ... from this many sessions created on
    labels_type: ClassVar[str | None] = None  # the graph also has `labels` of this ORT type
    barrier: ClassVar[threading.Barrier | None] = None  # every run waits here (concurrency tests)
    hold: ClassVar[float] = 0.0  # seconds every run takes
    created: ClassVar[list[FakeSession]] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if CUDA in names and self.fail_cuda:
            raise RuntimeError(self.fail_cuda)
        self.path, self.sess_options, self.providers = path, sess_options, providers
        dropped = self.drop_cuda or (self.drop_cuda_from is not None
                                     and len(FakeSession.created) >= self.drop_cuda_from)
        self.names = [n for n in names if not (n == CUDA and dropped)]
        self.binding = FakeBinding()
        self.plain_runs = 0
        self.bound_runs = 0
        self.fetched: list[tuple[str, ...]] = []  # the outputs each run brought back to the host
        self.active = 0
        self.most_active = 0  # most runs of this session ever in progress at once
        self.fallback_disabled = False
        FakeSession.created.append(self)

    def get_providers(self) -> list[str]:
        return self.names

    def get_outputs(self) -> list[FakeOutput]:
        outs = [FakeOutput("logits", ["N", CLASSES, *TILE], "tensor(float)")]
        if self.labels_type is not None:
            outs.append(FakeOutput("labels", ["N", *TILE], self.labels_type))
        return outs

    def disable_fallback(self) -> None:
        self.fallback_disabled = True

    def io_binding(self) -> FakeBinding:
        return self.binding

    def _enter(self) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        if self.barrier is not None:
            self.barrier.wait()
        time.sleep(self.hold)
        self.active -= 1

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._enter()
        self.plain_runs += 1
        self.fetched.append(tuple(names))
        outs = fake_outputs(feed["image"])
        return [outs[n] for n in names]

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        # write into every bound host buffer through its raw pointer, as ORT does
        assert binding.input is not None and binding.outputs
        self._enter()
        self.bound_runs += 1
        self.fetched.append(tuple(binding.outputs))
        values = fake_outputs(binding.input)
        for name, (element_type, shape, ptr) in binding.outputs.items():
            size = int(np.prod(shape)) * np.dtype(element_type).itemsize
            buf = np.frombuffer((ctypes.c_char * size).from_address(ptr), dtype=element_type).reshape(shape)
            buf[...] = values[name]


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    monkeypatch.setattr(FakeSession, "available", [CUDA, CPU])
    monkeypatch.setattr(FakeSession, "fail_cuda", None)
    monkeypatch.setattr(FakeSession, "drop_cuda", False)
    monkeypatch.setattr(FakeSession, "drop_cuda_from", None)
    monkeypatch.setattr(FakeSession, "labels_type", None)
    monkeypatch.setattr(FakeSession, "barrier", None)
    monkeypatch.setattr(FakeSession, "hold", 0.0)
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
    assert s.bound_runs == 1 and s.plain_runs == 0 and s.fetched == [("logits",)]
    assert s.binding.calls == [("bind_cpu_input", "image", (3, 3, *TILE)),
                               ("bind_output", "logits", "cpu", np.float32, (3, CLASSES, *TILE))]
    # every call gets its own output buffer: a caller's rows survive the next run
    again = engine.run(random_tiles(3, seed=1))
    np.testing.assert_array_equal(out, fake_logits(tiles))
    assert not np.shares_memory(out, again)
    engine.warmup()
    assert s.bound_runs == 2 + 4 and engine.warmup_seconds is not None


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
    with caplog.at_level(logging.WARNING, logger="service.engine.sessions"):
        engine = Engine(artifact, provider="auto", max_batch=2)
    assert engine.provider == CPU and engine.fallback_reason is None and not caplog.records


def test_cuda_requested_but_not_built_falls_back_loudly(artifact: Path, fake_ort: type[FakeSession],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.available = [CPU]
    with caplog.at_level(logging.WARNING, logger="service.engine.sessions"):
        engine = Engine(artifact, provider="cuda", max_batch=2)
    assert engine.provider == CPU and fake_ort.created[0].providers == [CPU]
    assert engine.fallback_reason is not None and "onnxruntime-gpu" in engine.fallback_reason
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "CUDA FALLBACK" in caplog.records[0].getMessage()


def test_cuda_that_fails_to_start_falls_back_loudly(artifact: Path, fake_ort: type[FakeSession],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.fail_cuda = "CUDA failure 100: no CUDA-capable device is detected"
    with caplog.at_level(logging.WARNING, logger="service.engine.sessions"):
        engine = Engine(artifact, provider="auto", max_batch=2)
    assert engine.provider == CPU and [s.providers for s in fake_ort.created] == [[CPU]]
    assert engine.fallback_reason is not None and "no CUDA-capable device" in engine.fallback_reason
    assert any("CUDA FALLBACK" in r.getMessage() for r in caplog.records)
    engine.run(random_tiles(1))
    assert fake_ort.created[0].plain_runs == 1  # no IO binding on CPU


def test_provider_is_read_back_from_the_session(artifact: Path, fake_ort: type[FakeSession],
                                                caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.drop_cuda = True  # CUDA asked for and "created", but the session runs on CPU
    with caplog.at_level(logging.WARNING, logger="service.engine.sessions"):
        engine = Engine(artifact, provider="cuda", max_batch=2)
    assert engine.provider == CPU and engine.fallback_reason is not None
    assert any("CUDA FALLBACK" in r.getMessage() for r in caplog.records)


def test_cuda_binds_only_the_outputs_asked_for(artifact: Path, fake_ort: type[FakeSession]) -> None:
    """Labels alone: one uint8 (N, H, W) buffer comes down, no logits; earlier bindings do not linger."""
    fake_ort.labels_type = "tensor(uint8)"
    engine = Engine(artifact, provider="cuda", max_batch=4)
    (s,) = fake_ort.created
    assert engine.provider == CUDA and engine.outputs == ("logits", "labels")
    tiles = random_tiles(4, seed=2)
    both = engine.run_outputs(tiles, ("logits", "labels"))
    assert s.binding.calls[1:] == [("bind_output", "logits", "cpu", np.float32, (4, CLASSES, *TILE)),
                                   ("bind_output", "labels", "cpu", np.uint8, (4, *TILE))]
    s.binding.calls.clear()
    only = engine.run_outputs(tiles, ["labels"])
    assert s.binding.calls == [("bind_cpu_input", "image", (4, 3, *TILE)),
                               ("bind_output", "labels", "cpu", np.uint8, (4, *TILE))]
    assert s.fetched == [("logits", "labels"), ("labels",)], "the logits bound before came down again"
    assert list(only) == ["labels"]
    assert only["labels"].dtype == np.uint8 and only["labels"].shape == (4, *TILE)
    expected = fake_outputs(tiles)
    np.testing.assert_array_equal(only["labels"], expected["labels"])
    np.testing.assert_array_equal(both["labels"], expected["labels"])
    np.testing.assert_array_equal(both["logits"], expected["logits"])
    assert not np.shares_memory(only["labels"], both["labels"])
    np.testing.assert_array_equal(engine.run(tiles), expected["logits"])
    assert s.fetched[-1] == ("logits",) and s.plain_runs == 0
    engine.warmup([1, 2])  # warm-up fetches every set of outputs a batch may ask for, per batch size
    assert s.fetched[-6:] == [("logits", "labels"), ("logits",), ("labels",)] * 2


def test_cpu_fetches_only_the_outputs_asked_for(artifact: Path, fake_ort: type[FakeSession]) -> None:
    fake_ort.labels_type = "tensor(uint8)"
    engine = Engine(artifact, provider="cpu", max_batch=2)
    (s,) = fake_ort.created
    out = engine.run_outputs(random_tiles(2), ["labels"])
    assert s.fetched == [("labels",)] and s.bound_runs == 0 and out["labels"].dtype == np.uint8


def test_labels_of_the_wrong_type_are_refused(artifact: Path, fake_ort: type[FakeSession]) -> None:
    fake_ort.labels_type = "tensor(int64)"  # an ArgMax without the Cast
    with pytest.raises(ArtifactError, match=r"'labels' is tensor\(int64\), expected uint8"):
        Engine(artifact, provider="cpu")


def test_several_cuda_sessions(artifact: Path, fake_ort: type[FakeSession],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session: the same providers and options, its own binding, its own runner; auto threads split."""
    monkeypatch.setattr(service.engine.options, "usable_cores", lambda: 8)
    fake_ort.labels_type = "tensor(uint8)"
    engine = Engine(artifact, provider="cuda", max_batch=2, sessions=3)
    sessions = fake_ort.created
    assert len(sessions) == 3 and engine.sessions == 3 and engine.provider == CUDA
    assert all(s.providers[0][0] == CUDA and s.providers[1:] == [CPU] for s in sessions)
    assert [s.sess_options.intra_op_num_threads for s in sessions] == [2, 2, 2]  # 8 cores // 3
    assert len({id(s.binding) for s in sessions}) == 3
    runners = engine.runners()
    assert runners == [SessionRunner(engine, i) for i in range(3)]
    out = runners[2](random_tiles(2), ("labels",))
    np.testing.assert_array_equal(out["labels"], fake_outputs(random_tiles(2))["labels"])
    assert [s.bound_runs for s in sessions] == [0, 0, 1]
    engine.warmup()  # every session, every batch size, every set of outputs (both, each alone)
    assert [s.bound_runs for s in sessions] == [6, 6, 7] and engine.warmup_seconds is not None


def test_sessions_run_concurrently_each_one_at_a_time(artifact: Path, fake_ort: type[FakeSession]) -> None:
    """Two sessions run two batches at once (both wait on one barrier); one session never runs two."""
    engine = Engine(artifact, provider="cuda", max_batch=2, sessions=2)
    fake_ort.barrier = threading.Barrier(2, timeout=10)  # a serialised engine would break it
    errors: list[BaseException] = []

    def call(session: int) -> None:
        try:
            engine.run(random_tiles(1), session=session)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    # the same session from four threads: one run at a time, although each takes a while
    fake_ort.barrier, fake_ort.hold = None, 0.05
    threads = [threading.Thread(target=call, args=(0,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and [s.most_active for s in fake_ort.created] == [1, 1]
    assert [s.bound_runs for s in fake_ort.created] == [5, 1]


def test_several_sessions_fall_back_together(artifact: Path, fake_ort: type[FakeSession],
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_ort.fail_cuda = "CUDA failure 100: no CUDA-capable device is detected"
    with caplog.at_level(logging.WARNING, logger="service.engine.sessions"):
        engine = Engine(artifact, provider="auto", max_batch=2, sessions=2)
    # CUDA is tried once; the second session goes straight to what the first one runs on
    assert [s.providers for s in fake_ort.created] == [[CPU], [CPU]] and engine.provider == CPU
    assert sum("CUDA FALLBACK" in r.getMessage() for r in caplog.records) == 1
    assert all(s.binding.calls == [] for s in fake_ort.created)


def test_a_session_on_another_provider_is_refused(artifact: Path, fake_ort: type[FakeSession]) -> None:
    fake_ort.drop_cuda_from = 1  # the first session gets CUDA, the second silently does not
    with pytest.raises(RuntimeError, match=r"session 1 of tiny\.onnx came up on CPUExecutionProvider"):
        Engine(artifact, provider="cuda", max_batch=2, sessions=2)
