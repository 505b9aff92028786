"""Per-pixel class rankings at the working resolution, and what they prove about a resized argmax.

Bilinear interpolation is a weighted sum of (at most) a 2x2 block of source
pixels with non-negative weights. So if one class k leads every other class by
a margin at each pixel of the block, it leads them after interpolation too, and
if it does so in every scale's block, it leads the sum over scales: k is the
argmax without computing a single interpolated value. :func:`summarise` ranks
the classes of every source pixel once (top two classes, the margin between the
first two values and the third value) and folds them into per-block maps:

* ``block_label``: the class that leads at every pixel of the block starting
  at this pixel by more than :data:`MARGIN`, or -1;
* ``block_third``: the largest third-ranked value in that block, an upper bound
  of every class that is not among the block's top two candidates.

Margins and thirds are stored in float32. That is safe: a float32 margin above
``2 * MARGIN`` means a float64 margin above ``MARGIN`` (relative rounding error
2**-24), and callers widen a float32 third by a relative 2**-20 before using it
as an upper bound. ``MARGIN`` is far above the float64 rounding of the
interpolation (a few times 1e-16 for values in [0, 1]) and far below any margin
that matters, so only true near-ties are left for the exact computation.

Tested by tests/service/protocol/test_stitch.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.protocol.taps import Taps

#: smallest float64 lead that proves a class wins after interpolation (see the module docstring)
MARGIN = 2.0**-30
#: source pixels ranked per pass: a few planes of this many float64 values stay in the CPU cache
RANK_BLOCK = 2**14

#: class indices, int16 or int32 (:func:`index_dtype`)
Index = NDArray[np.signedinteger[Any]]


@dataclass(frozen=True)
class Ranking:
    """One scale's class ranking per source pixel, and the block maps built from it."""

    top1: Index  # (h, w) first class with the largest value (numpy's argmax)
    top2: Index  # (h, w) a class with the largest value among the others
    block_label: Index  # (h, w) see the module docstring; -1 where nothing is proven
    block_third: NDArray[np.float32]  # (h, w)


def index_dtype(num_classes: int) -> type[np.int16] | type[np.int32]:
    """Signed (room for -1), as small as the class count allows."""
    return np.int16 if num_classes <= 2**15 - 1 else np.int32


def _rank_rows(probs: NDArray[np.float64], top1: Index, top2: Index, margin: NDArray[np.float32],
               third: NDArray[np.float32]) -> None:
    """Fill the rankings of ``probs`` (C, rows, w) by one running top-3 pass over the class planes."""
    v1 = probs[0].copy()
    v2 = np.full_like(v1, -np.inf)
    v3 = np.full_like(v1, -np.inf)
    t1 = np.zeros(v1.shape, top1.dtype)
    t2 = np.zeros(v1.shape, top1.dtype)
    beat1 = np.empty(v1.shape, dtype=bool)
    beat2 = np.empty(v1.shape, dtype=bool)
    step = np.empty(v1.shape, top1.dtype)
    low = np.empty_like(v1)
    for c in range(1, probs.shape[0]):
        x = probs[c]
        np.greater(x, v1, out=beat1)  # strictly: on a tie the earlier class stays first, as argmax
        np.greater(x, v2, out=beat2)
        # the three largest of {v1, v2, v3, x}, without branches
        np.minimum(x, v2, out=low)
        np.maximum(v3, low, out=v3)
        np.minimum(x, v1, out=low)
        np.maximum(v2, low, out=v2)
        np.maximum(v1, x, out=v1)
        # labels in integer arithmetic (label += beat * (new - label)), which numpy vectorises;
        # beating v1 implies beating v2, so t2 first takes c, then the old t1
        for beat, new, label in ((beat2, c, t2), (beat1, t1, t2), (beat1, c, t1)):
            np.subtract(new, label, out=step, casting="unsafe")
            np.multiply(step, beat, out=step, casting="unsafe")
            np.add(label, step, out=label, casting="unsafe")
    top1[...] = t1
    top2[...] = t2
    margin[...] = v1 - v2
    third[...] = v3


def _with_next(a: NDArray[np.generic], axis: int) -> NDArray[np.generic]:
    """``a`` shifted by one pixel along ``axis`` (the next pixel), the last one repeated."""
    n = a.shape[axis]
    nxt = np.clip(np.arange(1, n + 1), 0, n - 1)
    return np.take(a, nxt, axis=axis)


def summarise(probs: NDArray[np.float64], rows: Taps, cols: Taps) -> Ranking:
    """Rank the classes of ``probs`` (C, h, w) and build the block maps for these taps.

    The block of a source pixel is the pixel and, along each axis that is
    interpolated, the next one: it contains both taps of every output pixel
    whose first taps are this pixel.
    """
    c, h, w = probs.shape
    dtype = index_dtype(c)
    top1 = np.empty((h, w), dtype)
    top2 = np.empty((h, w), dtype)
    margin = np.empty((h, w), np.float32)
    third = np.empty((h, w), np.float32)
    band = max(1, RANK_BLOCK // w)
    for y in range(0, h, band):
        rows_here = slice(y, min(y + band, h))
        _rank_rows(probs[:, rows_here], top1[rows_here], top2[rows_here], margin[rows_here],
                   third[rows_here])
    label: Index = np.where(margin > np.float32(2 * MARGIN), top1, dtype(-1))
    del margin
    for axis, taps in ((1, cols), (0, rows)):
        if not taps.identity:
            nxt = _with_next(label, axis)
            label = np.where(label == nxt, label, dtype(-1))
            third = np.maximum(third, _with_next(third, axis))
    return Ranking(top1, top2, label, third)
