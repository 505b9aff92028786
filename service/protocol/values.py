"""Exact interpolated values of a resize, computed for a band of rows or for single pixels.

A :class:`Source` is one scale's float64 class probabilities at its working
size and the taps of OpenCV's resize to the image (:mod:`service.protocol.taps`).
Every value here is computed with the operations of OpenCV's resize (the
horizontal pass, then the vertical one) and of the official mean over scales
(``total = r0; total += r1; ...; total /= S``), in that order, so each is the
float64 number the full-size computation holds for that pixel and class, to
the last bit: :func:`dense` for rows of the image, :func:`mean_values` for
chosen (pixel, class) pairs.

Tested by tests/service/protocol/test_stitch.py (through the stitcher, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.protocol.argmax import Labels, argmax_classes
from service.protocol.taps import Taps

#: float64 values per temporary in a dense band (2 MiB)
DENSE_VALUES = 2**18


@dataclass(frozen=True)
class Source:
    """One scale: probabilities at its working resolution and how they map onto the image."""

    probs: NDArray[np.float64]  # (C, h, w), C-contiguous
    rows: Taps  # image rows -> probs rows
    cols: Taps  # image columns -> probs columns


class RowPass:
    """OpenCV's horizontal pass over a source's rows, kept for the rows the next band shares.

    Consecutive bands of an upscale need overlapping source rows: each row is
    resized horizontally once, however thin the bands.
    """

    def __init__(self, src: Source) -> None:
        self.src = src
        self.first = 0
        self.rows: NDArray[np.float64] = src.probs[:, :0, :0]

    def get(self, first: int, last: int) -> NDArray[np.float64]:
        """Horizontally resized source rows [first, last), (C, last - first, W); rows only move down."""
        probs, cols = self.src.probs, self.src.cols
        if cols.identity:
            return probs[:, first:last]
        done = self.first + self.rows.shape[1]
        kept = self.rows[:, max(first - self.first, 0):]
        fresh = probs[:, max(first, done):last]
        fresh = fresh[:, :, cols.lo] * cols.w_lo + fresh[:, :, cols.hi] * cols.w_hi
        self.rows = np.concatenate([kept, fresh], axis=1) if kept.shape[1] else fresh
        self.first = first
        return self.rows


def _band_values(rows_pass: RowPass, y0: int, y1: int) -> tuple[NDArray[np.float64], bool]:
    """Interpolated (C, y1 - y0, W) values of image rows [y0, y1); True if it is a view of the source."""
    rows = rows_pass.src.rows
    lo, hi = rows.lo[y0:y1], rows.hi[y0:y1]
    first = int(lo[0])  # taps never decrease along an axis
    block = rows_pass.get(first, int(hi[-1]) + 1)
    if rows.identity:
        return block, rows_pass.src.cols.identity
    # the vertical pass: b0 * row0 + b1 * row1
    out = block[:, lo - first] * rows.w_lo[y0:y1, None]
    out += block[:, hi - first] * rows.w_hi[y0:y1, None]
    return out, False


def pair_values(src: Source, ys: NDArray[np.intp], xs: NDArray[np.intp],
                 classes: NDArray[np.intp]) -> NDArray[np.float64]:
    """Interpolated values at image pixels (ys, xs) for ``classes`` (n, k): the same arithmetic, pointwise."""
    _, h, w = src.probs.shape
    flat = src.probs.reshape(-1)
    plane = classes * (h * w)
    rows, cols = src.rows, src.cols

    def horizontal(r: NDArray[np.intp]) -> NDArray[np.float64]:
        base = r * w
        left: NDArray[np.float64] = flat[plane + (base + cols.lo[xs])[:, None]]
        if cols.identity:
            return left
        right: NDArray[np.float64] = flat[plane + (base + cols.hi[xs])[:, None]]
        return left * cols.w_lo[xs, None] + right * cols.w_hi[xs, None]

    top = horizontal(rows.lo[ys])
    if rows.identity:
        return top
    return top * rows.w_lo[ys, None] + horizontal(rows.hi[ys]) * rows.w_hi[ys, None]


def mean_values(sources: Sequence[Source], ys: NDArray[np.intp], xs: NDArray[np.intp],
                 classes: NDArray[np.intp]) -> NDArray[np.float64]:
    """The official float64 mean over scales: ``total = r0; total += r1; ...; total /= S``."""
    total = pair_values(sources[0], ys, xs, classes)
    for src in sources[1:]:
        total += pair_values(src, ys, xs, classes)
    if len(sources) > 1:
        total /= len(sources)
    return total


def dense(sources: Sequence[Source], labels: Labels, start: int, stop: int) -> None:
    """Labels of image rows [start, stop) from every interpolated value, a few rows at a time."""
    width = labels.shape[1]
    classes = sources[0].probs.shape[0]
    band = max(1, DENSE_VALUES // (classes * width))
    passes = [RowPass(src) for src in sources]
    for y0 in range(start, stop, band):
        labels[y0:min(y0 + band, stop)] = _dense_band(passes, y0, min(y0 + band, stop), labels.dtype.type)


def _band_mean(passes: Sequence[RowPass], y0: int, y1: int) -> NDArray[np.float64]:
    """The official mean of every scale's interpolated values, (C, y1 - y0, W), for image rows [y0, y1)."""
    total, is_view = _band_values(passes[0], y0, y1)
    if len(passes) > 1:
        if is_view:  # the sum below is in place: never into the source itself
            total = total.copy()
        for rows_pass in passes[1:]:
            total += _band_values(rows_pass, y0, y1)[0]
        total /= len(passes)
    return total


def _dense_band(passes: Sequence[RowPass], y0: int, y1: int,
                dtype: type[np.uint8] | type[np.uint16]) -> Labels:
    """Labels of image rows [y0, y1) from the official mean of every scale's interpolated values."""
    return argmax_classes(_band_mean(passes, y0, y1), dtype)


def dense_values(sources: Sequence[Source], out: NDArray[np.floating]) -> None:
    """Every class's value at every pixel, written into ``out`` (C, H, W) in its dtype (float16 for
    the probabilities a client asked for), a few rows at a time."""
    classes, height, width = out.shape
    band = max(1, DENSE_VALUES // (classes * width))
    passes = [RowPass(src) for src in sources]
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        out[:, y0:y1] = _band_mean(passes, y0, y1)


def pixel_values(sources: Sequence[Source], classes: NDArray[np.intp], shape: tuple[int, int],
                 chunk: int = 2**16) -> NDArray[np.float64]:
    """The value of class ``classes[y, x]`` (an (H, W) map, or a 0-d class for every pixel) at every
    pixel, (H, W) float64, computed pointwise ``chunk`` pixels at a time."""
    height, width = shape
    out = np.empty(height * width)
    per_pixel = np.broadcast_to(classes, shape).reshape(-1)
    for i in range(0, height * width, chunk):
        flat = np.arange(i, min(i + chunk, height * width))
        ys, xs = np.divmod(flat, width)
        out[i:i + len(flat)] = mean_values(sources, ys, xs, per_pixel[flat, None].astype(np.intp))[:, 0]
    return out.reshape(shape)
