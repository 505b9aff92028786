"""The serving chain: decode -> plan -> run -> stitch -> encode, one object for every front end.

Each step is a small function tested on its own; :class:`Chain` strings them
together for one artifact, two ways:

* :meth:`Chain.segment` synchronously, tiles run on an engine in chunks of
  ``max_batch`` (``pspnet-serve segment``, ``evaluate``, scripts);
* :meth:`Chain.segment_batched` asynchronously, tiles through the cross-request
  batcher and CPU-heavy steps in an executor, never on the event loop (the
  HTTP app).

Both record the seconds of each stage in a :class:`Timings`. A new front end is
one call to one of them; a new output format is one entry of
:data:`service.codec.outputs.FORMATS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from service.codec.decode import NO_LIMITS, DecodedImage, DecodeLimits, decode
from service.codec.outputs import Encoded, OutputOptions, encode_output
from service.codec.sniff import declared_size, sniff_format
from service.contract.artifact import LABELS_NAME, ArtifactMeta
from service.errors import BadRequest
from service.pipeline.cost import request_peak_bytes
from service.pipeline.params import InferenceParams
from service.pipeline.timings import Timings
from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.stitch import stitch_labels
from service.protocol.windows import plan_geometry

Runner = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


# --- the steps -------------------------------------------------------------------------------------

def make_plan(meta: ArtifactMeta, image: np.ndarray, params: InferenceParams) -> TilePlan:
    """The image's tiles for these parameters; geometry it cannot be planned for is a 400."""
    p = meta.protocol
    try:
        return plan_tiles(image, tile=meta.tile, mode=params.mode, scales=params.scales, flip=params.flip,
                          base_size=p.base_size, stride_rate=p.stride_rate, mean=meta.mean)
    except ValueError as e:  # e.g. a 1 x 40000 image at scale 0.5 shrinks to nothing
        # whole resizes any shape into the one tile: the way to serve a strip too thin to scale
        hint = ("" if params.mode == "whole"
                else "; mode=whole serves images of any shape (resized into one tile)")
        size = f"{image.shape[1]}x{image.shape[0]}"
        raise BadRequest(f"cannot segment a {size} image this way: {e}{hint}") from None


def run_chunked(run: Runner, tiles: np.ndarray, max_batch: int) -> np.ndarray:
    """Logits of ``tiles``, run ``max_batch`` at a time."""
    outs = [run(tiles[i:i + max_batch]) for i in range(0, len(tiles), max_batch)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


def stitch(plan: TilePlan, logits: np.ndarray) -> np.ndarray:
    """Tile logits -> the label map of the original image (the official procedure's argmax)."""
    labels: np.ndarray = stitch_labels(plan, logits)
    return labels


class TileSubmitter(Protocol):
    """What the batched chain needs of the batcher (service.engine.batcher.TileBatcher)."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    async def submit(self, tiles: np.ndarray, *, deadline: float, output: str = ...) -> np.ndarray: ...


@dataclass(frozen=True)
class Segmentation:
    """What one pass of the chain produced."""

    image: DecodedImage
    labels: np.ndarray  # (H, W) uint8, uint16 beyond 256 classes
    tiles: int
    encoded: Encoded
    timings: Timings


def graph_labels_window(plan: TilePlan) -> tuple[int, int, int, int] | None:
    """Where the image lies in its one tile when the artifact's in-graph ``labels`` are the answer.

    One scale, one window, no mirror and no resize back (``whole`` on an image of the tile's
    size, ``slide`` on an image the base size leaves inside one tile): the official value of a
    pixel is that window's softmax, whose argmax is the argmax of the logits, which the graph
    computes (first class on ties). ``(top, left, height, width)``, or None for any other plan.
    """
    if len(plan.scales) != 1 or plan.flip:
        return None
    geom = plan.scales[0]
    if geom.num_windows != 1 or geom.size != plan.image_size:
        return None
    return (*geom.pad, *geom.size)


def crop_labels(labels: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The image's part of a one-tile label map ``(1, H, W)``, contiguous."""
    top, left, h, w = window
    return np.ascontiguousarray(labels[0, top:top + h, left:left + w])


class OutputsEngine(Protocol):
    """What :func:`labels_runner` needs of service.engine.sessions.Engine."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]: ...


def labels_runner(engine: OutputsEngine) -> Runner | None:
    """``tiles -> in-graph labels`` of an engine whose artifact has them; None otherwise."""
    if LABELS_NAME not in engine.outputs:
        return None

    def run(tiles: np.ndarray) -> np.ndarray:
        return engine.run_outputs(tiles, (LABELS_NAME,))[LABELS_NAME]

    return run


def labels_offline(meta: ArtifactMeta, run: Runner, image: np.ndarray, params: InferenceParams,
                   *, max_batch: int) -> np.ndarray:
    """Label map (H, W) for one RGB image, synchronously (scripts and tests that hold no Chain)."""
    labels, _ = Chain(meta, NO_LIMITS).labels(image, params, run=run, max_batch=max_batch)
    return labels


# --- the chain -------------------------------------------------------------------------------------

class Chain:
    """decode -> plan -> run -> stitch -> encode for one artifact, with fixed decode limits."""

    def __init__(self, meta: ArtifactMeta, limits: DecodeLimits) -> None:
        self.meta = meta
        self.limits = limits

    def peak_bytes(self, data: bytes, params: InferenceParams, output: str) -> int | None:
        """The most memory the request will hold, read from the image header before decoding.

        None when the header cannot be read or the geometry cannot be planned: decoding or planning
        then refuses the request with the right status. EXIF orientation may swap the sides, so both
        readings are costed and the larger kept.
        """
        fmt = sniff_format(data)
        size = declared_size(data, fmt) if fmt is not None else None
        if size is None or size[0] < 1 or size[1] < 1:
            return None
        costs = [self.peak_bytes_for(height, width, params, output, body_bytes=len(data))
                 for height, width in ((size[1], size[0]), (size[0], size[1]))]
        return None if None in costs else max(c for c in costs if c is not None)

    def peak_bytes_for(self, height: int, width: int, params: InferenceParams, output: str, *,
                       body_bytes: int = 0) -> int | None:
        """:meth:`peak_bytes` of an image of known size (decoded pixels sent as a tensor)."""
        p = self.meta.protocol
        try:
            geometry = plan_geometry(height, width, tile=self.meta.tile, mode=params.mode,
                                     scales=params.scales, flip=params.flip, base_size=p.base_size,
                                     stride_rate=p.stride_rate)
        except ValueError:
            return None
        return request_peak_bytes(height, width, geometry, num_classes=self.meta.num_classes,
                                  tile=self.meta.tile, output=output, body_bytes=body_bytes)

    # synchronous

    def segment(self, data: bytes, params: InferenceParams, output: str, options: OutputOptions, *,
                run: Runner, max_batch: int, run_labels: Runner | None = None,
                content_type: str | None = None) -> Segmentation:
        """Every step in this thread; tiles run on ``run`` ``max_batch`` at a time."""
        timings = Timings()
        with timings.stage("decode"):
            image = decode(data, content_type, self.limits)
        labels, tiles = self.labels(image.rgb, params, run=run, max_batch=max_batch, run_labels=run_labels,
                                    timings=timings)
        with timings.stage("encode"):
            encoded = encode_output(output, self.meta, image.rgb, labels, options)
        return Segmentation(image, labels, tiles, encoded, timings)

    def labels(self, rgb: np.ndarray, params: InferenceParams, *, run: Runner, max_batch: int,
               run_labels: Runner | None = None, timings: Timings | None = None) -> tuple[np.ndarray, int]:
        """Label map (H, W) of a decoded image and the number of tiles it took, synchronously.

        ``run_labels`` (:func:`labels_runner`) fetches the in-graph labels instead of the logits
        where they are the answer (:func:`graph_labels_window`).
        """
        timings = Timings() if timings is None else timings
        with timings.stage("plan"):
            plan = make_plan(self.meta, rgb, params)
        window = graph_labels_window(plan) if run_labels is not None else None
        if run_labels is not None and window is not None:
            with timings.stage("run"):
                ids = run_labels(plan.tiles)
            with timings.stage("stitch"):
                return crop_labels(ids, window), plan.num_tiles
        with timings.stage("run"):
            logits = run_chunked(run, plan.tiles, max_batch)
        with timings.stage("stitch"):
            labels = stitch(plan, logits)
        return labels, plan.num_tiles

    # through the batcher

    async def segment_batched(self, data: bytes, params: InferenceParams, output: str,
                              options: OutputOptions, *, batcher: TileSubmitter, executor: Executor,
                              deadline: float, content_type: str | None = None,
                              timings: Timings | None = None) -> Segmentation:
        """The same steps: CPU work in ``executor``, tiles through ``batcher`` by ``deadline``.

        ``timings`` (a fresh one if None) is filled as the stages finish, so a caller that
        times out still sees how far the request got.
        """
        timings = Timings() if timings is None else timings
        image = await _in(executor, timings, "decode", decode, data, content_type, self.limits)
        labels, tiles = await self.labels_batched(image.rgb, params, batcher=batcher, executor=executor,
                                                  deadline=deadline, timings=timings)
        encoded = await _in(executor, timings, "encode", encode_output, output, self.meta, image.rgb,
                            labels, options)
        return Segmentation(image, labels, tiles, encoded, timings)

    async def labels_batched(self, rgb: np.ndarray, params: InferenceParams, *, batcher: TileSubmitter,
                             executor: Executor, deadline: float,
                             timings: Timings) -> tuple[np.ndarray, int]:
        """Label map (H, W) of a decoded image and the number of tiles it took."""
        plan = await _in(executor, timings, "plan", make_plan, self.meta, rgb, params)
        window = graph_labels_window(plan) if LABELS_NAME in batcher.outputs else None
        if window is not None:
            with timings.stage("batch"):
                ids = await batcher.submit(plan.tiles, deadline=deadline, output=LABELS_NAME)
            with timings.stage("stitch"):  # a crop of one tile's ids: no need for a thread
                return crop_labels(ids, window), plan.num_tiles
        with timings.stage("batch"):
            logits = await batcher.submit(plan.tiles, deadline=deadline)
        labels = await _in(executor, timings, "stitch", stitch, plan, logits)
        return labels, plan.num_tiles


async def _in(executor: Executor, timings: Timings, stage: str, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in ``executor``, its wall time added to ``stage``."""
    with timings.stage(stage):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
