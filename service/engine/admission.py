"""Admission policy: whether a request's work may queue now, and the one Retry-After rule of every 503.

Plain functions of plain numbers, tested as such (tests/service/engine/test_admission.py): the
batcher's queue (:class:`QueueLoad`, :func:`admit`, :func:`room_now`) and the memory held by the
requests in flight (:class:`MemoryBudget`). The batcher only records and raises what they decide.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from service.engine.held import SharedHeld
from service.errors import DeadlineExceeded, Overloaded, PayloadTooLarge, ServiceError

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


@dataclass(frozen=True)
class QueueLoad:
    """The batcher's queue as admission sees it: what is queued, its bounds, and the measured speed."""

    queued: int  # tiles queued and not yet taken into a batch
    max_queue_tiles: int
    max_queue_delay_s: float
    seconds_per_tile: float | None  # one runner's recent seconds per tile; None before the first batch
    runners: int = 1

    def eta(self, extra_tiles: int = 0) -> float | None:
        """Seconds to run the queue plus ``extra_tiles`` at the measured speed; None before any batch.

        The runners work on the queue side by side, each at the measured time per tile (measured
        while they run together, so it already includes what they cost each other).
        """
        if self.seconds_per_tile is None:
            return None
        return (self.queued + extra_tiles) * self.seconds_per_tile / self.runners

    def retry_after(self) -> int:
        """The Retry-After of a 503 under this queue: :func:`retry_after_seconds`, 1..60."""
        return retry_after_seconds(self.queued, self.seconds_per_tile, self.runners)


@dataclass(frozen=True)
class Refusal:
    """A request refused before it queues: the reason stats and metrics count, and the error to raise."""

    reason: str  # "too_large", "deadline" or "overloaded"
    error: ServiceError  # PayloadTooLarge (413), DeadlineExceeded (504) or Overloaded (503)


def room_refusal(load: QueueLoad, n: int) -> str | None:
    """Why ``n`` more tiles do not fit the queue's bounds now, in tiles or in time; None if they do.

    The bound in time: the tile bound alone means seconds on a GPU and most of a minute on a
    small CPU; ``max_queue_delay_s`` keeps the wait of an accepted request (and the backlog
    left when a burst ends) the same on both.
    """
    if load.queued + n > load.max_queue_tiles:
        return f"{load.queued} tiles queued, no room for {n} more"
    ahead = load.eta(0)
    if load.queued and ahead is not None and ahead > load.max_queue_delay_s:
        return (f"about {ahead:.1f} s of work is queued; the queue holds at most "
                f"{load.max_queue_delay_s:g} s")
    return None


def admit(load: QueueLoad, n: int, *, now: float, deadline: float) -> Refusal | None:
    """Whether a request of ``n`` tiles due at ``deadline`` may queue at ``now``: None, or why not.

    All or nothing, in this order: more tiles than the queue can ever hold -> 413; the deadline
    already passed -> 504; no room now in tiles or in time (:func:`room_refusal`) -> 503; room,
    but the work ahead would outlast the deadline by the measured speed -> 503 (to retry now
    rather than a 504 later; without work ahead a request may try its luck). Every 503 carries
    the queue's Retry-After, whatever refused it.
    """
    if n > load.max_queue_tiles:
        return Refusal("too_large", PayloadTooLarge(
            f"the request needs {n} tiles; the queue holds at most {load.max_queue_tiles}: "
            f"use a smaller image, fewer scales or no flip"))
    if now >= deadline:
        return Refusal("deadline", DeadlineExceeded("the deadline passed before the tiles were queued"))
    room = room_refusal(load, n)
    if room is not None:
        return Refusal("overloaded", Overloaded(room, retry_after=load.retry_after()))
    eta = load.eta(n)
    if load.queued and eta is not None and now + eta > deadline:
        return Refusal("overloaded", Overloaded(
            f"about {eta:.1f} s of work is queued, more than the {deadline - now:.1f} s left to "
            f"this request's deadline", retry_after=load.retry_after()))
    return None


def room_now(load: QueueLoad) -> Refusal | None:
    """Whether :func:`admit` would refuse even a one-tile request now for want of room (a 503)."""
    room = room_refusal(load, 1)
    if room is None:
        return None
    return Refusal("overloaded", Overloaded(f"no room now: {room}", retry_after=load.retry_after()))


@dataclass
class MemoryBudget:
    """Bytes reserved by the requests in flight, against a limit (single-threaded: the event loop).

    ``shared``: the slots of every worker of a ``--workers N`` server (service/engine/held.py): the
    limit is then the whole server's, checked and reserved under the slots file's lock.
    """

    limit: int
    on_reject: Callable[[], None] | None = None  # e.g. count the refusal under reason "memory"
    in_flight: int = 0  # this process's reservations
    requests: int = 0
    shared: SharedHeld | None = None

    def check(self, need: int, *, retry_after: int = 1) -> None:
        """413 if ``need`` alone can never fit; 503 if it does not fit beside what is in flight now.

        ``retry_after``: the 503's Retry-After, which the caller takes from the model's queue
        (:func:`service.engine.admission.retry_after_seconds`, the one rule of every overload 503).
        """
        held = self.in_flight if self.shared is None else self.shared.total()
        self._check(need, held, retry_after)

    def _check(self, need: int, held: int, retry_after: int) -> None:
        if (need > self.limit or held + need > self.limit) and self.on_reject is not None:
            self.on_reject()
        if need > self.limit:
            raise PayloadTooLarge(
                f"this request needs about {_mb(need)} MB of memory; the server allows {_mb(self.limit)} MB "
                f"(PSPNET_MAX_MEMORY_MB): send a smaller image or use fewer scales")
        if held + need > self.limit:
            raise Overloaded(f"{_mb(held)} MB of {_mb(self.limit)} MB are held by requests in "
                             f"flight; this one needs {_mb(need)} MB", retry_after=retry_after)

    @contextlib.contextmanager
    def reserve(self, need: int, *, retry_after: int = 1) -> Iterator[None]:
        """Hold ``need`` bytes for the block; refused as :meth:`check` says."""
        shared = self.shared
        if shared is None:
            self._check(need, self.in_flight, retry_after)
        else:
            taken, held = shared.take(need, self.limit)
            if not taken:
                self._check(need, held, retry_after)  # refuses: 413 or 503
        self.in_flight += need
        self.requests += 1
        try:
            yield
        finally:
            self.in_flight -= need
            self.requests -= 1
            if shared is not None:
                shared.give(need)


def _mb(n: int) -> int:
    return -(-n // 2**20)
