"""The offline tile pool: the :class:`~service.pipeline.runner.TileRunner` of ``pspnet-serve segment``.

The tiles of successive images run together, ``max_batch`` at a time, in the order they were
submitted, in the calling thread (:meth:`TilePool.submit` runs every batch that fills;
:meth:`TilePool.flush` runs the rest). There is one queue per output name, so a batch is
all logits or all in-graph labels. A batch that raises fails every image with tiles in it
(:class:`BatchFailed`, "inference failed: ...") and drops their tiles not yet run; the other
images go on. Each image's share of the batches' run time, by tiles, is kept for its manifest
line (:meth:`TilePool.seconds`).

Pooling never changes a tile's result on the CPU (ONNX Runtime computes each batch row on its
own), so an image's labels are those it gets alone. The driver is service.offline.work.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.contract.artifact import OUTPUT_NAME
from service.pipeline.runner import OutputsEngine, join_rows


class BatchFailed(RuntimeError):
    """A batch holding tiles of this image raised: the image fails with this message."""


@dataclass(eq=False)
class _Image:
    """One submission: its tiles, how many have gone into batches, the rows back so far."""

    tiles: np.ndarray
    future: asyncio.Future[np.ndarray]
    owner: object  # the submitting task: its share of the run time is kept under it
    taken: int = 0
    rows: list[np.ndarray] = field(default_factory=list)


class TilePool:
    """Tiles of successive images in shared batches of ``max_batch``, run on ``engine`` inline.

    At most ``max_batch - 1`` tiles of an output wait for a batch until :meth:`flush`. ``clock``
    times the batches (tests pass their own).
    """

    def __init__(self, engine: OutputsEngine, max_batch: int, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self._clock = clock
        # an engine that can leave logits on its device offers that too (service.engine.device_kit)
        names = getattr(engine, "run_names", engine.outputs)
        self._queues: dict[str, deque[_Image]] = {name: deque() for name in names}
        self._queued = dict.fromkeys(names, 0)
        self._seconds: dict[object, float] = {}

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self._queues)

    @property
    def queued(self) -> int:
        """Tiles waiting for a batch, every output together."""
        return sum(self._queued.values())

    @property
    def waiting(self) -> int:
        """Submissions whose rows are not ready yet (their futures unresolved)."""
        return sum(len(q) for q in self._queues.values())

    async def submit(self, tiles: np.ndarray, *, deadline: float = math.inf,
                     output: str = OUTPUT_NAME, admit_tiles: int | None = None) -> np.ndarray:
        """The rows of ``output`` for ``tiles``, once the batches holding them have run.

        Runs every batch the new tiles fill, here and now; ``deadline`` and ``admit_tiles`` are not
        used (a bulk run waits for its tiles and refuses none). Raises :class:`BatchFailed` when a
        batch with these tiles raised.
        """
        if output not in self._queues:
            raise ValueError(f"the engine has no output {output!r}; it has {', '.join(self._queues)}")
        if len(tiles) == 0:
            return tiles
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queues[output].append(_Image(tiles, future, asyncio.current_task()))
        self._queued[output] += len(tiles)
        while self._queued[output] >= self.max_batch:
            self._run_batch(output, self.max_batch)
        if not future.done():
            return await future
        # its own tiles completed it: let the images these batches finished before it go first,
        # so that images finish in the order they were submitted
        await asyncio.sleep(0)
        return future.result()

    def flush(self) -> None:
        """Run every tile still waiting (partial batches), one output after the other."""
        for output in self._queues:
            while self._queued[output]:
                self._run_batch(output, min(self.max_batch, self._queued[output]))

    def seconds(self, owner: object) -> float:
        """The run time of the batches that held tiles of ``owner``'s submissions, its tiles' share
        of each; taken (asked once, it is forgotten)."""
        return self._seconds.pop(owner, 0.0)

    def _run_batch(self, output: str, n: int) -> None:
        queue = self._queues[output]
        picks: list[tuple[_Image, int, int]] = []
        for image in queue:
            if n == 0:
                break
            start, stop = image.taken, min(len(image.tiles), image.taken + n)
            picks.append((image, start, stop))
            image.taken, n = stop, n - (stop - start)
        size = sum(stop - start for _, start, stop in picks)
        self._queued[output] -= size
        first, a, b = picks[0]
        batch = np.concatenate([im.tiles[i:j] for im, i, j in picks]) if len(picks) > 1 else first.tiles[a:b]
        t0 = self._clock()
        try:
            out = self.engine.run_outputs(batch, (output,))[output]
        except Exception as e:  # ORT failures have several types: fail these images, keep going
            self._drop(output, {im for im, _, _ in picks}, f"inference failed: {e}")
            return
        seconds = self._clock() - t0
        offset = 0
        for image, start, stop in picks:
            image.rows.append(out[offset:offset + stop - start])
            self._share(image, seconds * (stop - start) / size)
            offset += stop - start
        while queue and queue[0].taken == len(queue[0].tiles):
            image = queue.popleft()
            if image.future.done():  # its task was cancelled
                continue
            try:
                rows = join_rows(image.rows)
            except Exception as e:  # never leave an image waiting on rows that cannot be joined
                image.future.set_exception(BatchFailed(f"inference failed: {e}"))
                continue
            image.future.set_result(rows)

    def _drop(self, output: str, failed: set[_Image], error: str) -> None:
        queue = self._queues[output]
        self._queues[output] = deque(im for im in queue if im not in failed)
        for image in queue:
            if image in failed:
                self._queued[output] -= len(image.tiles) - image.taken
                if not image.future.done():
                    image.future.set_exception(BatchFailed(error))

    def _share(self, image: _Image, seconds: float) -> None:
        self._seconds[image.owner] = self._seconds.get(image.owner, 0.0) + seconds
