"""What a batch runs on: the runner protocol, the requests a batch holds, and running one batch.

A batch is a list of parts, each a slice of one pending request's tiles; :func:`run_batch`
gathers them, runs them through one runner, checks what came back and scatters each request's
rows of its output (numpy rows, or :class:`~service.engine.device_kit.DeviceRows` of logits left on the
device). It runs in the runner's own thread; the queue that forms the batches is
:mod:`service.engine.batcher`'s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from service.contract.artifact import OUTPUT_NAME, Tiles
from service.engine.device_kit import DeviceRows

Rows = Any  # one output's rows: float32 logits, uint8/uint16 labels (numpy), or DeviceRows


LogitsFn = Callable[[Tiles], Tiles]  # a plain tiles -> logits function


@runtime_checkable
class OutputRunner(Protocol):
    """Runs one batch and returns the outputs named (each with one row per tile), of ``outputs``."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    def __call__(self, tiles: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]: ...


class LogitsOnly:
    """A plain ``runner(tiles) -> logits`` as an :class:`OutputRunner`."""

    outputs = (OUTPUT_NAME,)

    def __init__(self, run: LogitsFn) -> None:
        self._run = run

    def __call__(self, tiles: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]:
        return {OUTPUT_NAME: self._run(tiles)}


class Pending:
    """One submitted request: its tiles, how far the workers got, and where its rows go."""

    __slots__ = ("deadline", "done", "enqueued_at", "future", "next", "out", "output", "tiles", "total")

    def __init__(self, tiles: Tiles, output: str, future: asyncio.Future[Rows], now: float,
                 deadline: float) -> None:
        self.tiles = tiles
        self.output = output
        self.total = len(tiles)
        self.future = future
        self.enqueued_at = now
        self.deadline = deadline
        self.next = 0  # first tile not yet taken into a batch
        self.done = 0  # tiles whose outputs have arrived
        self.out: Rows | None = None  # written only by runner threads (allocated under a lock)

    @property
    def dead(self) -> bool:
        """Answered, failed, timed out or cancelled: its outputs are no longer wanted."""
        return self.future.done()


Part = tuple[Pending, int, int]  # request, first tile, stop


def run_batch(runner: OutputRunner, names: tuple[str, ...], parts: Sequence[Part],
              out_lock: threading.Lock) -> float:
    """Gather the batch, run it, scatter each request's rows of its output; the runner's seconds.

    Runs in the runner's thread. ``names``: the outputs to fetch (each part's request wants one of
    them). A request split over several batches gets one output array, allocated under
    ``out_lock`` (its other rows may be arriving on another runner's thread at the same time); a
    request wholly in this batch gets a view of the runner's output. A runner that returns
    anything but one row per tile of each output named raises :class:`RuntimeError`.
    """
    pieces = [r.tiles[a:b] for r, a, b in parts]
    batch = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    t0 = time.perf_counter()
    out = runner(batch, names)
    seconds = time.perf_counter() - t0
    if not isinstance(out, Mapping):
        raise RuntimeError(f"runner returned {type(out).__name__}, not a mapping of outputs")
    for name in names:
        got = out.get(name)
        rows_like = (isinstance(got, np.ndarray) and got.ndim >= 1) or isinstance(got, DeviceRows)
        if got is None or not rows_like or len(got) != len(batch):
            raise RuntimeError(f"runner returned {getattr(got, 'shape', type(got))} as {name!r} "
                               f"for {len(batch)} tiles")
    offset = 0
    for r, a, b in parts:
        rows = out[r.output][offset:offset + b - a]
        offset += b - a
        if r.dead:
            continue  # timed out or cancelled meanwhile: nobody will read it
        if a == 0 and b == r.total:
            r.out = rows  # the whole request in this batch: a view, no copy
            continue
        with out_lock:
            if r.out is None:
                r.out = (np.empty((r.total, *rows.shape[1:]), dtype=rows.dtype)
                         if isinstance(rows, np.ndarray) else rows.empty(r.total))
            dest = r.out
        dest[a:b] = rows
    return seconds
