"""service.offline.pool: the tiles of successive images in shared batches, one output a batch, inline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from service.offline.pool import BatchFailed, TilePool

Images = Sequence[tuple[str, int]]  # (output, number of tiles) per image, in submission order


class FakeEngine:
    """Tile i of image k holds k * 100 + i; logits are the tiles doubled, labels their value + 1.

    Every batch advances ``now`` (the pool's clock) by its own ``cost``; ``fail`` names the calls
    (1-based) that raise.
    """

    def __init__(self, outputs: tuple[str, ...] = ("logits",), fail: Sequence[int] = ()) -> None:
        self.outputs = outputs
        self.fail = set(fail)
        self.batches: list[tuple[str, list[int]]] = []  # (output, tile values) per call
        self.costs: list[float] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        (name,) = names
        self.batches.append((name, [int(v) for v in tiles[:, 0, 0, 0]]))
        if len(self.batches) in self.fail:
            raise RuntimeError("device lost")
        cost = 0.25 * len(self.batches) + 0.01 * len(tiles)
        self.costs.append(cost)
        self.now += cost
        return {name: tiles * 2 if name == "logits" else tiles[:, 0] + 1}


def tiles_of(key: int, n: int) -> np.ndarray:
    return (key * 100 + np.arange(n, dtype=np.float32)).reshape(n, 1, 1, 1)


def expected(output: str, key: int, n: int) -> np.ndarray:
    t = tiles_of(key, n)
    return t * 2 if output == "logits" else t[:, 0] + 1


Result = tuple[np.ndarray | BaseException, float]  # an image's rows (or what it raised), its share


async def submit_each(pool: TilePool, images: Images, finished: list[int], *,
                      before_flush: Callable[[], None] = lambda: None) -> list[Result]:
    """Each image submitted by a task of its own, in order, each queued before the next starts;
    then ``before_flush()`` and the flush. The keys of the images go to ``finished`` as they finish."""

    async def one(key: int, output: str, n: int) -> Result:
        try:
            rows: np.ndarray | BaseException = await pool.submit(tiles_of(key, n), deadline=0.0,
                                                                 output=output)
        except BatchFailed as e:
            rows = e
        finished.append(key)
        return rows, pool.seconds(asyncio.current_task())

    tasks = []
    for key, (output, n) in enumerate(images):
        tasks.append(asyncio.create_task(one(key, output, n)))
        for _ in range(3):  # it queues its tiles (running the batches they fill); the images done finish
            await asyncio.sleep(0)
    before_flush()
    pool.flush()
    return await asyncio.gather(*tasks)


def run(pool: TilePool, images: Images, before_flush: Callable[[list[int]], None] = lambda _: None, *,
        order: list[int] | None = None) -> list[Result]:
    """:func:`submit_each`; ``before_flush`` sees the images finished by then. They finish in
    ``order``, by default the order they were submitted in."""
    finished: list[int] = []
    results = asyncio.run(submit_each(pool, images, finished, before_flush=lambda: before_flush(finished)))
    assert finished == (list(range(len(images))) if order is None else order)
    return results


def test_tiles_of_successive_images_fill_batches_in_order() -> None:
    engine = FakeEngine()
    pool = TilePool(engine, max_batch=4, clock=engine.clock)
    sizes = [1, 3, 2, 5, 2]

    def before_flush(finished: list[int]) -> None:
        # 13 tiles: three full batches ran as soon as they filled, and the images they finished
        # were answered; the last one waits for the flush with one tile run
        assert finished == [0, 1, 2, 3] and len(engine.batches) == 3
        assert pool.queued == 1 and pool.waiting == 1

    results = run(pool, [("logits", n) for n in sizes], before_flush)
    assert engine.batches == [("logits", [0, 100, 101, 102]), ("logits", [200, 201, 300, 301]),
                              ("logits", [302, 303, 304, 400]), ("logits", [401])]
    for key, ((rows, _), n) in enumerate(zip(results, sizes, strict=True)):
        assert isinstance(rows, np.ndarray)
        np.testing.assert_array_equal(rows, expected("logits", key, n))
    assert pool.queued == 0 and pool.waiting == 0


def test_images_finish_in_the_order_they_were_submitted() -> None:
    # the second image's tiles fill the batch that finishes both: the first is answered first
    engine = FakeEngine()
    pool = TilePool(engine, max_batch=4, clock=engine.clock)

    def before_flush(finished: list[int]) -> None:
        assert engine.batches == [("logits", [0, 100, 101, 102])] and finished == [0, 1]

    run(pool, [("logits", 1), ("logits", 3)], before_flush)
    assert len(engine.batches) == 1


def test_a_batch_holds_one_output() -> None:
    engine = FakeEngine(outputs=("logits", "labels"))
    pool = TilePool(engine, max_batch=2, clock=engine.clock)
    assert pool.outputs == ("logits", "labels")
    images = [("logits", 2), ("labels", 1), ("logits", 1), ("labels", 2), ("logits", 1)]
    # in order within an output: 3 (labels) waits for the flush, 4 (logits) does not
    results = run(pool, images, order=[0, 1, 2, 4, 3])
    assert engine.batches == [("logits", [0, 1]), ("labels", [100, 300]), ("logits", [200, 400]),
                              ("labels", [301])]
    for key, ((rows, _), (output, n)) in enumerate(zip(results, images, strict=True)):
        assert isinstance(rows, np.ndarray)
        np.testing.assert_array_equal(rows, expected(output, key, n))


def test_a_failing_batch_fails_its_images_only() -> None:
    engine = FakeEngine(fail=[2])
    pool = TilePool(engine, max_batch=2, clock=engine.clock)
    # batch 1: [0, 1a]; batch 2: [1b, 2a] fails: 1 and 2 fail, 2's queued tiles dropped; 3 goes on
    results = run(pool, [("logits", 1), ("logits", 2), ("logits", 3), ("logits", 1)])
    errors = [str(rows) if isinstance(rows, BaseException) else None for rows, _ in results]
    assert errors == [None, "inference failed: device lost", "inference failed: device lost", None]
    assert engine.batches == [("logits", [0, 100]), ("logits", [101, 200]), ("logits", [300])]
    np.testing.assert_array_equal(results[3][0], expected("logits", 3, 1))
    assert pool.queued == 0 and pool.waiting == 0


def test_flush_runs_the_partial_batches() -> None:
    engine = FakeEngine(outputs=("logits", "labels"))
    pool = TilePool(engine, max_batch=8, clock=engine.clock)
    pool.flush()  # nothing waits: nothing runs
    assert engine.batches == []

    async def submit_then_flush() -> None:
        tasks = [asyncio.create_task(pool.submit(tiles_of(k, n), deadline=0.0, output=o))
                 for k, (o, n) in enumerate([("logits", 3), ("labels", 2), ("logits", 2)])]
        await asyncio.sleep(0)
        assert engine.batches == [] and pool.queued == 7 and pool.waiting == 3
        pool.flush()
        assert engine.batches == [("logits", [0, 1, 2, 200, 201]), ("labels", [100, 101])]
        assert pool.queued == 0 and pool.waiting == 0
        await asyncio.gather(*tasks)

    asyncio.run(submit_then_flush())


def test_the_shares_of_the_run_time_sum_to_the_batches() -> None:
    engine = FakeEngine(fail=[3])
    pool = TilePool(engine, max_batch=4, clock=engine.clock)
    sizes = [1, 3, 2, 5, 2, 3]
    results = run(pool, [("logits", n) for n in sizes])
    # batches [0, 1abc], [2ab, 3ab], [3cde, 4a] fails (3 and 4 dropped), [5abc]
    d1, d2, d4 = engine.costs
    shares = [s for _, s in results]
    assert shares == pytest.approx([d1 / 4, d1 * 3 / 4, d2 / 2, d2 / 2, 0.0, d4])
    assert sum(shares) == pytest.approx(sum(engine.costs))  # the failed batch took no measured time
    assert pool.seconds(object()) == 0.0


def test_what_the_pool_refuses() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        TilePool(FakeEngine(), max_batch=0)
    pool = TilePool(FakeEngine(), max_batch=2)
    with pytest.raises(ValueError, match="no output 'labels'"):
        asyncio.run(pool.submit(tiles_of(0, 1), deadline=0.0, output="labels"))


def test_rows_that_cannot_be_joined_fail_their_image_without_a_hang() -> None:
    class Ragged(FakeEngine):  # the second batch's rows have another shape: no array holds both
        def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
            out = super().run_outputs(tiles, names)
            return {k: v[:, :, :, 0] if len(self.batches) == 2 else v for k, v in out.items()}

    engine = Ragged()
    pool = TilePool(engine, max_batch=2, clock=engine.clock)
    # batch 1: [0, 1a]; batch 2: [1b, 2a]: image 1's rows cannot be joined; image 2's (one batch each) can
    results = run(pool, [("logits", 1), ("logits", 2), ("logits", 1)])
    assert isinstance(results[1][0], BatchFailed) and "inference failed" in str(results[1][0])
    np.testing.assert_array_equal(results[0][0], expected("logits", 0, 1))
    assert results[2][0].shape == (1, 1, 1) and pool.waiting == 0
