"""The serving path as a chain of small steps: plan tiles -> batch -> run -> stitch -> labels.

:class:`Segmenter` is the asynchronous path used by the HTTP app (tiles go
through the cross-request batcher); :func:`segment_offline` is the same chain
run synchronously on an :class:`~service.engine.Engine` (the ``segment`` and
``evaluate`` commands and the protocol parity tests). CPU-heavy steps run in
the given executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.artifact import ArtifactMeta
from service.errors import BadRequest
from service.params import InferenceParams
from service.tiling import TilePlan, label_dtype, plan_tiles, stitch, stitch_labels

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Timings:
    """Seconds spent per stage for one request (reported in Server-Timing and metrics)."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def header(self) -> str:
        return ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in self.stages.items())


def make_plan(meta: ArtifactMeta, image: np.ndarray, params: InferenceParams) -> TilePlan:
    p = meta.protocol
    return plan_tiles(image, tile=meta.tile, mode=params.mode, scales=params.scales, flip=params.flip,
                      base_size=p.base_size, stride_rate=p.stride_rate, mean=meta.mean)


def labels_from_probs(probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Argmax over classes as the smallest unsigned type that holds every id."""
    labels: np.ndarray = np.argmax(probs, axis=-1).astype(label_dtype(num_classes))
    return labels


def run_chunked(run: Runner, tiles: np.ndarray, max_batch: int) -> np.ndarray:
    outs = [run(tiles[i:i + max_batch]) for i in range(0, len(tiles), max_batch)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


def segment_offline(meta: ArtifactMeta, run: Runner, image: np.ndarray, params: InferenceParams,
                    *, max_batch: int) -> np.ndarray:
    """Per-pixel probabilities (H, W, C) for one image, synchronously."""
    plan = make_plan(meta, image, params)
    return stitch(plan, run_chunked(run, plan.tiles, max_batch))


def labels_offline(meta: ArtifactMeta, run: Runner, image: np.ndarray, params: InferenceParams,
                   *, max_batch: int) -> np.ndarray:
    """Label map (H, W) for one image, synchronously (argmax of the float64 probabilities)."""
    plan = make_plan(meta, image, params)
    labels: np.ndarray = stitch_labels(plan, run_chunked(run, plan.tiles, max_batch))
    return labels


class TileSubmitter(Protocol):
    """What the Segmenter needs of the batcher (service.batcher.TileBatcher)."""

    async def submit(self, tiles: np.ndarray, *, deadline: float) -> np.ndarray: ...


class Segmenter:
    def __init__(self, meta: ArtifactMeta, batcher: TileSubmitter, executor: Executor) -> None:
        self.meta = meta
        self.batcher = batcher
        self.executor = executor

    async def _cpu(self, timings: Timings, stage: str, fn: Callable[..., object], *args: object) -> object:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            return await loop.run_in_executor(self.executor, fn, *args)
        finally:
            timings.add(stage, time.perf_counter() - t0)

    async def labels(self, image: np.ndarray, params: InferenceParams, *, deadline: float,
                     timings: Timings) -> tuple[np.ndarray, int]:
        """Label map (H, W) for ``image`` and the number of tiles it took."""
        plan = await self._cpu(timings, "plan", _plan_request, self.meta, image, params)
        assert isinstance(plan, TilePlan)
        t0 = time.perf_counter()
        try:
            logits = await self.batcher.submit(plan.tiles, deadline=deadline)
        finally:
            timings.add("batch", time.perf_counter() - t0)
        labels = await self._cpu(timings, "stitch", stitch_labels, plan, logits)
        assert isinstance(labels, np.ndarray)
        return labels, len(plan.tiles)


def _plan_request(meta: ArtifactMeta, image: np.ndarray, params: InferenceParams) -> TilePlan:
    """make_plan for a client's image: geometry it cannot be planned for is the client's 400."""
    try:
        return make_plan(meta, image, params)
    except ValueError as e:  # e.g. a 1 x 40000 image at scale 0.5 shrinks to nothing
        raise BadRequest(f"cannot segment a {image.shape[1]}x{image.shape[0]} image this way: {e}") from None
