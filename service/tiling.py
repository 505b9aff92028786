"""The paper's inference protocols as pure functions: image -> tiles, tile logits -> probabilities.

Every mode turns an image into tiles of the model's fixed input size, so the
batcher can mix tiles of different requests; the stitcher turns the model's
logits for those tiles back into per-pixel probabilities of the original image.

``slide`` and ``multiscale`` are the official procedure (hszhao/semseg
``tool/test.py``: ``test``, ``scale_process``, ``net_process``), step for step:

* per scale, the image is converted to float32 FIRST and resized bilinearly
  (``cv2.INTER_LINEAR``; resizing uint8 rounds, which alone moves probabilities
  by 2e-5); padded with the mean colour; cut into windows (:mod:`service.windows`);
  with ``flip`` each window's horizontal mirror is a tile too, right after it;
* softmax over classes per tile in float32; the mirror's probabilities mirrored
  back and the pair averaged, ``(p + mirror(q)) / 2``, in float32;
* window probabilities summed in float64 and divided by the number of windows
  covering each pixel; padding cropped; the float64 probabilities resized to
  the original size (``cv2.INTER_LINEAR``); summed over scales and divided by
  their count.

``whole`` resizes the image to exactly the tile (aspect ratio not kept): one
tile (plus its mirror with ``flip``), whose probabilities are resized back.

Tiles hold RAW 0..255 RGB values (normalisation is inside the ONNX graph), so
the padding colour ``mean`` is in those units: it normalises to zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.argmax import Labels, argmax_classes
from service.artifact import Mode
from service.resize import channel_chunks, resize_linear
from service.windows import ScaleGeometry, count_tiles, plan_geometry


@dataclass(frozen=True)
class TilePlan:
    """Tiles for one image and the geometry :func:`stitch` needs to undo them."""

    tiles: NDArray[np.float32]  # (T, 3, tile_h, tile_w), contiguous, raw 0..255 RGB
    image_size: tuple[int, int]  # (height, width) of the original image
    tile: tuple[int, int]
    mode: Mode
    flip: bool
    scales: tuple[ScaleGeometry, ...]

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])


def _canvas_chw(image: NDArray[np.float32], geom: ScaleGeometry,
                mean: NDArray[np.float32]) -> NDArray[np.float32]:
    """The resized image, channels first, centred on a mean-coloured canvas."""
    # cv2 would return an identical copy for an unchanged size
    resized = image if image.shape[:2] == geom.size else resize_linear(image, geom.size)
    if geom.canvas == geom.size:
        return np.ascontiguousarray(resized.transpose(2, 0, 1))
    canvas = np.empty((3, *geom.canvas), dtype=np.float32)
    canvas[...] = mean[:, None, None]
    (top, left), (h, w) = geom.pad, geom.size
    canvas[:, top:top + h, left:left + w] = resized.transpose(2, 0, 1)
    return canvas


def plan_tiles(image: NDArray[np.generic], *, tile: tuple[int, int], mode: Mode,
               scales: Sequence[float] | None = None, flip: bool = False, base_size: int = 512,
               stride_rate: float = 2 / 3, mean: Sequence[float] = (0.0, 0.0, 0.0)) -> TilePlan:
    """Cut an ``HxWx3`` RGB image (uint8, or float in 0..255) into model tiles.

    ``scales`` defaults to [1.0] for ``slide`` and the paper's six for
    ``multiscale``; ``whole`` takes none (or [1.0]). ``mean`` is the padding
    colour in 0..255 units (the model's normalisation mean).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if len(mean) != 3:
        raise ValueError(f"mean needs three values, got {len(mean)}")
    height, width = int(image.shape[0]), int(image.shape[1])
    geometry = plan_geometry(height, width, tile=tile, mode=mode, scales=scales, flip=flip,
                             base_size=base_size, stride_rate=stride_rate)
    as_float = np.asarray(image).astype(np.float32, copy=False)
    mean32 = np.asarray(mean, dtype=np.float32)
    th, tw = tile
    tiles = np.empty((count_tiles(geometry), 3, th, tw), dtype=np.float32)
    for geom in geometry:
        canvas = _canvas_chw(as_float, geom, mean32)
        k = geom.first
        for y in geom.rows:
            for x in geom.cols:
                tiles[k] = canvas[:, y:y + th, x:x + tw]
                if flip:
                    tiles[k + 1] = tiles[k, :, :, ::-1]
                k += 2 if flip else 1
    return TilePlan(tiles, (height, width), (th, tw), mode, flip, geometry)


def softmax(logits: NDArray[np.float32], axis: int = 1) -> NDArray[np.float32]:
    """Numerically stable float32 softmax (subtract the max, exponentiate, normalise)."""
    out: NDArray[np.float32] = logits - logits.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def label_dtype(num_classes: int) -> type[np.uint8] | type[np.uint16]:
    """uint8 labels up to 256 classes, uint16 beyond (the 16-bit label PNG)."""
    if not 1 <= num_classes <= 65536:
        raise ValueError(f"cannot store labels of {num_classes} classes")
    return np.uint8 if num_classes <= 256 else np.uint16


def _window_probs(logits: NDArray[np.float32], index: int, flip: bool) -> NDArray[np.float32]:
    """(C, th, tw) probabilities of one window, flip-averaged when it has a mirror."""
    if not flip:
        single: NDArray[np.float32] = softmax(logits[index:index + 1])[0]
        return single
    pair = softmax(logits[index:index + 2])
    averaged: NDArray[np.float32] = (pair[0] + pair[1][:, :, ::-1]) / np.float32(2)
    return averaged


def _coverage(starts: tuple[int, ...], tile: int, lo: int, hi: int) -> NDArray[np.float64]:
    """How many windows cover each canvas pixel of [lo, hi) along one axis."""
    count = np.zeros(hi - lo, dtype=np.float64)
    for s in starts:
        count[max(s, lo) - lo:max(min(s + tile, hi) - lo, 0)] += 1
    return count


#: per-pixel probabilities held as channel ranges: ((start, stop), (H, W, stop - start) float64)
Chunks = list[tuple[tuple[int, int], NDArray[np.float64]]]


def _scale_probs(plan: TilePlan, geom: ScaleGeometry, logits: NDArray[np.float32]) -> Chunks:
    """One scale's coverage-averaged probabilities, cropped to the resized image, per channel range.

    Windows are summed only where they overlap the image, never into the padding
    the crop throws away: every kept pixel still gets the same additions in the
    same order as in the official code, so the result is the same to the last bit.
    More than 128 classes are kept in channel ranges (:func:`channel_chunks`)
    so that each resizes with one OpenCV call and no strided copies.
    """
    th, tw = plan.tile
    (top, left), (h, w) = geom.pad, geom.size
    ranges = channel_chunks(logits.shape[1])
    step = 2 if geom.flip else 1  # a window's tile index: its mirror, if any, follows it
    grid = itertools.product(geom.rows, geom.cols)  # row-major, as plan_tiles cut them
    windows = [(y, x, geom.first + i * step) for i, (y, x) in enumerate(grid)]
    # one range: each window's softmax is used once; several: computed once, kept
    cached = ([_window_probs(logits, k, geom.flip) for _, _, k in windows] if len(ranges) > 1 else None)
    # the windows form a grid, so per-pixel coverage is (row count) x (column count)
    cover = np.multiply.outer(_coverage(geom.rows, th, top, top + h),
                              _coverage(geom.cols, tw, left, left + w))
    # a lone window covers the whole image: 0 + p and p / 1 are p, so assign and skip the division
    alone = len(windows) == 1
    out: Chunks = []
    for a, b in ranges:
        acc = (np.empty if alone else np.zeros)((h, w, b - a), dtype=np.float64)
        for i, (y, x, k) in enumerate(windows):
            probs = (cached[i] if cached is not None else _window_probs(logits, k, geom.flip))[a:b]
            y0, y1 = max(y, top), min(y + th, top + h)
            x0, x1 = max(x, left), min(x + tw, left + w)
            if y0 < y1 and x0 < x1:
                part = probs[:, y0 - y:y1 - y, x0 - x:x1 - x].transpose(1, 2, 0)
                if alone:
                    acc[...] = part
                else:
                    acc[y0 - top:y1 - top, x0 - left:x1 - left] += part
        if not alone:
            acc /= cover[:, :, None]
        out.append(((a, b), acc))
    return out


def _check_logits(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.float32]:
    th, tw = plan.tile
    if logits.ndim != 4 or logits.shape[0] != plan.num_tiles or logits.shape[2:] != (th, tw):
        raise ValueError(f"expected logits of shape ({plan.num_tiles}, C, {th}, {tw}), got {logits.shape}")
    if logits.shape[1] < 1:
        raise ValueError("logits have no classes")
    if not plan.scales:
        raise ValueError("the plan has no scales")
    return np.asarray(logits, dtype=np.float32)


def _stitch_chunks(plan: TilePlan, logits: NDArray[np.float32]) -> Chunks:
    logits = _check_logits(plan, logits)
    total: Chunks = []
    for geom in plan.scales:
        for i, (rng, probs) in enumerate(_scale_probs(plan, geom, logits)):
            if probs.shape[:2] != plan.image_size:
                probs = resize_linear(probs, plan.image_size)
            if len(total) <= i:
                total.append((rng, probs))
            else:
                total[i][1][...] += probs
    if len(plan.scales) > 1:
        for _, probs in total:
            probs /= len(plan.scales)
    return total


def stitch_float64(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-pixel class probabilities (H, W, C) in float64, as the official code keeps them."""
    chunks = _stitch_chunks(plan, logits)
    if len(chunks) == 1:
        return chunks[0][1]
    return np.concatenate([probs for _, probs in chunks], axis=2)


def stitch(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per-pixel class probabilities (H, W, C), float32, of the original image."""
    chunks = _stitch_chunks(plan, logits)
    out = np.empty((*plan.image_size, chunks[-1][0][1]), dtype=np.float32)
    for (a, b), probs in chunks:
        out[:, :, a:b] = probs
    return out


def _lone_window_labels(plan: TilePlan, logits: NDArray[np.float32]) -> Labels | None:
    """Labels straight from the window's float32 probabilities when ONE window makes the image.

    One scale, one window, no resize back (``whole`` on an image of the tile's
    size, or slide on an image no larger than the tile): the official float64
    value of a pixel is 0 + p divided by a coverage of 1, i.e. p itself, so its
    argmax is the argmax of the float32 p, ties included. This skips the
    (H, W, C) float64 copy and numpy's per-pixel argmax: about 15 ms of CPU of
    a 360x480 request, measured on the 2-core benchmark machine (BENCHMARKS.md).
    None when the plan is anything else.
    """
    if len(plan.scales) != 1:
        return None
    geom = plan.scales[0]
    if geom.num_windows != 1 or geom.size != plan.image_size:
        return None
    logits = _check_logits(plan, logits)
    (top, left), (h, w) = geom.pad, geom.size
    probs = _window_probs(logits, geom.first, geom.flip)[:, top:top + h, left:left + w]
    return argmax_classes(probs, label_dtype(probs.shape[0]))


def stitch_labels(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Per-pixel argmax labels (H, W), uint8 (uint16 beyond 256 classes).

    The argmax of the float64 probabilities, as in the official code: cheaper
    than ``stitch(...).argmax(-1)`` (no float32 copy) and free of the ties that
    rounding to float32 can create.
    """
    lone = _lone_window_labels(plan, logits)
    if lone is not None:
        return lone
    chunks = _stitch_chunks(plan, logits)
    dtype = label_dtype(chunks[-1][0][1])
    if len(chunks) == 1:
        single: NDArray[np.intp] = chunks[0][1].argmax(axis=2)
        return single.astype(np.uint8) if dtype is np.uint8 else single.astype(np.uint16)
    best_label: NDArray[np.intp] | None = None
    best: NDArray[np.float64] | None = None
    for (a, _), probs in chunks:
        label = probs.argmax(axis=2)
        value = np.take_along_axis(probs, label[:, :, None], axis=2)[:, :, 0]
        label += a
        if best_label is None or best is None:
            best_label, best = label, value
        else:
            # strictly greater: on a tie the earlier class wins, as in one argmax over all
            better = value > best
            best_label[better] = label[better]
            best[better] = value[better]
    assert best_label is not None
    return best_label.astype(np.uint8) if dtype is np.uint8 else best_label.astype(np.uint16)
