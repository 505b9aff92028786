"""Several runners (ONNX Runtime sessions) behind one batcher, with fake runners and with the real engine.

The fake runners are those of test_batcher (tile values say which tiles ran
where). Concurrency is shown, not timed: two runners both wait on one barrier,
which only opens when both batches are running at once.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine.batcher import TileBatcher
from service.engine.sessions import Engine
from service.errors import DeadlineExceeded, NotReady, Overloaded
from tests.bounds import within
from tests.service.engine.test_batcher import (
    SHAPE,
    FakeRunner,
    OutputsRunner,
    RecordingObserver,
    deadline,
    expected,
    labels_of,
    run,
    tiles,
    until_entered,
)
from tests.service.tiny_model import TINY_REFERENCE_BOUND, build_tiny_artifact, tiny_reference


async def started(runners: list[Any], **kw: Any) -> TileBatcher:
    opts: dict[str, Any] = {"max_batch": 2, "max_wait_ms": 0, "max_queue_tiles": 64, "tile_shape": SHAPE}
    b = TileBatcher(runners, **{**opts, **kw})
    await b.start()
    return b


def test_two_runners_run_two_batches_at_once() -> None:
    async def body() -> None:
        barrier = threading.Barrier(2, timeout=10)  # one runner alone would break it: its batch fails

        class Meeting(FakeRunner):
            def __call__(self, batch: np.ndarray) -> np.ndarray:
                barrier.wait()
                return super().__call__(batch)

        runners = [Meeting(), Meeting()]
        obs = RecordingObserver()
        b = await started(runners, observer=obs)
        assert b.runners == 2
        out1, out2 = await asyncio.gather(b.submit(tiles(1, 2), deadline=deadline()),
                                          b.submit(tiles(2, 2), deadline=deadline()))
        np.testing.assert_array_equal(out1, expected(1, 2))
        np.testing.assert_array_equal(out2, expected(2, 2))
        assert [r.sizes for r in runners] == [[2], [2]]
        assert b.stats.runner_batches == {0: 1, 1: 1} and obs.batches == [2, 2]
        # each runner in its own thread, neither on the event loop
        (t0,), (t1,) = (r.threads for r in runners)
        assert t0 != t1 and threading.get_ident() not in (t0, t1)
        await b.stop()
    run(body)


def test_rows_keep_their_order_when_batches_finish_out_of_order() -> None:
    """Request 1's first batch finishes last, on one runner, while the other runs the rest."""
    async def body() -> None:
        rest_done = threading.Event()

        class Ordered(OutputsRunner):
            def __call__(self, batch: np.ndarray, names: tuple[str, ...]) -> Any:  # type: ignore[override]
                values = set(batch[:, 0, 0, 0].tolist())
                if 100 in values:
                    assert rest_done.wait(10), "the other batches never ran"
                out = super().__call__(batch, names)
                if 105 in values:
                    rest_done.set()
                return out

        runners = [Ordered(), Ordered()]
        b = await started(runners)
        lab = await b.submit(tiles(1, 6), deadline=deadline(), output="labels")
        np.testing.assert_array_equal(lab, labels_of(1, 6))
        batches = sorted(v for r in runners for v in r.batches)
        assert batches == [[100, 101], [102, 103], [104, 105]]
        (first,) = [r for r in runners if [100, 101] in r.batches]
        assert first.batches == [[100, 101]], "the held runner ran only the first batch"
        logits = await b.submit(tiles(2, 5), deadline=deadline())
        np.testing.assert_array_equal(logits, expected(2, 5))
        await b.stop()
    run(body)


def test_queue_time_estimate_counts_the_runners() -> None:
    async def body() -> None:
        gate = threading.Event()
        runners = [FakeRunner(delay=0.2), FakeRunner(delay=0.2)]
        b = await started(runners, max_batch=1, max_queue_tiles=30)
        await b.submit(tiles(1, 2), deadline=deadline())  # one tile on each runner: learns >= 0.2 s a tile
        per_tile = b.seconds_per_tile
        assert per_tile is not None and per_tile >= 0.2
        for r in runners:
            r.gate = gate
            r.entered.clear()
        busy = [asyncio.ensure_future(b.submit(tiles(r, 1), deadline=deadline())) for r in (2, 3)]
        for r in runners:
            await until_entered(r)
        waiting = asyncio.ensure_future(b.submit(tiles(4, 20), deadline=deadline()))
        await asyncio.sleep(0)
        assert b.queue_depth == 20
        # 20 queued, two runners side by side: half of what one runner would take
        want = math.ceil(20 * per_tile / 2)
        assert b.retry_after() == want < math.ceil(20 * per_tile)
        # the bound in time counts the runners too: the 20 queued tiles are 20 * per_tile / 2 seconds
        b.max_queue_delay = 20 * per_tile / 2 + 0.05
        b.check_room()  # room for one more tile (there is room in tiles: 20 of 30)
        b.max_queue_delay = 20 * per_tile / 2 - 0.05
        with pytest.raises(Overloaded, match="of work is queued"):
            b.check_room()
        for r in runners:
            r.delay = 0
        gate.set()
        await asyncio.gather(*busy, waiting)
        await b.stop()
    run(body)


def test_a_failing_runner_fails_only_its_batch() -> None:
    async def body() -> None:
        gate = threading.Event()
        runners = [FakeRunner(gate=gate, fail_on=lambda v: 100 in v),
                   FakeRunner(gate=gate, fail_on=lambda v: 100 in v)]
        b = await started(runners, max_batch=2)
        # request 1's first batch fails on one runner while its second runs on the other
        r1 = asyncio.ensure_future(b.submit(tiles(1, 4), deadline=deadline()))
        for r in runners:
            await until_entered(r)
        r2 = asyncio.ensure_future(b.submit(tiles(2, 2), deadline=deadline()))
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(RuntimeError, match="boom"):
            await r1
        np.testing.assert_array_equal(await r2, expected(2, 2))
        assert b.stats.failed_batches == 1 and b.accepting
        np.testing.assert_array_equal(await b.submit(tiles(3, 4), deadline=deadline()), expected(3, 4))
        await b.stop()
    run(body)


def test_deadline_and_cancellation_drop_queued_tiles_with_every_runner_busy() -> None:
    async def body() -> None:
        gate = threading.Event()
        runners = [FakeRunner(gate=gate), FakeRunner(gate=gate)]
        b = await started(runners)
        busy = asyncio.ensure_future(b.submit(tiles(1, 4), deadline=deadline()))
        for r in runners:
            await until_entered(r)
        gone = asyncio.ensure_future(b.submit(tiles(2, 3), deadline=deadline()))
        with pytest.raises(DeadlineExceeded):
            await b.submit(tiles(3, 2), deadline=deadline(0.2))
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queue_depth == 0 and b.stats.dropped == {"deadline": 2, "cancelled": 3}
        gate.set()
        np.testing.assert_array_equal(await busy, expected(1, 4))
        assert not {v for r in runners for v in r.seen} & {200, 201, 202, 300, 301}
        await b.stop()
    run(body)


def test_stop_drains_on_every_runner_or_fails_what_runs() -> None:
    async def body() -> None:
        gate = threading.Event()
        runners = [FakeRunner(gate=gate), FakeRunner(gate=gate)]
        b = await started(runners, max_wait_ms=5000)
        subs = [asyncio.ensure_future(b.submit(tiles(r, n), deadline=deadline()))
                for r, n in ((1, 3), (2, 2))]
        for r in runners:
            await until_entered(r)
        assert b.queue_depth == 1  # two full batches running, one tile left: it would wait 5 s
        stopping = asyncio.ensure_future(b.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(NotReady):
            await b.submit(tiles(3, 1), deadline=deadline())
        t0 = time.perf_counter()
        gate.set()
        await stopping
        assert time.perf_counter() - t0 < 4.0, "draining waited for max_wait"
        for (r, n), s in zip(((1, 3), (2, 2)), subs, strict=True):
            np.testing.assert_array_equal(s.result(), expected(r, n))
        assert sorted(n for r in runners for n in r.sizes) == [1, 2, 2]

        gate2 = threading.Event()
        runners = [FakeRunner(gate=gate2), FakeRunner(gate=gate2)]
        b = await started(runners)
        try:
            running = [asyncio.ensure_future(b.submit(tiles(r, 2), deadline=deadline())) for r in (1, 2)]
            for r in runners:
                await until_entered(r)
            queued = asyncio.ensure_future(b.submit(tiles(3, 2), deadline=deadline()))
            await asyncio.sleep(0)
            await b.stop(drain=False)
            for f in [*running, queued]:
                with pytest.raises(NotReady):
                    await f
            assert b.stats.dropped == {"shutdown": 2}
        finally:
            gate2.set()
    run(body)


def test_real_engine_sessions_behind_the_batcher(tmp_path: Path) -> None:
    """Engine.runners(): the lead's wiring, on two real CPU sessions of the tiny artifact with labels."""
    engine = Engine(build_tiny_artifact(tmp_path / "tiny.onnx", with_labels=True), provider="cpu",
                    max_batch=2, sessions=2)
    engine.warmup()
    rng = np.random.default_rng(3)
    requests = [rng.uniform(0, 255, (n, 3, 32, 48)).astype(np.float32) for n in (3, 1, 4, 2)]

    async def body() -> None:
        b = TileBatcher(engine.runners(), max_batch=2, max_wait_ms=1, max_queue_tiles=32,
                        tile_shape=(3, 32, 48))
        await b.start()
        assert b.outputs == ("logits", "labels")
        outs = await asyncio.gather(*(b.submit(t, deadline=deadline(), output=o)
                                      for t, o in zip(requests, ("labels", "logits", "labels", "logits"),
                                                      strict=True)))
        for t, out in zip(requests, outs, strict=True):
            ref = tiny_reference(t)
            if out.ndim == 3:  # labels: where the float64 reference has a near-tie either class may win
                assert out.dtype == np.uint8
                top2 = np.sort(ref, axis=1)[:, -2:]
                clear = top2[:, 1] - top2[:, 0] > 1e-4
                np.testing.assert_array_equal(out[clear], np.argmax(ref, axis=1)[clear])
            else:
                assert out.shape == ref.shape
                within("engine.tiny_vs_float64", np.abs(out - ref).max(), TINY_REFERENCE_BOUND)
        assert sum(b.stats.runner_batches.values()) == b.stats.batches >= 5
        await b.stop()
    run(body)
