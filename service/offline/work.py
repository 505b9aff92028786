"""The work of ``pspnet-serve segment`` on decoded images, the same with and without Ray.

:func:`decode_input` turns an input's bytes into a :class:`Decoded` (the image, or why there
is none); a :class:`Segmenter` holds one engine and its :class:`~service.offline.pool.TilePool`
and drives the serving chain (service.pipeline.chain: plan, run, crop the in-graph labels or
stitch the logits) over decoded images in order (:meth:`Segmenter.segment`): the tiles of
consecutive images share batches of ``max_batch``, and as each image's tiles have all run its
result is encoded (service.codec.outputs), written (:func:`service.offline.manifest.atomic_write`)
and its manifest line handed on. Only the batching across images (the pool) and the files are
this package's; the chain is the server's.

The plain command feeds every image of the run to one segmenter; with ``--ray`` each actor
holds one and feeds it the batches Ray Data hands it (service.offline.on_ray). Pooling never changes
a tile's result on the CPU (ONNX Runtime computes each batch row on its own), so both write
the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.codec.decode import DecodeLimits, decode
from service.codec.encode import class_summary
from service.codec.outputs import OutputOptions, encode_output, soft_request
from service.codec.sniff import declared_size, sniff_format
from service.contract.artifact import ArtifactMeta
from service.engine.device_kit import DeviceBudget, DeviceStitchChoice
from service.engine.device_stitch import DeviceStitching
from service.engine.sessions import Engine, ProviderChoice
from service.errors import ServiceError
from service.offline.inputs import read_input
from service.offline.manifest import Record, atomic_write
from service.offline.pool import BatchFailed, TilePool
from service.pipeline.chain import Chain
from service.pipeline.params import InferenceParams
from service.pipeline.timings import Timings


@dataclass(frozen=True)
class Job:
    """One input to segment: where to read it, and where its result goes under ``out``."""

    source: str
    location: str
    output: str


@dataclass(frozen=True)
class BulkConfig:
    """Everything a segmenter needs, picklable: the plain command builds one, Ray ships it to actors."""

    model: Path
    params: InferenceParams
    output: str
    options: OutputOptions
    out: Path
    max_pixels: int
    provider: ProviderChoice = "auto"
    threads: int = 0
    max_batch: int = 4
    device_stitch: DeviceStitchChoice = "auto"  # on CUDA: the stitch on the GPU (engine/device_stitch.py)
    device_stitch_mb: int = 4096

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=1 << 31, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class Decoded:
    """An input after reading and decoding: the RGB frame, or the reason there is none."""

    job: Job
    rgb: np.ndarray | None
    width: int | None
    height: int | None
    seconds: float
    error: str | None = None

    def failed(self) -> Record:
        return Record(self.job.source, None, "error", self.width, self.height, round(self.seconds, 4),
                      error=self.error)


def decode_input(job: Job, data: bytes | None, limits: DecodeLimits) -> Decoded:
    """Read (unless ``data`` is given) and decode ``job``'s image; every failure becomes its ``error``."""
    t0 = time.perf_counter()
    try:
        if data is None:
            data = read_input(job.location)
        image = decode(data, None, limits)
    except (ServiceError, OSError, ValueError) as e:
        width, height = _declared(data) or (None, None)
        return Decoded(job, None, width, height, time.perf_counter() - t0, _reason(e))
    return Decoded(job, image.rgb, image.width, image.height, time.perf_counter() - t0)


def _declared(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) from the header, for the record of an image that was refused."""
    if not data:
        return None
    fmt = sniff_format(data)
    return declared_size(data, fmt) if fmt is not None else None


def _reason(e: BaseException) -> str:
    if isinstance(e, ServiceError) and e.detail:
        return e.detail
    if isinstance(e, OSError | ServiceError):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"  # anything else: say what it was


class Segmenter:
    """One engine and its tile pool; decoded images in, written results and their manifest lines out.

    :meth:`segment` is the driver: each decoded image becomes an asyncio task running
    ``chain.stitched`` over the pool, which plans it and queues its tiles (running the batches they
    fill, inline); the images those batches finished are encoded, written and recorded, and their
    lines handed on as they finish; at the end the pool is flushed. :meth:`records` is the same
    for callers without an event loop, streamed.
    """

    def __init__(self, config: BulkConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine if engine is not None else Engine(
            config.model, provider=config.provider, intra_op_threads=config.threads, inter_op_threads=1,
            max_batch=config.max_batch, device_stitch=config.device_stitch)
        kit = self.engine.device_kit
        self.chain = Chain(self.engine.meta, config.limits, device=None if kit is None else DeviceStitching(
            kit, DeviceBudget(config.device_stitch_mb << 20)))
        #: what a soft format (confidence, probability) writes in place of the labels
        self.soft = soft_request(config.output, self.engine.meta, config.options)
        self.pool = TilePool(self.engine, config.max_batch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._live = 0  # images started and not yet recorded
        self._done: list[Record] = []  # their lines, in the order they finished

    async def segment(self, items: Iterable[Decoded]) -> AsyncIterator[Record]:
        """Every item's line, as each finishes (one that failed to decode or plan at once)."""
        for item in items:
            if item.rgb is None:
                yield item.failed()
                continue
            self._live += 1
            task = asyncio.create_task(self._one(item, item.rgb))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await self._settle()
            for record in self._take():
                yield record
        while self._live:  # a streamed image queues its next chunk after a flush ran its last
            self.pool.flush()
            await self._settle()
            for record in self._take():
                yield record

    def records(self, items: Iterable[Decoded]) -> Iterator[Record]:
        """:meth:`segment` on an event loop of its own, each line handed on as it finishes."""
        lines = self.segment(items)
        with asyncio.Runner() as runner:
            while (record := runner.run(_next(lines))) is not None:
                yield record

    async def _settle(self) -> None:
        """Let every started image run until it is recorded or waits on the pool for its rows.

        Nothing else suspends (planning, stitching and the batches run inline), so this ends.
        """
        while self._live > self.pool.waiting:
            await asyncio.sleep(0)

    def _take(self) -> list[Record]:
        done, self._done = self._done, []
        return done

    async def _one(self, d: Decoded, rgb: np.ndarray) -> None:
        """Label, encode, write and record one image; any failure is its line, never the run's end."""
        timings = Timings()
        try:
            try:
                labels, values, _ = await self.chain.stitched(rgb, self.config.params, runner=self.pool,
                                                              timings=timings, soft=self.soft)
            finally:  # the time of its own steps (not the wait for the batch) and its share of the batches
                spent = sum(s for stage, s in timings.stages.items() if stage != "batch")
                spent += self.pool.seconds(asyncio.current_task())
            self._done.append(self._write(d, rgb, labels, values, spent))
        except BatchFailed as e:
            self._done.append(_failed_later(d, str(e), spent))
        except Exception as e:
            self._done.append(_failed_later(d, _reason(e), spent))
        finally:
            self._live -= 1

    def _write(self, d: Decoded, rgb: np.ndarray, labels: np.ndarray, values: np.ndarray | None,
               spent: float) -> Record:
        t0 = time.perf_counter()
        try:
            written = labels if values is None else values  # a soft format writes its probabilities
            encoded = encode_output(self.config.output, self.chain.meta, rgb, written, self.config.options)
            atomic_write(self.config.out / d.job.output, encoded.body)
            classes = {str(c["id"]): c["fraction"]
                       for c in class_summary(labels, self.chain.meta.classes, self.chain.meta.palette)}
        except Exception as e:  # one image's failure is its manifest line, never the run's end
            return _failed_later(d, _reason(e), spent + time.perf_counter() - t0)
        seconds = d.seconds + spent + time.perf_counter() - t0
        return Record(d.job.source, d.job.output, "ok", d.width, d.height, round(seconds, 4), classes)


async def _next(lines: AsyncIterator[Record]) -> Record | None:
    return await anext(lines, None)


def segment_locally(config: BulkConfig, jobs: Sequence[Job],
                    engine: Engine | None = None) -> Iterator[Record]:
    """Every job in this process, read and decoded one after another; its line as each finishes."""
    yield from Segmenter(config, engine).records(decode_input(job, None, config.limits) for job in jobs)


def _failed_later(d: Decoded, error: str, seconds: float) -> Record:
    """The line of a decoded image that failed later on."""
    return Record(d.job.source, None, "error", d.width, d.height, round(d.seconds + seconds, 4), error=error)


def output_suffix(meta: ArtifactMeta, output: str, options: OutputOptions) -> str:
    """The file suffix results of ``output`` get, read from the format's own encoder (a 1x1 image)."""
    return encode_output(output, meta, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8),
                         options).suffix
