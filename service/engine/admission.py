"""Admission policy: whether work may queue now, and the one Retry-After rule of every overload 503.

Plain functions and one budget, tested with numbers (tests/service/engine/test_admission.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from service.errors import Overloaded, PayloadTooLarge

#: Retry-After bounds, seconds: never "0" (clients would hammer), never absurdly far.
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 1, 60


def retry_after_seconds(queued_tiles: int, seconds_per_tile: float | None, runners: int = 1) -> int:
    """The Retry-After of every overload 503: the queued work over the recent throughput, rounded up.

    The throughput is ``runners / seconds_per_tile`` tiles a second (the runners work side by side,
    each at the measured time per tile), so the wait is ``queued_tiles * seconds_per_tile /
    runners`` seconds, rounded up to whole seconds and kept within
    [:data:`MIN_RETRY_AFTER`, :data:`MAX_RETRY_AFTER`]. Nothing measured yet, or nothing queued:
    the floor. It depends on the queue alone, never on the refused request (its size, the check
    that refused it), so every 503 under one queue says the same.
    """
    if seconds_per_tile is None or queued_tiles <= 0:
        return MIN_RETRY_AFTER
    if runners < 1 or not seconds_per_tile >= 0:
        raise ValueError(f"need runners >= 1 and seconds_per_tile >= 0, got {runners} and {seconds_per_tile}")
    seconds = queued_tiles * seconds_per_tile / runners
    if seconds >= MAX_RETRY_AFTER:
        return MAX_RETRY_AFTER
    # rounded to the microsecond first, so that 30 tiles at 0.1 s are 3 s, not ceil(3.0000000000000004)
    return max(MIN_RETRY_AFTER, math.ceil(round(seconds, 6)))


@dataclass
class MemoryBudget:
    """Bytes reserved by the requests in flight, against a limit (single-threaded: the event loop)."""

    limit: int
    on_reject: Callable[[], None] | None = None  # e.g. count the refusal under reason "memory"
    in_flight: int = 0
    requests: int = 0

    def check(self, need: int, *, retry_after: int = 1) -> None:
        """413 if ``need`` alone can never fit; 503 if it does not fit beside what is in flight now.

        ``retry_after``: the 503's Retry-After, which the caller takes from the model's queue
        (:func:`service.engine.admission.retry_after_seconds`, the one rule of every overload 503).
        """
        if (need > self.limit or self.in_flight + need > self.limit) and self.on_reject is not None:
            self.on_reject()
        if need > self.limit:
            raise PayloadTooLarge(
                f"this request needs about {_mb(need)} MB of memory; the server allows {_mb(self.limit)} MB "
                f"(PSPNET_MAX_MEMORY_MB): send a smaller image or use fewer scales")
        if self.in_flight + need > self.limit:
            raise Overloaded(f"{_mb(self.in_flight)} MB of {_mb(self.limit)} MB are held by requests in "
                             f"flight; this one needs {_mb(need)} MB", retry_after=retry_after)

    @contextlib.contextmanager
    def reserve(self, need: int, *, retry_after: int = 1) -> Iterator[None]:
        """Hold ``need`` bytes for the block; refused as :meth:`check` says."""
        self.check(need, retry_after=retry_after)
        self.in_flight += need
        self.requests += 1
        try:
            yield
        finally:
            self.in_flight -= need
            self.requests -= 1


def _mb(n: int) -> int:
    return -(-n // 2**20)
