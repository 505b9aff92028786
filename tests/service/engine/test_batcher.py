"""Batching policy with a plain fake runner (no ONNX).

Every tile of a test request is filled with one value, ``rid * 100 + index``,
so the runner's log says exactly which tiles ran in which batch, and the fake
output (``[v, -v]`` per pixel) says which rows came back to which request.
Timing assertions only bound what the policy guarantees (a lone tile never
leaves before ``max_wait``), with upper bounds seconds above the expectation so
that a loaded 2-core machine does not make them flaky.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from service.engine.admission import MAX_RETRY_AFTER, MIN_RETRY_AFTER, retry_after_seconds
from service.engine.batcher import TileBatcher
from service.errors import DeadlineExceeded, NotReady, Overloaded, PayloadTooLarge

SHAPE = (3, 4, 4)
LONG = 30.0  # a deadline that never matters


def tiles(rid: int, n: int) -> np.ndarray:
    values = rid * 100 + np.arange(n, dtype=np.float32)
    return np.broadcast_to(values[:, None, None, None], (n, *SHAPE)).astype(np.float32)


def expected(rid: int, n: int) -> np.ndarray:
    v = tiles(rid, n)[:, 0]
    return np.stack([v, -v], axis=1)


class FakeRunner:
    """Records every batch; optionally blocks on a gate or fails on chosen tiles."""

    def __init__(self, *, gate: threading.Event | None = None, delay: float = 0.0,
                 fail_on: Callable[[set[float]], bool] | None = None) -> None:
        self.gate, self.delay, self.fail_on = gate, delay, fail_on
        self.batches: list[list[float]] = []
        self.called_at: list[float] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.called_at.append(time.perf_counter())
        self.threads.add(threading.get_ident())
        values = [float(v) for v in batch[:, 0, 0, 0]]
        self.batches.append(values)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on(set(values)):
            raise RuntimeError("boom")
        v = batch[:, 0]
        return np.stack([v, -v], axis=1)

    @property
    def seen(self) -> set[float]:
        return {v for b in self.batches for v in b}

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


class RecordingObserver:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.drops: list[tuple[str, int]] = []
        self.rejects: list[str] = []
        self.depths: list[int] = []
        self.failures: list[tuple[int, str]] = []

    def on_batch(self, size: int, seconds: float) -> None:
        assert seconds >= 0
        self.batches.append(size)

    def on_batch_failed(self, size: int, error: BaseException) -> None:
        self.failures.append((size, type(error).__name__))

    def on_drop(self, reason: str, tiles: int) -> None:
        self.drops.append((reason, tiles))

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)

    def on_queue(self, depth: int) -> None:
        self.depths.append(depth)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


async def started(runner: FakeRunner, **kw: Any) -> TileBatcher:
    opts: dict[str, Any] = {"max_batch": 4, "max_wait_ms": 50, "max_queue_tiles": 64, "tile_shape": SHAPE}
    b = TileBatcher(runner, **{**opts, **kw})
    await b.start()
    return b


def deadline(seconds: float = LONG) -> float:
    return asyncio.get_running_loop().time() + seconds


async def until_entered(runner: FakeRunner) -> None:
    assert await asyncio.to_thread(runner.entered.wait, 20), "runner never called"


def test_fills_batches_up_to_max_batch_and_keeps_order() -> None:
    async def body() -> None:
        runner = FakeRunner()
        # max_wait is huge: full batches must leave without waiting for it
        b = await started(runner, max_batch=4, max_wait_ms=3000)
        t0 = time.perf_counter()
        out = await b.submit(tiles(1, 8), deadline=deadline())
        assert time.perf_counter() - t0 < 2.5, "a full batch waited for max_wait"
        np.testing.assert_array_equal(out, expected(1, 8))
        assert runner.sizes == [4, 4]
        await b.stop()
        runner = FakeRunner()
        b = await started(runner, max_batch=4, max_wait_ms=20)
        out = await b.submit(tiles(2, 10), deadline=deadline())  # 4 + 4 + a partial 2
        np.testing.assert_array_equal(out, expected(2, 10))
        assert runner.sizes == [4, 4, 2]
        assert b.stats.batch_sizes == {4: 2, 2: 1} and b.stats.tiles_run == 10
        # off the event loop, always on the same single thread
        assert len(runner.threads) == 1 and threading.get_ident() not in runner.threads
        await b.stop()
    run(body)


def test_lone_tile_leaves_after_max_wait_not_before() -> None:
    async def body() -> None:
        runner = FakeRunner()
        b = await started(runner, max_wait_ms=300)
        t0 = time.perf_counter()
        out = await b.submit(tiles(1, 1), deadline=deadline())
        waited = runner.called_at[0] - t0
        assert waited >= 0.3 - 0.005, f"sent after {waited:.3f} s, before max_wait"
        assert waited < 2.0, f"sent after {waited:.3f} s, far beyond max_wait"
        np.testing.assert_array_equal(out, expected(1, 1))
        await b.stop()
    run(body)


def test_zero_max_wait_sends_at_once() -> None:
    async def body() -> None:
        runner = FakeRunner()
        b = await started(runner, max_wait_ms=0)
        out = await b.submit(tiles(1, 1), deadline=deadline())
        np.testing.assert_array_equal(out, expected(1, 1))
        await b.stop()
    run(body)


def test_concurrent_requests_share_batches_and_split_across_them() -> None:
    async def body() -> None:
        runner = FakeRunner()
        obs = RecordingObserver()
        b = await started(runner, max_batch=8, max_wait_ms=500, observer=obs)
        outs = await asyncio.gather(*(b.submit(tiles(r, 2), deadline=deadline()) for r in (1, 2, 3)))
        assert runner.sizes == [6], "three small requests should have shared one batch"
        for r, out in zip((1, 2, 3), outs, strict=True):
            np.testing.assert_array_equal(out, expected(r, 2))
        # 3 + 3 tiles with max_batch 4: request 2 is split over two batches, rows still in order
        runner2 = FakeRunner()
        b2 = await started(runner2, max_batch=4, max_wait_ms=500)
        outs = await asyncio.gather(*(b2.submit(tiles(r, 3), deadline=deadline()) for r in (1, 2)))
        assert runner2.batches == [[100, 101, 102, 200], [201, 202]]
        np.testing.assert_array_equal(outs[0], expected(1, 3))
        np.testing.assert_array_equal(outs[1], expected(2, 3))
        assert obs.batches == [6] and obs.depths[-1] == 0
        await b.stop()
        await b2.stop()
    run(body)


def test_sheds_at_once_when_the_queue_is_full() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        obs = RecordingObserver()
        b = await started(runner, max_batch=4, max_wait_ms=0, max_queue_tiles=6, observer=obs)
        a = asyncio.ensure_future(b.submit(tiles(1, 4), deadline=deadline()))
        await until_entered(runner)  # request 1 is running, the queue is empty again
        q = asyncio.ensure_future(b.submit(tiles(2, 5), deadline=deadline()))
        await asyncio.sleep(0)
        assert b.queue_depth == 5
        t0 = time.perf_counter()
        with pytest.raises(Overloaded) as e:
            await b.submit(tiles(3, 2), deadline=deadline())
        assert time.perf_counter() - t0 < 1.0, "shedding must not wait"
        assert e.value.retry_after >= 1
        assert obs.rejects == ["overloaded"] and b.queue_depth == 5
        gate.set()
        np.testing.assert_array_equal(await a, expected(1, 4))
        np.testing.assert_array_equal(await q, expected(2, 5))
        assert 300 not in runner.seen
        await b.stop()
    run(body)


def test_a_streamed_request_is_weighed_whole_once_and_its_chunks_never_refused() -> None:
    """The first chunk asks admission for the request's every tile (too many ever: 413, as if sent
    whole); later chunks (admit_tiles=0) queue even when the queue is full, but not once stopping."""
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        b = await started(runner, max_batch=4, max_wait_ms=0, max_queue_tiles=6)
        with pytest.raises(PayloadTooLarge):
            await b.submit(tiles(1, 2), deadline=deadline(), admit_tiles=7)
        a = asyncio.ensure_future(b.submit(tiles(2, 4), deadline=deadline(), admit_tiles=6))
        await until_entered(runner)
        q = asyncio.ensure_future(b.submit(tiles(3, 5), deadline=deadline()))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):  # 5 queued: no room for a new request of 2
            await b.submit(tiles(4, 2), deadline=deadline())
        follow = asyncio.ensure_future(b.submit(tiles(2, 2), deadline=deadline(), admit_tiles=0))
        await asyncio.sleep(0)
        assert b.queue_depth == 7  # beyond max_queue_tiles: the admitted request's next chunk
        gate.set()
        for fut, (rid, n) in ((a, (2, 4)), (q, (3, 5)), (follow, (2, 2))):
            np.testing.assert_array_equal(await fut, expected(rid, n))
        assert b.stats.rejected == {"too_large": 1, "overloaded": 1}
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0)
        with pytest.raises(NotReady):
            await b.submit(tiles(2, 2), deadline=deadline(), admit_tiles=0)
        await stopping
    run(body)


def test_retry_after_follows_queue_depth_and_measured_speed() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(delay=0.3)
        b = await started(runner, max_batch=1, max_wait_ms=0, max_queue_tiles=20)
        assert b.retry_after() == 1  # nothing measured yet: the floor
        await b.submit(tiles(1, 1), deadline=deadline())  # learns >= 0.3 s per tile
        runner.gate = gate
        runner.entered.clear()
        running = asyncio.ensure_future(b.submit(tiles(2, 1), deadline=deadline()))
        await until_entered(runner)
        waiting = asyncio.ensure_future(b.submit(tiles(3, 19), deadline=deadline()))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as e:
            await b.submit(tiles(4, 2), deadline=deadline())
        # the 19 queued tiles (not the 2 asked), at >= 0.3 s a tile: at least ceil(19 * 0.3) = 6 s
        assert e.value.retry_after == retry_after_seconds(19, b.seconds_per_tile) >= 6
        runner.delay = 0
        gate.set()
        await asyncio.gather(running, waiting)
        await b.stop()
    run(body)


@pytest.mark.parametrize(("queued", "per_tile", "runners", "want"), [
    (0, 0.5, 1, MIN_RETRY_AFTER),  # nothing queued: the floor
    (10, None, 1, MIN_RETRY_AFTER),  # nothing measured yet: the floor
    (1, 0.01, 1, MIN_RETRY_AFTER),  # 0.01 s rounds up to the floor, never 0
    (19, 0.3, 1, 6),  # 5.7 s up to 6
    (20, 0.25, 1, 5),  # exactly 5 s stays 5
    (30, 0.1, 1, 3),  # 3.0000000000000004 in floats: still 3
    (20, 0.3, 2, 3),  # two runners side by side: twice the throughput
    (21, 0.3, 2, 4),  # 3.15 s up to 4
    (1000, 0.5, 1, MAX_RETRY_AFTER),  # 500 s: the cap
    (10, float("inf"), 1, MAX_RETRY_AFTER),
])
def test_retry_after_is_queued_work_over_recent_throughput_rounded_up(
        queued: int, per_tile: float | None, runners: int, want: int) -> None:
    assert retry_after_seconds(queued, per_tile, runners) == want


def test_retry_after_refuses_nonsense() -> None:
    for per_tile, runners in [(float("nan"), 1), (-0.1, 1), (0.1, 0)]:
        with pytest.raises(ValueError):
            retry_after_seconds(5, per_tile, runners)


def test_every_503_under_one_queue_says_the_same_retry_after() -> None:
    """A refusal for room in tiles, for room in time, for the deadline, the early check and a request
    of any size: one queue, one Retry-After (it was queued + asked tiles, so 1 then 33 under one queue)."""
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(delay=0.3)
        b = await started(runner, max_batch=1, max_wait_ms=0, max_queue_tiles=20)
        await b.submit(tiles(1, 1), deadline=deadline())  # learns >= 0.3 s per tile
        runner.gate = gate
        runner.entered.clear()
        running = asyncio.ensure_future(b.submit(tiles(2, 1), deadline=deadline()))
        await until_entered(runner)
        waiting = asyncio.ensure_future(b.submit(tiles(3, 19), deadline=deadline()))
        await asyncio.sleep(0)
        assert b.queue_depth == 19
        want = retry_after_seconds(19, b.seconds_per_tile)
        said = []
        for n, left in [(2, LONG), (15, LONG), (20, LONG), (1, 0.5)]:  # no room for n; no time for 1
            with pytest.raises(Overloaded) as e:
                await b.submit(tiles(10 + n, n), deadline=deadline(left))
            said.append(e.value.headers()["Retry-After"])
        b.max_queue_delay = 1.0  # the 19 queued tiles are more than 1 s of work
        for _ in range(2):
            with pytest.raises(Overloaded, match="no room now") as e:
                b.check_room()
            said.append(e.value.headers()["Retry-After"])
        assert said == [str(want)] * 6 and want >= 6
        assert b.queue_depth == 19 and b.retry_after() == want
        runner.delay = 0
        gate.set()
        await asyncio.gather(running, waiting)
        await b.stop()
    run(body)


def test_request_that_can_never_fit_is_413_style() -> None:
    async def body() -> None:
        runner = FakeRunner()
        obs = RecordingObserver()
        b = await started(runner, max_queue_tiles=8, observer=obs)
        with pytest.raises(PayloadTooLarge):
            await b.submit(tiles(1, 9), deadline=deadline())
        assert obs.rejects == ["too_large"] and runner.batches == [] and b.queue_depth == 0
        await b.stop()
    run(body)


def test_deadline_fails_the_request_and_its_tiles_never_run() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        obs = RecordingObserver()
        b = await started(runner, max_batch=2, max_wait_ms=0, observer=obs)
        a = asyncio.ensure_future(b.submit(tiles(1, 2), deadline=deadline()))
        await until_entered(runner)
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await b.submit(tiles(2, 3), deadline=deadline(0.2))
        assert time.perf_counter() - t0 >= 0.2 - 0.005
        assert b.queue_depth == 0 and obs.drops == [("deadline", 3)]
        gate.set()
        await a
        c = await b.submit(tiles(3, 1), deadline=deadline())  # the worker goes on
        np.testing.assert_array_equal(c, expected(3, 1))
        assert not runner.seen & {200, 201, 202}
        # an already expired deadline is refused before queueing
        with pytest.raises(DeadlineExceeded):
            await b.submit(tiles(4, 1), deadline=deadline(-1))
        assert b.stats.rejected == {"deadline": 1}
        await b.stop()
    run(body)


def test_cancelled_request_drops_its_queued_tiles() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        b = await started(runner, max_batch=2, max_wait_ms=0)
        a = asyncio.ensure_future(b.submit(tiles(1, 2), deadline=deadline()))
        await until_entered(runner)
        gone = asyncio.ensure_future(b.submit(tiles(2, 3), deadline=deadline()))
        # an outer timeout on the same deadline (as the HTTP layer has) counts as a deadline drop
        loop = asyncio.get_running_loop()

        async def timed() -> np.ndarray:
            d = loop.time() + 0.2
            async with asyncio.timeout_at(d):
                return await b.submit(tiles(3, 1), deadline=d)

        late = asyncio.ensure_future(timed())
        await asyncio.sleep(0.05)
        assert b.queue_depth == 4
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queue_depth == 1
        with pytest.raises((TimeoutError, DeadlineExceeded)):
            await late
        assert b.queue_depth == 0
        gate.set()
        await a
        np.testing.assert_array_equal(await b.submit(tiles(4, 1), deadline=deadline()), expected(4, 1))
        assert not runner.seen & {200, 201, 202, 300}
        assert b.stats.dropped == {"cancelled": 3, "deadline": 1}
        await b.stop()
    run(body)


def test_failing_batch_fails_only_its_own_requests() -> None:
    async def body() -> None:
        runner = FakeRunner(fail_on=lambda values: 100 in values)
        obs = RecordingObserver()
        b = await started(runner, max_batch=2, max_wait_ms=300, observer=obs)
        bad = b.submit(tiles(1, 1), deadline=deadline())  # poisons batch 1
        mixed = b.submit(tiles(2, 3), deadline=deadline())  # one tile in batch 1, two more queued
        good = b.submit(tiles(3, 2), deadline=deadline())
        r1, r2, r3 = await asyncio.gather(bad, mixed, good, return_exceptions=True)
        assert isinstance(r1, RuntimeError) and isinstance(r2, RuntimeError)
        assert isinstance(r3, np.ndarray)
        np.testing.assert_array_equal(r3, expected(3, 2))
        assert runner.batches == [[100, 200], [300, 301]], "request 2's other tiles should be dropped"
        assert b.stats.failed_batches == 1 and b.stats.dropped == {"failed": 2}
        np.testing.assert_array_equal(await b.submit(tiles(4, 2), deadline=deadline()), expected(4, 2))
        assert obs.batches == [2, 2]  # only successful batches are observed as batches ...
        assert obs.failures == [(2, "RuntimeError")]  # ... the failed one as a failure (model health)
        await b.stop()
    run(body)


def test_wrong_runner_output_fails_the_batch_not_the_worker() -> None:
    async def body() -> None:
        calls = []

        def runner(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return batch[:1] if len(calls) == 1 else batch
        b = TileBatcher(runner, max_batch=4, max_wait_ms=0, max_queue_tiles=8)
        await b.start()
        with pytest.raises(RuntimeError, match="runner returned"):
            await b.submit(tiles(1, 2), deadline=deadline())
        np.testing.assert_array_equal(await b.submit(tiles(2, 2), deadline=deadline()), tiles(2, 2))
        await b.stop()
    run(body)


def test_stop_with_drain_finishes_accepted_work_and_refuses_new() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        obs = RecordingObserver()
        b = await started(runner, max_batch=2, max_wait_ms=5000, observer=obs)
        subs = [asyncio.ensure_future(b.submit(tiles(r, n), deadline=deadline()))
                for r, n in ((1, 2), (2, 3))]
        await until_entered(runner)
        stopping = asyncio.ensure_future(b.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(NotReady):
            await b.submit(tiles(3, 1), deadline=deadline())
        assert not stopping.done()
        t0 = time.perf_counter()
        gate.set()
        await stopping
        # draining flushes the last partial batch at once instead of waiting max_wait (5 s)
        assert time.perf_counter() - t0 < 4.0
        for r, n, s in zip((1, 2), (2, 3), subs, strict=True):
            np.testing.assert_array_equal(s.result(), expected(r, n))
        assert runner.sizes == [2, 2, 1] and obs.rejects == ["stopping"]
        with pytest.raises(NotReady):
            await b.submit(tiles(4, 1), deadline=deadline())
    run(body)


def test_stop_without_drain_fails_what_is_queued() -> None:
    async def body() -> None:
        gate = threading.Event()
        runner = FakeRunner(gate=gate)
        b = await started(runner, max_batch=2, max_wait_ms=0)
        try:
            running = asyncio.ensure_future(b.submit(tiles(1, 2), deadline=deadline()))
            await until_entered(runner)
            queued = asyncio.ensure_future(b.submit(tiles(2, 2), deadline=deadline()))
            await asyncio.sleep(0)
            await b.stop(drain=False)
            for f in (running, queued):
                with pytest.raises(NotReady):
                    await f
            assert b.stats.dropped == {"shutdown": 2}
        finally:
            gate.set()
        assert 200 not in runner.seen
    run(body)


def test_admission_checks_and_broken_observer() -> None:
    class Broken(RecordingObserver):
        def on_queue(self, depth: int) -> None:
            raise ValueError("metrics down")

    async def body() -> None:
        b = TileBatcher(FakeRunner(), max_batch=2, max_wait_ms=0, max_queue_tiles=8, tile_shape=SHAPE,
                        observer=Broken())
        with pytest.raises(NotReady):  # not started
            await b.submit(tiles(1, 1), deadline=deadline())
        await b.start()
        with pytest.raises(ValueError):
            await b.submit(np.zeros((1, 3, 5, 4), np.float32), deadline=deadline())
        with pytest.raises(ValueError):
            await b.submit(tiles(1, 1).astype(np.float64), deadline=deadline())
        with pytest.raises(ValueError):
            await b.submit(np.zeros((0, *SHAPE), np.float32), deadline=deadline())
        # an observer that raises is logged, never fatal
        np.testing.assert_array_equal(await b.submit(tiles(2, 3), deadline=deadline()), expected(2, 3))
        await b.stop()
    run(body)


# -- named outputs -------------------------------------------------------------------------------

def labels_of(rid: int, n: int) -> np.ndarray:
    return tiles(rid, n)[:, 0].astype(np.uint16)


class OutputsRunner(FakeRunner):
    """Offers logits and labels (each pixel: its tile's value, uint16); records what each batch fetched."""

    outputs = ("logits", "labels")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.names: list[tuple[str, ...]] = []

    def __call__(self, batch: np.ndarray, names: tuple[str, ...]) -> Any:  # type: ignore[override]
        self.names.append(names)
        logits = super().__call__(batch)
        full = {"logits": logits, "labels": batch[:, 0].astype(np.uint16)}
        return {n: full[n] for n in names}


def test_a_batch_fetches_the_union_of_what_its_requests_want() -> None:
    async def body() -> None:
        runner = OutputsRunner()
        b = await started(runner, max_batch=8, max_wait_ms=300)
        assert b.outputs == ("logits", "labels")
        # labels only: logits never fetched
        outs = await asyncio.gather(*(b.submit(tiles(r, 2), deadline=deadline(), output="labels")
                                      for r in (1, 2)))
        assert runner.sizes == [4] and runner.names == [("labels",)]
        for r, out in zip((1, 2), outs, strict=True):
            assert out.dtype == np.uint16 and out.shape == (2, 4, 4)
            np.testing.assert_array_equal(out, labels_of(r, 2))
        # mixed: one batch fetching both; each request gets its own output
        lab, log = await asyncio.gather(b.submit(tiles(3, 3), deadline=deadline(), output="labels"),
                                        b.submit(tiles(4, 2), deadline=deadline()))
        assert runner.sizes[1:] == [5] and runner.names[1:] == [("logits", "labels")]
        np.testing.assert_array_equal(lab, labels_of(3, 3))
        np.testing.assert_array_equal(log, expected(4, 2))
        # logits only (the default)
        np.testing.assert_array_equal(await b.submit(tiles(5, 1), deadline=deadline()), expected(5, 1))
        assert runner.names[2:] == [("logits",)]
        await b.stop()
    run(body)


def test_labels_split_over_batches_come_back_in_order() -> None:
    async def body() -> None:
        runner = OutputsRunner()
        b = await started(runner, max_batch=2, max_wait_ms=0)
        out = await b.submit(tiles(1, 5), deadline=deadline(), output="labels")
        assert runner.sizes == [2, 2, 1] and out.dtype == np.uint16
        np.testing.assert_array_equal(out, labels_of(1, 5))
        await b.stop()
    run(body)


def test_an_output_the_runner_lacks_is_refused_before_queueing() -> None:
    async def body() -> None:
        runner = FakeRunner()  # a plain runner: logits only
        b = await started(runner)
        assert b.outputs == ("logits",)
        with pytest.raises(ValueError, match="'labels'"):
            await b.submit(tiles(1, 1), deadline=deadline(), output="labels")
        assert b.queue_depth == 0 and runner.batches == []
        await b.stop()
    run(body)


def test_runner_missing_an_output_fails_the_batch_not_the_worker() -> None:
    class Forgetful(OutputsRunner):
        def __call__(self, batch: np.ndarray, names: tuple[str, ...]) -> Any:  # type: ignore[override]
            out = super().__call__(batch, names)
            return {} if len(self.names) == 1 else out

    async def body() -> None:
        b = await started(Forgetful(), max_wait_ms=0)
        with pytest.raises(RuntimeError, match=r"runner returned .* as 'labels'"):
            await b.submit(tiles(1, 2), deadline=deadline(), output="labels")
        out = await b.submit(tiles(2, 2), deadline=deadline(), output="labels")
        np.testing.assert_array_equal(out, labels_of(2, 2))
        await b.stop()
    run(body)


def test_runners_must_offer_the_same_outputs() -> None:
    with pytest.raises(ValueError, match="different outputs"):
        TileBatcher([OutputsRunner(), FakeRunner()], max_batch=2, max_wait_ms=0, max_queue_tiles=8)
    with pytest.raises(ValueError, match="at least one runner"):
        TileBatcher([], max_batch=2, max_wait_ms=0, max_queue_tiles=8)
