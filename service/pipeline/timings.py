"""Seconds per stage of one request, and when each began and ended (Server-Timing, metrics, traces).

Tested by tests/service/pipeline/test_chain.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Seconds spent per stage for one request (reported in Server-Timing and metrics).

    ``intervals`` keeps when each timed stage began and ended (``time.perf_counter``), in order:
    the request's trace draws its stage spans from them after the fact (service/telemetry/tracing.py).
    A stage timed again right after itself (a streamed request's planning, then cutting its first
    scale; adding its last chunk, then folding the scale) extends its interval rather than adding one.
    """

    stages: dict[str, float] = field(default_factory=dict)
    intervals: list[tuple[str, float, float]] = field(default_factory=list)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            if self.intervals and self.intervals[-1][0] == name:
                self.intervals[-1] = (name, self.intervals[-1][1], t1)
            else:
                self.intervals.append((name, t0, t1))
            self.add(name, t1 - t0)

    def header(self) -> str:
        return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in self.stages.items())
