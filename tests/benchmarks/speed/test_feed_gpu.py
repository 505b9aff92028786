"""The pieces of the issue #26 benchmarks that run without a server: the fake GPU engine, the
stages of a py-spy stack, and the targets as fractions of the engine's ceilings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.speed import feed_gpu
from benchmarks.speed.served_sweep import targets
from service.engine.sessions import Engine
from tests.service.tiny_model import build_tiny_artifact


def test_the_fake_engine_sleeps_and_answers_zeros(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(build_tiny_artifact(tmp_path / "tiny.onnx"), provider="cpu", max_batch=4)
    real = engine.run_outputs(np.zeros((2, 3, *engine.tile), np.float32), ("logits",))["logits"]
    monkeypatch.setenv("PSPNET_FAKE_GPU", "1")
    monkeypatch.setattr(Engine, "run_outputs", Engine.run_outputs)  # undone after the test
    feed_gpu.install_fake()
    slept: list[float] = []
    monkeypatch.setattr(feed_gpu.time, "sleep", slept.append)
    out = engine.run_outputs(np.zeros((2, 3, *engine.tile), np.float32), ("logits",))
    assert out["logits"].shape == real.shape and out["logits"].dtype == real.dtype
    assert not out["logits"].any()
    assert slept == [feed_gpu.GPU_MS["logits"][1] / 1000]


def test_a_stack_goes_to_its_innermost_stage() -> None:
    stack = ("_worker (concurrent/futures/thread.py:83);decode (service/codec/decode.py:10);"
             "open (PIL/Image.py:1)")
    assert feed_gpu._stage_of(stack) == "decode"
    assert feed_gpu._stage_of("run (asyncio/events.py:80)") == "asyncio"
    assert feed_gpu._stage_of("main (somewhere.py:1)") == "other"


def test_targets_are_fractions_of_the_ceilings() -> None:
    raw = {"batches": [
        {"config": "engine_labels", "batch": 8, "tiles_per_s": 1000.0, "median_ms": 8.0},
        {"config": "engine_logits", "batch": 8, "tiles_per_s": 400.0, "median_ms": 20.0},
        {"config": "ort_run_logits", "batch": 8, "tiles_per_s": 800.0, "median_ms": 10.0}]}
    report = {"runs": [{"workers": 4, "mode": "whole", "concurrency": 64, "tiles_per_s": 300.0},
                       {"workers": 4, "mode": "multiscale+flip", "concurrency": 8, "tiles_per_s": 200.0}]}
    t = targets(report, raw)
    assert t["engine_logits_over_ort_run_at_batch_8"] == 2.0
    assert t["4 workers, whole, c=64"] == 0.3 and t["4 workers, multiscale+flip, c=8"] == 0.5
