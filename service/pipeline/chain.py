"""The one road: decode -> plan -> run tiles -> crop or stitch -> encode, for every front end.

Every front end calls :class:`Chain` and hands it a :class:`~service.pipeline.runner.TileRunner`:

* the HTTP app (/v1 and /v2, through :mod:`service.api.inference`): :meth:`Chain.segment`
  with the cross-request batcher, CPU-heavy steps in the server's thread pool;
* ``pspnet-serve segment`` (locally and on Ray): :meth:`Chain.labels` with the offline tile
  pool, in the calling thread;
* ``evaluate``, scripts: :meth:`Chain.labels_now`, the same coroutine driven without an event
  loop over an :class:`~service.pipeline.runner.EngineRunner`.

Planning decides, once for all of them, whether the artifact's in-graph ``labels`` are the
answer (one window is the image: the stitch is a crop) or the logits are stitched by the
paper's procedure (:func:`service.protocol.stitch.stitch_labels`). Every step is timed in a
:class:`~service.pipeline.timings.Timings`; the run step is the stage ``batch`` on every face.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from service.codec.decode import DecodedImage, DecodeLimits, decode
from service.contract.artifact import LABELS_NAME, OUTPUT_NAME, ArtifactMeta
from service.contract.soft import Soft
from service.errors import BadRequest
from service.pipeline.params import InferenceParams
from service.pipeline.runner import DeviceStitching, EngineRunner, RowsStitcher, TileRunner
from service.pipeline.timings import Timings
from service.protocol.peak_bytes import stream_chunk
from service.protocol.plan import scale_tiles
from service.protocol.stitch import Stitcher
from service.protocol.windows import ScaleGeometry, count_tiles, plan_geometry

T = TypeVar("T")
Window = tuple[int, int, int, int]  # (top, left, height, width) of the image in its one tile


@dataclass(frozen=True)
class Upload:
    """One encoded image as a client sent it."""

    data: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class TileWork:
    """What one image asks of a runner: its windows, which output answers it, and how its tiles
    are cut (a scale at a time) and sent (:meth:`chunk` tiles a submission)."""

    image: np.ndarray  # the decoded RGB image
    geometry: tuple[ScaleGeometry, ...]
    tile: tuple[int, int]
    mean: tuple[float, float, float]
    output: str  # "labels": the graph's, cropped; "logits": stitched
    window: Window | None
    chunk: int  # tiles per submission: whole windows (a window and its mirror together)

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def num_tiles(self) -> int:
        return count_tiles(self.geometry)

    def tiles(self, geom: ScaleGeometry) -> np.ndarray:
        """The tiles of one scale (float32 ``(n, 3, tile_h, tile_w)``)."""
        return scale_tiles(self.image, geom, tile=self.tile, mean=self.mean)

    def crop(self, rows: np.ndarray) -> np.ndarray:
        """The label map (H, W) from the in-graph labels of the one tile."""
        assert self.window is not None
        top, left, h, w = self.window
        return np.ascontiguousarray(rows[0, top:top + h, left:left + w])


@dataclass(frozen=True)
class Segmented(Generic[T]):
    """What one pass of the chain produced for one request."""

    images: tuple[DecodedImage, ...]  # empty when the request sent pixels
    labels: tuple[np.ndarray, ...]  # one (H, W) map per image: uint8, uint16 beyond 256 classes
    tiles: int
    encoded: T
    timings: Timings
    soft: tuple[np.ndarray | None, ...] = ()  # per image, the soft output asked for (None: none)


#: the front end's encoder: (RGB images, their label maps, their soft outputs or None) -> its response body
Encode = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray | None]], T]


def one_window(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int]) -> Window | None:
    """Where the image lies in its one tile when the artifact's in-graph ``labels`` are the answer.

    One scale, one window, no mirror and no resize back (``whole`` on an image of the tile's
    size, ``slide`` on an image the base size leaves inside one tile): the official value of a
    pixel is that window's softmax, whose argmax is the argmax of the logits, which the graph
    computes (first class on ties). None for any other plan.
    """
    if len(geometry) != 1 or geometry[0].flip:
        return None
    geom = geometry[0]
    if geom.num_windows != 1 or geom.size != image_size:
        return None
    return (*geom.pad, *geom.size)


def prepare(meta: ArtifactMeta, rgb: np.ndarray, params: InferenceParams, outputs: Sequence[str]) -> TileWork:
    """The image's windows for these parameters, and which output of the runner answers it.

    Geometry that cannot be planned is a 400 (with how to serve it where that exists).
    """
    p = meta.protocol
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    try:
        geometry = plan_geometry(height, width, tile=meta.tile, mode=params.mode, scales=params.scales,
                                 flip=params.flip, base_size=p.base_size, stride_rate=p.stride_rate)
    except ValueError as e:  # e.g. a 1 x 40000 image at scale 0.5 shrinks to nothing
        # whole resizes any shape into the one tile: the way to serve a strip too thin to scale
        hint = ("" if params.mode == "whole"
                else "; mode=whole serves images of any shape (resized into one tile)")
        raise BadRequest(f"cannot segment a {width}x{height} image this way: {e}{hint}") from None
    window = one_window(geometry, (height, width)) if LABELS_NAME in outputs else None
    if window is None and OUTPUT_NAME not in outputs:
        raise BadRequest(f"{meta.name} gives labels only, so one window must be the image: mode=whole, or "
                         f"an image that mode=slide leaves inside one {meta.tile[1]}x{meta.tile[0]} tile; "
                         "no flip, no soft output")
    return TileWork(rgb, geometry, meta.tile, meta.mean, LABELS_NAME if window is not None else OUTPUT_NAME,
                    window, stream_chunk(meta.num_classes, meta.tile, params.flip))


class Chain:
    """decode -> plan -> run -> crop or stitch -> encode for one artifact, with fixed decode limits."""

    def __init__(self, meta: ArtifactMeta, limits: DecodeLimits,
                 device: DeviceStitching | None = None) -> None:
        self.meta = meta
        self.limits = limits
        self.device = device  # stitchers on the engine's device, when its runner leaves logits there

    async def labels(self, rgb: np.ndarray, params: InferenceParams, *, runner: TileRunner,
                     cpu: Executor | None = None, deadline: float = math.inf,
                     timings: Timings | None = None) -> tuple[np.ndarray, int]:
        """Label map (H, W) of a decoded image and the number of tiles it took.

        ``cpu`` runs the planning and stitching (None: this thread); ``runner`` the tiles, by
        ``deadline`` (the event loop's clock).
        """
        labels, _, tiles = await self.stitched(rgb, params, runner=runner, cpu=cpu, deadline=deadline,
                                               timings=timings)
        return labels, tiles

    async def stitched(self, rgb: np.ndarray, params: InferenceParams, *, runner: TileRunner,
                       cpu: Executor | None = None, deadline: float = math.inf,
                       timings: Timings | None = None,
                       soft: Soft | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
        """:meth:`labels`, with the soft output ``soft`` (None: none) of the same stitch.

        Stitched requests stream: a scale's tiles are cut when its turn comes and go to the runner
        :attr:`TileWork.chunk` at a time; each chunk's logits are folded into the
        :class:`~service.protocol.stitch.Stitcher` and dropped, so a request holds one chunk of
        logits, never all of them (admission weighs all its tiles at the first chunk: the rest
        follow without being refused). A soft output needs the logits: never the in-graph labels.
        """
        timings = Timings() if timings is None else timings
        outputs = runner.outputs if soft is None else tuple(o for o in runner.outputs if o != LABELS_NAME)
        with timings.stage("plan"):  # window geometry from sizes alone: no thread hop for it
            work = prepare(self.meta, rgb, params, outputs)
        if work.window is not None:
            tiles = await _in(cpu, timings, "plan", work.tiles, work.geometry[0])
            with timings.stage("batch"):
                rows = await runner.submit(tiles, deadline=deadline, output=work.output)
            with timings.stage("stitch"):  # a crop of one tile's ids needs no thread
                return work.crop(rows), None, work.num_tiles
        stitcher, output = self._stitcher(work, runner)
        try:
            admit: int | None = work.num_tiles
            for geom in work.geometry:
                tiles = await _in(cpu, timings, "plan", work.tiles, geom)
                for a in range(0, len(tiles), work.chunk):
                    with timings.stage("batch"):
                        rows = await runner.submit(tiles[a:a + work.chunk], deadline=deadline, output=output,
                                                   admit_tiles=admit)
                    admit = 0
                    await _in(cpu, timings, "stitch", stitcher.add, rows, geom.first + a)
                    del rows  # before the next chunk's arrive: one chunk of logits alive
                del tiles
                if stitcher.route != "lone":  # one window has nothing to fold
                    await _in(cpu, timings, "stitch", stitcher.fold)  # without a chunk's logits beside it
            labels = await _in(cpu, timings, "stitch", stitcher.labels)
            values = None if soft is None else await _in(cpu, timings, "stitch", stitcher.soft, soft, labels)
        finally:
            stitcher.close()
        return labels, values, work.num_tiles

    def _stitcher(self, work: TileWork, runner: TileRunner) -> tuple[RowsStitcher, str]:
        """The request's stitcher and the runner output it takes: on the engine's device when the runner
        can leave logits there and the request fits the device now, else the exact host stitch."""
        classes = self.meta.num_classes
        if self.device is not None and self.device.output in runner.outputs:
            on_device = self.device.stitcher(work.geometry, work.image_size, classes, work.tile)
            if on_device is not None:
                return on_device, self.device.output
        return Stitcher(work.geometry, work.image_size, classes, work.tile), OUTPUT_NAME

    async def segment(self, images: Sequence[Upload] | np.ndarray, params: InferenceParams,
                      encode: Encode[T], *, runner: TileRunner, cpu: Executor | None = None,
                      deadline: float = math.inf, timings: Timings | None = None,
                      soft: Soft | None = None) -> Segmented[T]:
        """Every step for the images of one request: uploads are decoded (an array ``(N, H, W, 3)``
        is pixels already), which must share one size when there are several; every image's tiles
        go to the runner at once, so they share batches; ``encode`` makes the response body.

        ``timings`` (a fresh one if None) is filled as the stages finish, so a caller that
        times out still sees how far the request got.
        """
        timings = Timings() if timings is None else timings
        decoded: tuple[DecodedImage, ...] = ()
        if isinstance(images, np.ndarray):
            rgbs = [np.ascontiguousarray(rgb) for rgb in images]
        else:
            with timings.stage("decode"):
                decoded = tuple(await asyncio.gather(*(
                    _call(cpu, decode, u.data, u.content_type, self.limits) for u in images)))
            rgbs = [d.rgb for d in decoded]
            _same_size([rgb.shape[:2] for rgb in rgbs])
        results = await asyncio.gather(*(self.stitched(rgb, params, runner=runner, cpu=cpu, deadline=deadline,
                                                       timings=timings, soft=soft) for rgb in rgbs))
        labels = tuple(lab for lab, _, _ in results)
        softs = tuple(values for _, values, _ in results)
        encoded = await _in(cpu, timings, "encode", encode, rgbs, labels, softs)
        return Segmented(decoded, labels, sum(n for _, _, n in results), encoded, timings, softs)

    def labels_now(self, rgb: np.ndarray, params: InferenceParams, *,
                   runner: EngineRunner) -> tuple[np.ndarray, int]:
        """:meth:`labels` in this thread, without an event loop (``evaluate``, scripts, tests)."""
        return run_now(self.labels(rgb, params, runner=runner))


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (no thread pool, a runner that answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the chain waited on something: run it on an event loop")


def _same_size(sizes: list[tuple[int, int]]) -> None:
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sizes)
        raise BadRequest(f"the images of one request must share one size; got {listed}")


async def _call(cpu: Executor | None, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in ``cpu``, or in this thread when it is None."""
    if cpu is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(cpu, fn, *args)


async def _in(cpu: Executor | None, timings: Timings, stage: str, fn: Callable[..., T], *args: object) -> T:
    """:func:`_call`, its wall time added to ``stage``."""
    with timings.stage(stage):
        return await _call(cpu, fn, *args)
