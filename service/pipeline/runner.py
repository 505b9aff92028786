"""The tile-runner protocol: what the chain needs of whatever runs an image's tiles (and of a
stitcher, which the engine's device may provide).

Three implementations, one per way of serving:

* :class:`service.engine.batcher.TileBatcher`: the HTTP app's cross-request batcher (tiles of
  every request share batches; ``deadline`` bounds the wait);
* :class:`service.offline.pool.TilePool`: ``pspnet-serve segment`` (locally and in each Ray
  actor): tiles of successive images share batches, run in the calling thread;
* :class:`EngineRunner`: one image's tiles on an engine, now, ``max_batch`` at a time
  (``evaluate``, scripts, tests).

Tested by tests/service/pipeline/test_chain.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from service.contract.artifact import OUTPUT_NAME
from service.contract.soft import Soft
from service.protocol.windows import ScaleGeometry


class TileRunner(Protocol):
    """Runs tiles ``(N, 3, H, W)`` float32 and hands back one output's rows, in order."""

    @property
    def outputs(self) -> tuple[str, ...]:
        """The artifact outputs it can fetch: ``("logits",)`` or ``("logits", "labels")``."""
        ...

    async def submit(self, tiles: np.ndarray, *, deadline: float, output: str = ...,
                     admit_tiles: int | None = ...) -> np.ndarray:
        """The rows of ``output`` for ``tiles`` (``(N, C, H, W)`` logits or ``(N, H, W)`` labels).

        ``admit_tiles``: the tiles a runner that refuses work weighs for this submission: None for
        ``len(tiles)`` (a request sent whole); a streamed request's total with its first chunk,
        and 0 with the chunks after it (admitted already: never refused for room or time).
        """
        ...


class RowsStitcher(Protocol):
    """What the chain needs of a stitcher: :class:`service.protocol.stitch.Stitcher` on the host,
    :class:`service.engine.device_stitch.DeviceStitcher` on the engine's device."""

    route: str

    def add(self, rows: Any, first: int) -> None: ...
    def fold(self) -> None: ...
    def labels(self) -> np.ndarray: ...
    def soft(self, request: Soft, labels: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class DeviceStitching(Protocol):
    """Stitchers on the engine's device (:class:`service.engine.device_stitch.DeviceStitching`): their rows
    are the runner's ``output``; ``stitcher`` is None when the request does not fit the device now."""

    @property
    def output(self) -> str: ...

    def stitcher(self, geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int,
                 tile: tuple[int, int]) -> RowsStitcher | None: ...


def join_rows(parts: Sequence[Any]) -> Any:
    """One submission's rows from the batches that held them, in order: numpy rows concatenated, or
    logits left on the device (:class:`service.engine.device_kit.DeviceRows`) pieced together."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    rows = parts[0].empty(sum(len(p) for p in parts))
    start = 0
    for part in parts:
        rows[start:start + len(part)] = part
        start += len(part)
    return rows


class OutputsEngine(Protocol):
    """What :class:`EngineRunner` needs of :class:`service.engine.sessions.Engine`."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]: ...


class EngineRunner:
    """A :class:`TileRunner` that runs one image's tiles at once on an engine, ``max_batch`` at a
    time, in the calling thread. Its ``submit`` never suspends, so the chain's coroutines driven
    over it finish without an event loop (:meth:`service.pipeline.chain.Chain.labels_now`)."""

    def __init__(self, engine: OutputsEngine, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.engine.outputs

    def run(self, tiles: np.ndarray, output: str = OUTPUT_NAME) -> np.ndarray:
        """The rows of ``output`` for ``tiles``, ``max_batch`` tiles a run."""
        step = self.max_batch
        parts = [self.engine.run_outputs(tiles[i:i + step], (output,))[output]
                 for i in range(0, len(tiles), step)]
        rows: np.ndarray = join_rows(parts)
        return rows

    async def submit(self, tiles: np.ndarray, *, deadline: float = math.inf,
                     output: str = OUTPUT_NAME, admit_tiles: int | None = None) -> np.ndarray:
        return self.run(tiles, output)
