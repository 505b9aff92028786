"""The batcher's admission policy as plain functions of plain numbers (service.engine.admission).

No batcher, no event loop, no clock: a :class:`QueueLoad` is the queue as admission sees it, and
``now``/``deadline`` are bare seconds. The memory budget's tests are in tests/service/pipeline/test_cost.py,
the Retry-After rule's in tests/service/engine/test_batcher.py; here they are checked only as every
refusal carries them.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from service.engine.admission import (
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    MemoryBudget,
    QueueLoad,
    Refusal,
    admit,
    retry_after_seconds,
    room_now,
    room_refusal,
)
from service.engine.held import SharedHeld
from service.errors import DeadlineExceeded, Overloaded, PayloadTooLarge

MB = 2**20


def load(queued: int = 0, *, tiles: int = 20, delay: float = math.inf, per_tile: float | None = None,
         runners: int = 1) -> QueueLoad:
    return QueueLoad(queued=queued, max_queue_tiles=tiles, max_queue_delay_s=delay,
                     seconds_per_tile=per_tile, runners=runners)


def refused(refusal: Refusal | None, reason: str, error: type[Exception]) -> Refusal:
    assert refusal is not None and refusal.reason == reason and type(refusal.error) is error
    return refusal


# -- eta and retry_after ---------------------------------------------------------------------------

def test_eta_is_the_queue_and_the_extra_tiles_over_the_runners() -> None:
    assert load(10, per_tile=None).eta(5) is None  # nothing measured yet
    assert load(10, per_tile=0.5).eta() == 5.0
    assert load(10, per_tile=0.5).eta(2) == 6.0
    assert load(10, per_tile=0.5, runners=2).eta(2) == 3.0  # two runners side by side
    assert load(0, per_tile=0.5).eta(0) == 0.0


def test_retry_after_is_the_rule_of_the_queue() -> None:
    assert load(19, per_tile=0.3).retry_after() == retry_after_seconds(19, 0.3) == 6
    assert load(21, per_tile=0.3, runners=2).retry_after() == 4
    assert load(0, per_tile=0.3).retry_after() == MIN_RETRY_AFTER
    assert load(10, per_tile=None).retry_after() == MIN_RETRY_AFTER
    assert load(1000, per_tile=0.5).retry_after() == MAX_RETRY_AFTER


def test_queue_load_is_frozen() -> None:
    with pytest.raises(AttributeError):
        load().queued = 3  # type: ignore[misc]


# -- room ------------------------------------------------------------------------------------------

def test_room_in_tiles_up_to_the_bound_inclusive() -> None:
    assert room_refusal(load(15, tiles=20), 5) is None  # exactly full is room
    assert room_refusal(load(15, tiles=20), 6) == "15 tiles queued, no room for 6 more"
    assert room_refusal(load(0, tiles=20), 20) is None
    assert room_refusal(load(0, tiles=20), 21) == "0 tiles queued, no room for 21 more"


def test_room_in_time_counts_the_work_queued_not_the_request() -> None:
    # 10 tiles at 0.5 s: 5 s of work ahead
    assert room_refusal(load(10, delay=5.0, per_tile=0.5), 10) is None  # exactly the bound is room
    assert room_refusal(load(10, delay=4.9, per_tile=0.5), 1) == (
        "about 5.0 s of work is queued; the queue holds at most 4.9 s")
    assert room_refusal(load(10, delay=2.5, per_tile=0.5, runners=2), 1) is None  # 2.5 s on two
    assert room_refusal(load(10, delay=2.4, per_tile=0.5, runners=2), 1) is not None


def test_no_bound_in_time_without_a_measurement_or_a_queue() -> None:
    assert room_refusal(load(10, delay=0.001, per_tile=None), 1) is None  # nothing measured
    assert room_refusal(load(0, delay=0.001, per_tile=100.0), 5) is None  # nothing queued
    assert room_refusal(load(10, per_tile=100.0), 1) is None  # no bound in time (inf)


def test_room_now_is_room_for_one_tile() -> None:
    assert room_now(load(19, tiles=20, per_tile=0.3)) is None
    full = refused(room_now(load(20, tiles=20, per_tile=0.3)), "overloaded", Overloaded)
    assert full.error.detail == "no room now: 20 tiles queued, no room for 1 more"
    assert full.error.retry_after == retry_after_seconds(20, 0.3) == 6
    slow = refused(room_now(load(10, delay=1.0, per_tile=0.3)), "overloaded", Overloaded)
    assert slow.error.detail == "no room now: about 3.0 s of work is queued; the queue holds at most 1 s"


# -- admit -----------------------------------------------------------------------------------------

def test_admits_what_fits_in_room_and_time() -> None:
    assert admit(load(), 20, now=0.0, deadline=1.0) is None
    assert admit(load(10, per_tile=0.5), 10, now=0.0, deadline=10.0) is None  # 10 s: just in time


def test_too_large_for_the_queue_ever_is_413() -> None:
    r = refused(admit(load(tiles=8), 9, now=0.0, deadline=1.0), "too_large", PayloadTooLarge)
    assert r.error.status == 413 and r.error.retry_after is None
    assert r.error.detail == ("the request needs 9 tiles; the queue holds at most 8: "
                              "use a smaller image, fewer scales or no flip")
    assert admit(load(tiles=8), 8, now=0.0, deadline=1.0) is None
    # before the deadline and the room: a request too large is too large whatever else
    refused(admit(load(8, tiles=8), 9, now=5.0, deadline=1.0), "too_large", PayloadTooLarge)


def test_deadline_already_passed_is_504() -> None:
    for now in (1.0, 2.0):  # at the deadline counts as passed
        r = refused(admit(load(), 1, now=now, deadline=1.0), "deadline", DeadlineExceeded)
        assert r.error.status == 504
        assert r.error.detail == "the deadline passed before the tiles were queued"
    # before the room: a full queue and a passed deadline is the deadline
    refused(admit(load(20), 1, now=1.0, deadline=1.0), "deadline", DeadlineExceeded)


def test_no_room_is_503_with_the_queues_retry_after() -> None:
    r = refused(admit(load(19, per_tile=0.3), 2, now=0.0, deadline=100.0), "overloaded", Overloaded)
    assert r.error.status == 503 and r.error.detail == "19 tiles queued, no room for 2 more"
    assert r.error.retry_after == 6  # the 19 queued tiles at 0.3 s, not the 2 asked
    slow = load(10, delay=1.0, per_tile=0.3)
    r = refused(admit(slow, 1, now=0.0, deadline=100.0), "overloaded", Overloaded)
    assert r.error.detail == "about 3.0 s of work is queued; the queue holds at most 1 s"


def test_work_ahead_past_the_deadline_is_503() -> None:
    # 10 queued + 2 asked at 0.5 s: 6 s; 5 s left
    r = refused(admit(load(10, per_tile=0.5), 2, now=100.0, deadline=105.0), "overloaded", Overloaded)
    assert r.error.detail == ("about 6.0 s of work is queued, more than the 5.0 s left to "
                              "this request's deadline")
    assert r.error.retry_after == retry_after_seconds(10, 0.5) == 5
    assert admit(load(10, per_tile=0.5), 2, now=100.0, deadline=106.0) is None  # exactly in time
    assert admit(load(10, per_tile=0.5, runners=2), 2, now=100.0, deadline=105.0) is None  # 3 s on two


def test_without_work_ahead_or_a_measurement_a_request_tries_its_luck() -> None:
    assert admit(load(0, per_tile=10.0), 5, now=0.0, deadline=1.0) is None  # 50 s of its own work
    assert admit(load(10, per_tile=None), 5, now=0.0, deadline=0.001) is None


def test_every_503_under_one_queue_says_the_same_retry_after() -> None:
    """No room in tiles, no room in time, no time before the deadline, the early check: one queue, one
    Retry-After, whatever the request asked."""
    roomy, slow = load(19, per_tile=0.3), load(19, delay=1.0, per_tile=0.3)
    refusals = [admit(roomy, 2, now=0.0, deadline=100.0), admit(roomy, 1, now=0.0, deadline=0.5),
                admit(slow, 1, now=0.0, deadline=100.0), room_now(slow)]
    said = [refused(r, "overloaded", Overloaded).error.retry_after for r in refusals]
    assert said == [6] * 4 == [retry_after_seconds(19, 0.3)] * 4


# ---------------------------------------------------------------- one budget over several processes


def _hold_in_another_process(path: str, slot: int, need: int, held: Any, release: Any) -> None:
    budget = MemoryBudget(100 * MB, shared=SharedHeld(Path(path), slot))
    with budget.reserve(need):
        held.set()
        release.wait(30)


def test_the_memory_budget_is_the_whole_servers(tmp_path: Path) -> None:
    """Two processes, one slots file: what one holds, the other cannot take (service/engine/held.py)."""
    SharedHeld.create(tmp_path / "memory.bin", 2)
    mine = MemoryBudget(100 * MB, shared=SharedHeld(tmp_path / "memory.bin", 0))
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_in_another_process, args=(str(tmp_path / "memory.bin"), 1, 60 * MB,
                                                               held, release))
    other.start()
    try:
        assert held.wait(30)
        with pytest.raises(Overloaded, match="60 MB of 100 MB"), mine.reserve(50 * MB):
            pass
        with mine.reserve(40 * MB):  # what is left fits
            assert SharedHeld(tmp_path / "memory.bin").total() == 100 * MB
    finally:
        release.set()
        other.join(30)
    assert other.exitcode == 0
    assert SharedHeld(tmp_path / "memory.bin").total() == 0  # both released
    with mine.reserve(100 * MB):
        pass


def test_a_dead_workers_slot_is_cleared(tmp_path: Path) -> None:
    held = SharedHeld.create(tmp_path / "memory.bin", 3)
    budget = MemoryBudget(10 * MB, shared=SharedHeld(tmp_path / "memory.bin", 2))
    with budget.reserve(8 * MB):
        assert held.total() == 8 * MB
        held.clear(2)  # the supervisor's, after that worker died holding it
        assert held.total() == 0
        with pytest.raises(ValueError, match="slot 3 of 3"):
            SharedHeld(tmp_path / "memory.bin", 3)
