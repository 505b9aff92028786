"""Cumulative statistics of one served model (rendered in Triton's shape by /v2/models/{name}/stats).

Tested by tests/service/api/v2/test_routes.py (the stats route) and
tests/service/repository/test_reload.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Cumulative statistics of one model, updated from request handlers and the batcher's thread."""

    inference_count: int = 0  # images answered successfully
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, *, ok: bool, images: int, seconds: float, stages: dict[str, float]) -> None:
        """One request: its outcome, wall time, and the chain's stage times (decode/plan -> input,
        batch -> queue + infer as the batcher saw it, stitch/encode -> output)."""
        with self._lock:
            (self.success if ok else self.fail).count += 1
            (self.success if ok else self.fail).ns += int(seconds * 1e9)
            if ok:
                self.inference_count += images
                self.last_inference_ms = int(time.time() * 1000)
                for name, bucket in (("decode", self.compute_input), ("plan", self.compute_input),
                                     ("batch", self.queue), ("stitch", self.compute_output),
                                     ("encode", self.compute_output)):
                    if name in stages:
                        bucket.ns += int(stages[name] * 1e9)
                for bucket in (self.compute_input, self.queue, self.compute_output):
                    bucket.count += 1

    def batch(self, size: int, seconds: float) -> None:
        """One batch of ``size`` tiles run by the engine in ``seconds``."""
        with self._lock:
            self.execution_count += 1
            self.compute_infer.count += 1
            self.compute_infer.ns += int(seconds * 1e9)
            d = self.batches.setdefault(size, _Duration())
            d.count += 1
            d.ns += int(seconds * 1e9)

    def json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` (Triton's statistics extension) for model ``name`` at ``version``."""
        with self._lock:
            return {
                "name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.json(), "fail": self.fail.json(), "queue": self.queue.json(),
                    "compute_input": self.compute_input.json(), "compute_infer": self.compute_infer.json(),
                    "compute_output": self.compute_output.json(),
                    "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
                "batch_stats": [{"batch_size": size, "compute_infer": d.json()}
                                for size, d in sorted(self.batches.items())],
            }
