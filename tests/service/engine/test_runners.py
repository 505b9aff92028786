"""One batch on one runner (service.engine.runners.run_batch), with a fake runner and no batcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from service.contract.artifact import Tiles
from service.engine.runners import LogitsOnly, OutputRunner, Part, Pending, Rows, run_batch

SHAPE = (3, 2, 2)


def tiles(rid: int, n: int) -> Tiles:
    values = rid * 100 + np.arange(n, dtype=np.float32)
    return np.broadcast_to(values[:, None, None, None], (n, *SHAPE)).astype(np.float32)


class Fake:
    """Logits ``[v, -v]`` and labels ``v`` per pixel of a tile filled with ``v``; records each batch."""

    outputs = ("logits", "labels")

    def __init__(self) -> None:
        self.calls: list[tuple[list[float], tuple[str, ...]]] = []

    def __call__(self, batch: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]:
        self.calls.append(([float(v) for v in batch[:, 0, 0, 0]], names))
        v = batch[:, 0]
        out: dict[str, Rows] = {"logits": np.stack([v, -v], axis=1), "labels": v.astype(np.uint16)}
        return {n: out[n] for n in names}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def pending(loop: asyncio.AbstractEventLoop, rid: int, n: int, output: str = "logits") -> Pending:
    return Pending(tiles(rid, n), output, loop.create_future(), 0.0, 10.0)


def test_gathers_in_order_and_scatters_each_requests_rows(loop: asyncio.AbstractEventLoop) -> None:
    fake, lock = Fake(), threading.Lock()
    a, b = pending(loop, 1, 3), pending(loop, 2, 2, "labels")
    parts: list[Part] = [(a, 0, 3), (b, 0, 2)]
    seconds = run_batch(fake, ("logits", "labels"), parts, lock)
    assert seconds >= 0
    assert fake.calls == [([100.0, 101.0, 102.0, 200.0, 201.0], ("logits", "labels"))]
    v = tiles(1, 3)[:, 0]
    np.testing.assert_array_equal(a.out, np.stack([v, -v], axis=1))
    np.testing.assert_array_equal(b.out, tiles(2, 2)[:, 0].astype(np.uint16))
    assert b.out is not None and b.out.dtype == np.uint16


def test_a_request_split_over_batches_is_assembled_in_place(loop: asyncio.AbstractEventLoop) -> None:
    fake, lock = Fake(), threading.Lock()
    a, b = pending(loop, 1, 5), pending(loop, 2, 1)
    run_batch(fake, ("logits",), [(a, 3, 5)], lock)  # the later rows first
    run_batch(fake, ("logits",), [(b, 0, 1), (a, 0, 3)], lock)
    assert [c[0] for c in fake.calls] == [[103.0, 104.0], [200.0, 100.0, 101.0, 102.0]]
    v = tiles(1, 5)[:, 0]
    np.testing.assert_array_equal(a.out, np.stack([v, -v], axis=1))
    v = tiles(2, 1)[:, 0]
    np.testing.assert_array_equal(b.out, np.stack([v, -v], axis=1))


def test_a_dead_request_gets_no_rows(loop: asyncio.AbstractEventLoop) -> None:
    a, b = pending(loop, 1, 2), pending(loop, 2, 2)
    a.future.cancel()
    run_batch(Fake(), ("logits",), [(a, 0, 2), (b, 0, 2)], threading.Lock())
    assert a.dead and a.out is None and b.out is not None and len(b.out) == 2


@pytest.mark.parametrize("bad", [
    lambda batch, names: batch[:1],  # not a mapping
    lambda batch, names: {"logits": batch[:1]},  # one row short
    lambda batch, names: {"logits": np.float32(1)},  # not an array of rows
    lambda batch, names: {},  # the output asked for is missing
])
def test_a_runner_returning_the_wrong_shape_raises(
        loop: asyncio.AbstractEventLoop, bad: Callable[[Tiles, tuple[str, ...]], Any]) -> None:
    class Bad:
        outputs = ("logits",)

        def __call__(self, batch: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]:
            out: Mapping[str, Rows] = bad(batch, names)
            return out

    a = pending(loop, 1, 2)
    with pytest.raises(RuntimeError, match="runner returned"):
        run_batch(Bad(), ("logits",), [(a, 0, 2)], threading.Lock())
    assert a.out is None


def test_a_plain_runner_offers_logits_only() -> None:
    runner = LogitsOnly(lambda t: t * 2)
    assert isinstance(runner, OutputRunner) and runner.outputs == ("logits",)
    t = tiles(1, 2)
    np.testing.assert_array_equal(runner(t, ("logits",))["logits"], t * 2)
