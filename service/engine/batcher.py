"""Cross-request tile batching: the queue, its workers and their lifecycle (docs/DESIGN.md "Service").

Every request arrives as ``T`` same-shape tiles and names the output it wants
(``logits``, or ``labels`` when the model has it). The tiles join one bounded FIFO
queue; each runner has a worker task that takes the next up to ``max_batch``
tiles, from however many requests, runs them through its runner in the runner's
own thread (never on the event loop), and hands each request its rows of its
output back. A request's tiles may span several batches, which may run at the
same time on different runners; a batch may mix requests, and fetches the union
of the outputs they want (a batch of label requests never fetches logits).

Runners: one or several (several ONNX Runtime sessions with fewer threads each,
:meth:`service.engine.sessions.Engine.runners`), each an :class:`OutputRunner`
``runner(tiles, names) -> {name: rows}`` with an ``outputs`` attribute; a plain
``runner(tiles) -> logits`` is accepted too and offers ``logits`` only.

Policy:
- A batch leaves as soon as ``max_batch`` tiles are queued, or ``max_wait_ms``
  after its oldest tile was queued, whichever comes first. Tiles that already
  waited behind a running batch leave at once.
- Admission is all or nothing, decided at once by :func:`service.engine.admission.admit`
  (too large for the queue ever -> 413, deadline passed -> 504, no room now in tiles or
  in time, or work ahead that would outlast the deadline -> 503 with the one
  Retry-After rule); after :meth:`TileBatcher.stop` began -> :class:`NotReady`
  (503, the process is going away).
- A request whose deadline passes gets :class:`DeadlineExceeded`; one whose
  awaiting task is cancelled (the client went away) re-raises the cancellation.
  Either way its tiles still queued are removed before they run.
- A batch whose runner raises fails the requests with tiles in it (and drops
  their remaining tiles); the worker goes on with the next batch.
- :meth:`TileBatcher.stop` with ``drain`` lets every worker finish the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.contract.artifact import OUTPUT_NAME, Tiles
from service.engine.admission import QueueLoad, Refusal, admit, room_now
from service.engine.runners import LogitsFn, LogitsOnly, OutputRunner, Part, Pending, Rows, run_batch
from service.errors import DeadlineExceeded, NotReady

log = logging.getLogger("service.batcher")  # the name log lines had

class BatchObserver(Protocol):
    """Metrics hooks (service.telemetry.metrics.Metrics implements them); called on the event loop."""

    def on_batch(self, size: int, seconds: float) -> None: ...
    def on_batch_failed(self, size: int, error: BaseException) -> None: ...
    def on_drop(self, reason: str, tiles: int) -> None: ...
    def on_reject(self, reason: str) -> None: ...
    def on_queue(self, depth: int) -> None: ...


@dataclass
class BatcherStats:
    """Running totals, for tests and debugging (metrics go through the observer)."""

    batches: int = 0
    tiles_run: int = 0
    failed_batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)  # size -> number of batches
    runner_batches: Counter[int] = field(default_factory=Counter)  # runner index -> batches run
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> tiles removed unrun
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> requests refused


class TileBatcher:
    """``runner``: one runner or a sequence of them, run concurrently (one worker and thread each)."""

    def __init__(self, runner: LogitsFn | OutputRunner | Sequence[LogitsFn | OutputRunner], *, max_batch: int,
                 max_wait_ms: float, max_queue_tiles: int, max_queue_delay_s: float = math.inf,
                 tile_shape: tuple[int, int, int] | None = None,
                 observer: BatchObserver | None = None) -> None:
        if max_batch < 1 or max_queue_tiles < 1 or max_wait_ms < 0 or max_queue_delay_s <= 0:
            raise ValueError("need max_batch >= 1, max_queue_tiles >= 1, max_wait_ms >= 0 "
                             "and max_queue_delay_s > 0")
        given = list(runner) if isinstance(runner, Sequence) else [runner]
        if not given:
            raise ValueError("need at least one runner")
        self._runners: list[OutputRunner] = [r if isinstance(r, OutputRunner) else LogitsOnly(r)
                                             for r in given]
        #: the outputs requests may ask for: what every runner offers
        self.outputs: tuple[str, ...] = tuple(self._runners[0].outputs)
        if any(tuple(r.outputs) != self.outputs for r in self._runners):
            raise ValueError(f"runners offer different outputs: {[tuple(r.outputs) for r in self._runners]}")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue_tiles = max_queue_tiles
        self.max_queue_delay = max_queue_delay_s
        self.tile_shape = tile_shape  # (3, H, W) when known: a wrong shape is refused, not run
        self._observer = observer
        self.stats = BatcherStats()
        self._queue: deque[Pending] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._inflight: dict[int, list[Part]] = {}  # runner index -> the batch it runs
        self._closing = False
        self._workers: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._out_lock = threading.Lock()  # runner threads allocating one request's output
        self._sec_per_tile: float | None = None  # moving average of one runner's batch seconds / size

    # -- public ----------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Tiles queued and not yet taken into a batch."""
        return self._queued

    @property
    def runners(self) -> int:
        return len(self._runners)

    @property
    def seconds_per_tile(self) -> float | None:
        """Recent seconds per tile of one runner (a moving average); None before the first batch."""
        return self._sec_per_tile

    @property
    def accepting(self) -> bool:
        """Started, not stopping, and every worker alive (a dead worker is a bug: refuse, loudly)."""
        return bool(self._workers) and not any(w.done() for w in self._workers) and not self._closing

    async def start(self) -> None:
        if self._workers:
            raise RuntimeError("batcher already started")
        for i in range(len(self._runners)):
            # One thread per runner: a runner (an ORT session with IO binding) sees one caller at a time.
            self._executors.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pspnet-batch-{i}"))
            worker = asyncio.create_task(self._work(i), name=f"pspnet-batcher-{i}")
            worker.add_done_callback(_log_worker_exit)
            self._workers.append(worker)

    async def stop(self, drain: bool = True) -> None:
        """Refuse new work; with ``drain`` finish everything accepted, else fail it (NotReady)."""
        self._closing = True
        self._wake.set()
        if not drain:
            running = [p[0] for parts in self._inflight.values() for p in parts]
            for r in running + list(self._queue):
                self._fail(r, NotReady("the server is shutting down"), "shutdown")
            for w in self._workers:
                w.cancel()
        # a worker that died has been logged (_log_worker_exit); the others are awaited regardless
        await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in self._executors:
            # without drain a batch may still be running: let it finish in the background
            executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, tiles: Tiles, *, deadline: float, output: str = OUTPUT_NAME,
                     admit_tiles: int | None = None) -> Rows:
        """Rows of ``output`` for ``tiles`` ``(T, 3, H, W)``, in order, by ``deadline`` (``loop.time()``).

        ``output`` is one of :attr:`outputs`: ``logits`` ``(T, C, H, W)`` float32, or ``labels``
        ``(T, H, W)`` when the runners offer it. ``admit_tiles``: what admission weighs, None for
        ``T``; a request streamed in chunks passes its total with the first and 0 with the others,
        which are never refused for room or time (only when the batcher is stopping).
        """
        loop = asyncio.get_running_loop()
        n = self._check(tiles)
        if output not in self.outputs:
            raise ValueError(f"output {output!r} is not one the runners offer ({', '.join(self.outputs)})")
        if not self.accepting:
            self._reject("stopping")
            raise NotReady("the batcher is not running or is shutting down")
        weigh = n if admit_tiles is None else admit_tiles
        if weigh:
            self._refuse(admit(self._load(), weigh, now=loop.time(), deadline=deadline))
        r = Pending(tiles, output, loop.create_future(), loop.time(), deadline)
        self._queue.append(r)
        self._queued += n
        self._queue_changed()
        self._wake.set()
        try:
            async with asyncio.timeout_at(deadline):
                return await r.future
        except TimeoutError:
            self._drop(r, "deadline")
            raise DeadlineExceeded("the deadline passed while the tiles waited or ran") from None
        except asyncio.CancelledError:
            self._drop(r, _end_reason(r, loop.time()))
            raise

    def check_room(self) -> None:
        """Raise :class:`Overloaded` when :meth:`submit` would refuse even a one-tile request now.

        For the caller to run before the work that precedes submit (decoding, tiling): under
        overload that work would be spent on requests refused anyway, on the same cores the model
        needs (benchmarks/reliability/overload.py measured about 20% of capacity lost to it).
        """
        self._refuse(room_now(self._load()))

    def retry_after(self) -> int:
        """The Retry-After of a 503 now: :func:`service.engine.admission.retry_after_seconds`, 1..60."""
        return self._load().retry_after()

    # -- admission and bookkeeping ---------------------------------------------------------------

    def _load(self) -> QueueLoad:
        return QueueLoad(self._queued, self.max_queue_tiles, self.max_queue_delay, self._sec_per_tile,
                         len(self._runners))

    def _refuse(self, refusal: Refusal | None) -> None:
        """Count and raise what admission refused; nothing if it admitted."""
        if refusal is not None:
            self._reject(refusal.reason)
            raise refusal.error

    def _check(self, tiles: Tiles) -> int:
        if not (isinstance(tiles, np.ndarray) and tiles.dtype == np.float32 and tiles.ndim == 4
                and len(tiles) > 0):
            raise ValueError("tiles must be a non-empty float32 (T, 3, H, W) array")
        if self.tile_shape is not None and tiles.shape[1:] != self.tile_shape:
            raise ValueError(f"tiles must be (T, {', '.join(map(str, self.tile_shape))}), got {tiles.shape}")
        return len(tiles)

    def _observe(self, call: Callable[[BatchObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:  # metrics must never take the batcher down
            log.exception("batch observer failed")

    def _queue_changed(self) -> None:
        depth = self._queued
        self._observe(lambda o: o.on_queue(depth))

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] += 1
        self._observe(lambda o: o.on_reject(reason))

    def _drop(self, r: Pending, reason: str) -> None:
        """Take ``r``'s not-yet-batched tiles out of the queue (the request is over)."""
        left = r.total - r.next
        if left == 0:
            return
        self._queue.remove(r)
        r.next = r.total
        self._queued -= left
        self.stats.dropped[reason] += left
        self._observe(lambda o: o.on_drop(reason, left))
        self._queue_changed()

    def _fail(self, r: Pending, error: BaseException, reason: str) -> None:
        if not r.future.done():
            r.future.set_exception(error)
        self._drop(r, reason)

    # -- the worker --------------------------------------------------------------------------------

    async def _work(self, runner: int) -> None:
        while True:
            parts = await self._next_batch()
            if parts is None:
                return
            if not parts:  # every queued request was cancelled while we waited
                continue
            self._inflight[runner] = parts
            try:
                await self._run(runner, parts)
            finally:
                del self._inflight[runner]

    async def _next_batch(self) -> list[Part] | None:
        """Wait for a batch's worth of tiles, or for the oldest one's max_wait to pass.

        Idle workers all wait here; whichever resumes first takes the batch (all on the event loop,
        so taking is atomic), and the others find the queue shorter or empty and wait on.
        """
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._queued >= self.max_batch or self._closing:
                break  # full, or draining: nothing more is coming
            remaining = self._queue[0].enqueued_at + self.max_wait - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
        return self._take()

    def _take(self) -> list[Part]:
        now = asyncio.get_running_loop().time()
        parts: list[Part] = []
        need = self.max_batch
        while need and self._queue:
            r = self._queue[0]
            if r.dead:  # cancelled a moment ago; its own handler has not run yet
                self._drop(r, _end_reason(r, now))
                continue
            k = min(need, r.total - r.next)
            parts.append((r, r.next, r.next + k))
            r.next += k
            need -= k
            if r.next == r.total:
                self._queue.popleft()
        self._queued -= self.max_batch - need
        self._queue_changed()
        return parts

    async def _run(self, runner: int, parts: list[Part]) -> None:
        loop = asyncio.get_running_loop()
        size = sum(b - a for _, a, b in parts)
        # the union of what the batch's requests want, in the runners' order
        names = tuple(n for n in self.outputs if any(r.output == n for r, _, _ in parts))
        try:
            seconds = await loop.run_in_executor(self._executors[runner], run_batch,
                                                 self._runners[runner], names, parts, self._out_lock)
        except Exception as e:  # CancelledError is not an Exception: stop(drain=False) passes through
            self.stats.failed_batches += 1
            log.error("batch of %d tiles failed: %r", size, e, exc_info=e)
            failure: BaseException = e  # the except block's name is gone after it: keep the error
            self._observe(lambda o: o.on_batch_failed(size, failure))
            for r, _, _ in parts:  # a request appears at most once in a batch
                self._fail(r, e, "failed")
            return
        self.stats.batches += 1
        self.stats.tiles_run += size
        self.stats.batch_sizes[size] += 1
        self.stats.runner_batches[runner] += 1
        # a short moving average of seconds per tile: recent enough to follow load, smooth enough
        # that one slow batch does not swing Retry-After
        per_tile = seconds / size
        prev = self._sec_per_tile
        self._sec_per_tile = per_tile if prev is None else 0.8 * prev + 0.2 * per_tile
        self._observe(lambda o: o.on_batch(size, seconds))
        for r, a, b in parts:
            r.done += b - a
            if r.done == r.total and not r.future.done():
                assert r.out is not None
                r.future.set_result(r.out)


def _end_reason(r: Pending, now: float) -> str:
    # an outer timeout on the same deadline cancels rather than times out: tell by the clock
    return "deadline" if now >= r.deadline else "cancelled"


def _log_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("batch worker died", exc_info=task.exception())
