"""One served model at run time: its engine, batcher, health and statistics.

:func:`start_model` builds it (the engine in a thread), :meth:`ModelRuntime.warm_up`
readies it, :meth:`ModelRuntime.stop` drains it. Health: a model whose batches
fail ``max_failures`` times in a row stops being ready (:attr:`ModelHealth.failing`)
and says why; :meth:`ModelRuntime.probe` runs one tile through the engine and
restores it when that succeeds (the app calls it every ``probe_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.contract.artifact import ArtifactMeta
from service.contract.description import sidecar_path
from service.engine.batcher import TileBatcher
from service.engine.device_kit import DeviceBudget
from service.engine.device_stitch import DeviceStitching
from service.engine.sessions import Engine
from service.repository.directory import ModelEntry
from service.repository.stats import ModelStats
from service.repository.workers import WorkerBoard, version_key
from service.settings import Settings
from service.telemetry.metrics import Metrics

log = logging.getLogger("pspnet.runtime")


@dataclass
class ModelHealth:
    """Consecutive batch failures of one model against the limit."""

    max_failures: int
    consecutive: int = 0
    last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self.consecutive >= self.max_failures

    def succeeded(self) -> None:
        self.consecutive = 0

    def failed(self, error: BaseException) -> None:
        self.consecutive += 1
        self.last_error = f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class FileIdentity:
    """What a reload compares to tell a changed artifact (or description file) from an unchanged one."""

    path: Path
    size: int
    mtime_ns: int
    sidecar: tuple[int, int] | None = None  # size and mtime of its description file, if it has one

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = path.stat()
        try:
            side = sidecar_path(path).stat()
        except FileNotFoundError:
            return cls(path.resolve(), st.st_size, st.st_mtime_ns)
        return cls(path.resolve(), st.st_size, st.st_mtime_ns, (side.st_size, side.st_mtime_ns))


@dataclass
class ModelRuntime:
    entry: ModelEntry
    identity: FileIdentity
    engine: Engine
    batcher: TileBatcher
    health: ModelHealth
    stats: ModelStats = field(default_factory=ModelStats)
    device: DeviceStitching | None = None  # stitchers on the engine's device (engine/device_stitch.py)
    warmed: bool = False
    warmup_seconds: float | None = None
    accepting: bool = True  # False once removed or replaced: it drains, takes nothing new
    reload_error: str | None = None  # its file is broken now; this (older) version keeps serving
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        """This version of the model: its name and file (what a reload compares)."""
        i = self.identity
        return version_key(self.name, i.path, i.size, i.mtime_ns)

    @property
    def meta(self) -> ArtifactMeta:
        return self.engine.meta

    @property
    def stitch(self) -> str:
        """Where its stitched requests are stitched: the device kit's device, or ``host``."""
        return "host" if self.device is None else self.device.kit.device

    @property
    def ready(self) -> bool:
        return self.warmed and self.accepting and not self.health.failing

    def not_ready_reason(self) -> str | None:
        if not self.accepting:
            return "being removed or replaced"
        if self.health.failing:
            return (f"{self.health.consecutive} batches failed in a row (last: {self.health.last_error}); "
                    "a probe batch restores it when it succeeds")
        if not self.warmed:
            return "loading or warming up"
        return None

    async def warm_up(self, settings: Settings) -> None:
        t0 = time.perf_counter()
        if settings.warmup:
            await asyncio.to_thread(self.engine.warmup, range(1, settings.max_batch + 1))
        self.warmup_seconds = time.perf_counter() - t0
        self.warmed = True
        log.info("model %s ready: provider %s, warm-up %.2f s", self.name, self.engine.provider,
                 self.warmup_seconds)

    async def probe(self) -> bool:
        """One grey tile through the engine; a success clears the failure count."""
        h, w = self.engine.tile
        tile = np.full((1, 3, h, w), 128.0, dtype=np.float32)
        try:
            await asyncio.to_thread(self.engine.run_outputs, tile, self.engine.outputs)
        except Exception as e:
            self.health.failed(e)
            log.warning("model %s: probe batch failed: %s", self.name, self.health.last_error)
            return False
        log.info("model %s: probe batch succeeded, serving again", self.name)
        self.health.succeeded()
        return True

    @contextlib.contextmanager
    def admitted(self) -> Iterator[ModelRuntime]:
        """A request on this model, from its first check to its answer: counted, so that a
        replaced or removed model drains what it accepted before its batcher stops."""
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1

    async def stop(self, *, drain: bool = True, grace_s: float = 60.0) -> None:
        """Take nothing new; with ``drain`` wait (at most ``grace_s``) for requests in flight."""
        self.accepting = False
        if drain:
            end = time.monotonic() + grace_s
            while self.in_flight and time.monotonic() < end:
                await asyncio.sleep(0.05)
        await self.batcher.stop(drain=drain)


async def start_model(entry: ModelEntry, settings: Settings, metrics: Metrics,
                      board: WorkerBoard | None = None, device: DeviceBudget | None = None) -> ModelRuntime:
    """Load ``entry``'s engine (in a thread) and start its batcher; warm-up is the caller's next step.
    ``board``: with several workers, the statistics are this worker's row of the version's folder.
    ``device``: the server's bound on device stitches (None: one of this model's own)."""
    identity = FileIdentity.of(entry.path)
    engine = await asyncio.to_thread(
        Engine, entry.path, provider=settings.provider, intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads, max_batch=settings.max_batch, spin=settings.ort_spin,
        sessions=settings.sessions, device_stitch=settings.device_stitch)
    health = ModelHealth(settings.max_consecutive_failures)
    stats = ModelStats(None if board is None else board.stats_folder(
        version_key(entry.name, identity.path, identity.size, identity.mtime_ns)))

    def on_batch(size: int, seconds: float) -> None:
        health.succeeded()
        stats.batch(size, seconds)

    def on_failure(size: int, error: BaseException) -> None:
        health.failed(error)
        if health.failing:
            log.error("model %s is failing: %d batches in a row (last: %s)", entry.name, health.consecutive,
                      health.last_error)

    observer = metrics.for_model(engine.meta.name, on_batch=on_batch, on_failure=on_failure)
    batcher = TileBatcher(engine.runners(), max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                          max_queue_tiles=settings.max_queue_tiles,
                          max_queue_delay_s=settings.max_queue_delay_s, observer=observer,
                          tile_shape=(3, *engine.tile))
    await batcher.start()
    m = engine.meta
    metrics.set_model_info(m.name, dataset=m.dataset, provider=engine.provider,
                           tile=f"{m.tile[0]}x{m.tile[1]}", classes=str(m.num_classes))
    kit = engine.device_kit
    stitching = None if kit is None else DeviceStitching(
        kit, device if device is not None else DeviceBudget(settings.device_stitch_mb << 20),
        on_route=lambda route: metrics.stitches.labels(model=entry.name, route=route).inc())
    return ModelRuntime(entry, identity, engine, batcher, health, stats, stitching)
