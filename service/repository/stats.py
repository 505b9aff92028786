"""Cumulative statistics of one served model (rendered in Triton's shape by /v2/models/{name}/stats).

The figures are one row of int64 counters. In a single-process server the row is this process's
memory; in a ``--workers N`` server each worker keeps its row in a file of its own, in a folder
per model version (``shared``), and a read sums the rows of every worker that served that version,
those that died included: each request is counted once, by the worker that answered it.

Tested by tests/service/api/v2/test_routes.py (the stats route), tests/service/repository/test_reload.py
and tests/service/repository/test_workers.py (rows of several workers summed).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# the row: three counters, six durations (count, ns), then (count, ns) per batch size 1..MAX_BATCH
INFERENCES, EXECUTIONS, LAST_MS = 0, 1, 2
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_AT = {name: 3 + 2 * i for i, name in enumerate(DURATIONS)}
_BATCHES = 3 + 2 * len(DURATIONS)
MAX_BATCH = 256  # Settings.max_batch's bound
ROW = _BATCHES + 2 * MAX_BATCH
#: the chain's stages, and the duration each adds to
_STAGE_TO = (("decode", "compute_input"), ("plan", "compute_input"), ("batch", "queue"),
             ("stitch", "compute_output"), ("encode", "compute_output"))


def _row_in(folder: Path) -> npt.NDArray[np.int64]:
    """This process's row, a new zeroed file ``<pid>-<ns>.bin`` in ``folder``, mapped (the time
    keeps a later process given a dead worker's pid from taking over its row)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{time.time_ns()}.bin"
    with path.open("xb") as f:
        f.write(bytes(8 * ROW))
    return np.memmap(path, dtype=np.int64, mode="r+", shape=(ROW,))


def rows_of(folder: Path, pattern: str = "*.bin") -> list[npt.NDArray[np.int64]]:
    """The rows in ``folder`` (every worker's, or those ``pattern`` names), as read now."""
    return [np.fromfile(p, dtype=np.int64) for p in sorted(folder.glob(pattern))
            if p.stat().st_size == 8 * ROW]


def answered(row: npt.NDArray[np.int64]) -> int:
    """Requests a row counts, answered or failed."""
    return int(row[_AT["success"]] + row[_AT["fail"]])


class ModelStats:
    """Cumulative statistics of one model, updated from request handlers and the batcher's thread;
    ``shared``: the folder of this model version's rows (one per worker), None in one process."""

    def __init__(self, shared: Path | None = None) -> None:
        self.shared = shared
        self._row = np.zeros(ROW, dtype=np.int64) if shared is None else _row_in(shared)
        self._lock = threading.Lock()

    def _add(self, name: str, ns: int) -> None:
        self._row[_AT[name]] += 1
        self._row[_AT[name] + 1] += ns

    def request(self, *, ok: bool, images: int, seconds: float, stages: dict[str, float]) -> None:
        """One request: its outcome, wall time, and the chain's stage times (decode/plan -> input,
        batch -> queue + infer as the batcher saw it, stitch/encode -> output)."""
        with self._lock:
            self._add("success" if ok else "fail", int(seconds * 1e9))
            if ok:
                r = self._row
                r[INFERENCES] += images
                r[LAST_MS] = int(time.time() * 1000)
                for stage, bucket in _STAGE_TO:
                    if stage in stages:
                        r[_AT[bucket] + 1] += int(stages[stage] * 1e9)
                for bucket in ("compute_input", "queue", "compute_output"):
                    r[_AT[bucket]] += 1

    def batch(self, size: int, seconds: float) -> None:
        """One batch of ``size`` tiles run by the engine in ``seconds``."""
        ns = int(seconds * 1e9)
        with self._lock:
            r = self._row
            r[EXECUTIONS] += 1
            self._add("compute_infer", ns)
            at = _BATCHES + 2 * (min(size, MAX_BATCH) - 1)
            r[at] += 1
            r[at + 1] += ns

    def total(self) -> npt.NDArray[np.int64]:
        """The row of every worker added up (the last inference: the latest of them)."""
        if self.shared is None:
            with self._lock:
                return self._row.copy()
        rows = rows_of(self.shared)
        total: npt.NDArray[np.int64] = np.stack(rows).sum(axis=0, dtype=np.int64)
        total[LAST_MS] = max(int(r[LAST_MS]) for r in rows)
        return total

    @property
    def inference_count(self) -> int:
        return int(self.total()[INFERENCES])

    def json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` (Triton's statistics extension) for model ``name`` at ``version``."""
        t = self.total()

        def duration(at: int) -> dict[str, int]:
            return {"count": int(t[at]), "ns": int(t[at + 1])}

        return {
            "name": name, "version": version, "last_inference": int(t[LAST_MS]),
            "inference_count": int(t[INFERENCES]), "execution_count": int(t[EXECUTIONS]),
            "inference_stats": {**{d: duration(_AT[d]) for d in DURATIONS},
                                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
            "batch_stats": [{"batch_size": size, "compute_infer": duration(_BATCHES + 2 * (size - 1))}
                            for size in range(1, MAX_BATCH + 1) if t[_BATCHES + 2 * (size - 1)]],
        }
