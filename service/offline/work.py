"""The work of ``pspnet-serve segment`` on decoded images, the same with and without Ray.

:func:`decode_input` turns an input's bytes into a :class:`Decoded` (the image, or why there
is none); a :class:`Segmenter` holds one engine and takes decoded images one at a time
(:meth:`Segmenter.feed`), pooling the tiles of consecutive images into batches of
``max_batch`` (:class:`TilePool`), and as each image's tiles have all run it stitches, encodes
and writes that image's result (:func:`service.offline.manifest.atomic_write`) and returns its
manifest line. :meth:`Segmenter.flush` runs what is left. The steps are the serving chain's
(service.pipeline.chain: plan, run, stitch, the in-graph labels where one tile is the image;
service.codec.outputs: the formats); only the batching across images is this module's.

The plain command feeds every image of the run to one segmenter; with ``--ray`` each actor
holds one and feeds it the batches Ray Data hands it (service.offline.on_ray). Pooling never changes
a tile's result on the CPU (ONNX Runtime computes each batch row on its own), so both write
the same bytes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.codec.decode import DecodeLimits, decode
from service.codec.encode import class_summary
from service.codec.outputs import OutputOptions, encode_output
from service.codec.sniff import declared_size, sniff_format
from service.contract.artifact import ArtifactMeta
from service.engine.sessions import Engine, ProviderChoice
from service.errors import ServiceError
from service.offline.inputs import read_input
from service.offline.manifest import Record, atomic_write
from service.pipeline.chain import (
    Chain,
    Runner,
    crop_labels,
    graph_labels_window,
    labels_runner,
    make_plan,
    stitch,
)
from service.pipeline.params import InferenceParams
from service.protocol.plan import TilePlan


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


@dataclass
class _Waiting:
    key: int
    tiles: np.ndarray
    taken: int = 0
    rows: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Ran:
    """The rows of one image's tiles (None if its batch failed), and its share of the run time."""

    key: int
    rows: np.ndarray | None
    seconds: float
    error: str | None = None


class TilePool:
    """The tiles of successive images run together, ``max_batch`` at a time, in order.

    :meth:`add` queues an image's tiles and runs every full batch; :meth:`finish` runs the rest.
    Both return the images whose tiles have all run, each with its rows in order and its share of
    the run time (by tiles). A batch that raises fails every image with tiles in it, and their
    tiles not yet run are dropped. At most ``max_batch - 1`` tiles wait beyond the current image.
    """

    def __init__(self, run: Runner, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._run = run
        self._max = max_batch
        self._waiting: deque[_Waiting] = deque()
        self._queued = 0

    @property
    def queued(self) -> int:
        return self._queued

    def add(self, key: int, tiles: np.ndarray) -> list[Ran]:
        if len(tiles) == 0:
            return [Ran(key, tiles, 0.0)]
        self._waiting.append(_Waiting(key, tiles))
        self._queued += len(tiles)
        done: list[Ran] = []
        while self._queued >= self._max:
            done += self._run_batch(self._max)
        return done

    def finish(self) -> list[Ran]:
        done: list[Ran] = []
        while self._queued:
            done += self._run_batch(min(self._max, self._queued))
        return done

    def _run_batch(self, n: int) -> list[Ran]:
        picks: list[tuple[_Waiting, int, int]] = []
        for w in self._waiting:
            if n == 0:
                break
            start, stop = w.taken, min(len(w.tiles), w.taken + n)
            picks.append((w, start, stop))
            w.taken, n = stop, n - (stop - start)
        size = sum(stop - start for _, start, stop in picks)
        self._queued -= size
        batch = np.concatenate([w.tiles[a:b] for w, a, b in picks]) if len(picks) > 1 \
            else picks[0][0].tiles[picks[0][1]:picks[0][2]]
        t0 = time.perf_counter()
        try:
            out = self._run(batch)
        except Exception as e:  # ORT failures have several types: fail these images, keep going
            return self._drop({id(w) for w, _, _ in picks}, f"inference failed: {e}")
        seconds = time.perf_counter() - t0
        offset = 0
        for w, start, stop in picks:
            w.rows.append(out[offset:offset + stop - start])
            w.seconds += seconds * (stop - start) / size
            offset += stop - start
        done = []
        while self._waiting and self._waiting[0].taken == len(self._waiting[0].tiles):
            w = self._waiting.popleft()
            done.append(Ran(w.key, w.rows[0] if len(w.rows) == 1 else np.concatenate(w.rows), w.seconds))
        return done

    def _drop(self, failed: set[int], error: str) -> list[Ran]:
        dropped = [w for w in self._waiting if id(w) in failed]
        self._waiting = deque(w for w in self._waiting if id(w) not in failed)
        self._queued -= sum(len(w.tiles) - w.taken for w in dropped)
        return [Ran(w.key, None, w.seconds, error) for w in dropped]


@dataclass
class _Pending:
    decoded: Decoded
    plan: TilePlan
    window: tuple[int, int, int, int] | None
    seconds: float


class Segmenter:
    """One engine; decoded images in, written results and their manifest lines out."""

    def __init__(self, config: BulkConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine if engine is not None else Engine(
            config.model, provider=config.provider, intra_op_threads=config.threads, inter_op_threads=1,
            max_batch=config.max_batch)
        self.chain = Chain(self.engine.meta, config.limits)
        fetch_labels = labels_runner(self.engine)
        self._logits = TilePool(self.engine.run, config.max_batch)
        self._labels = TilePool(fetch_labels, config.max_batch) if fetch_labels is not None else None
        self._pending: dict[int, _Pending] = {}
        self._next = 0

    def feed(self, item: Decoded) -> list[Record]:
        """Queue one image; the lines of the images finished meanwhile (this one, if it failed)."""
        if item.rgb is None:
            return [item.failed()]
        t0 = time.perf_counter()
        try:
            plan = make_plan(self.chain.meta, item.rgb, self.config.params)
        except ServiceError as e:
            return [_failed_later(item, _reason(e), time.perf_counter() - t0)]
        key, self._next = self._next, self._next + 1
        window = graph_labels_window(plan) if self._labels is not None else None
        self._pending[key] = _Pending(item, plan, window, time.perf_counter() - t0)
        pool = self._labels if window is not None and self._labels is not None else self._logits
        return self._finish(pool.add(key, plan.tiles))

    def flush(self) -> list[Record]:
        """Run the tiles still queued; the lines of every image left."""
        done = self._logits.finish() + (self._labels.finish() if self._labels is not None else [])
        return self._finish(done)

    def _finish(self, ran: list[Ran]) -> list[Record]:
        return [self._write(self._pending.pop(r.key), r) for r in ran]

    def _write(self, p: _Pending, ran: Ran) -> Record:
        d = p.decoded
        t0 = time.perf_counter()
        if ran.rows is None:
            return _failed_later(d, ran.error or "inference failed", p.seconds + ran.seconds)
        assert d.rgb is not None
        try:
            labels = crop_labels(ran.rows, p.window) if p.window is not None else stitch(p.plan, ran.rows)
            encoded = encode_output(self.config.output, self.chain.meta, d.rgb, labels, self.config.options)
            atomic_write(self.config.out / d.job.output, encoded.body)
            classes = {str(c["id"]): c["fraction"]
                       for c in class_summary(labels, self.chain.meta.classes, self.chain.meta.palette)}
        except Exception as e:  # one image's failure is its manifest line, never the run's end
            return _failed_later(d, _reason(e), p.seconds + ran.seconds + time.perf_counter() - t0)
        seconds = d.seconds + p.seconds + ran.seconds + time.perf_counter() - t0
        return Record(d.job.source, d.job.output, "ok", d.width, d.height, round(seconds, 4), classes)


def segment_locally(config: BulkConfig, jobs: Sequence[Job],
                    engine: Engine | None = None) -> Iterator[Record]:
    """Every job in this process, read and decoded one after another; its line as each finishes."""
    segmenter = Segmenter(config, engine)
    for job in jobs:
        yield from segmenter.feed(decode_input(job, None, config.limits))
    yield from segmenter.flush()


def _failed_later(d: Decoded, error: str, seconds: float) -> Record:
    """The line of a decoded image that failed later on."""
    return Record(d.job.source, None, "error", d.width, d.height, round(d.seconds + seconds, 4), error=error)


def output_suffix(meta: ArtifactMeta, output: str, options: OutputOptions) -> str:
    """The file suffix results of ``output`` get, read from the format's own encoder (a 1x1 image)."""
    return encode_output(output, meta, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8),
                         options).suffix
