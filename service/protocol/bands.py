"""Argmax of summed, bilinearly resized class probabilities, without resizing them to the full image.

The official procedure resizes every scale's (C, h, w) probabilities to the
image's (C, H, W) in float64, sums the scales, divides by their count and takes
the argmax: 8 x C bytes per image pixel. When the image is larger than the
working resolution (a photo upscaled from a 512-pixel working size) each scale
stays at its working size as a :class:`Source` (probabilities plus the taps of
OpenCV's resize, :mod:`service.protocol.taps`), and labels are computed one band
of image rows at a time:

* the rankings of :mod:`service.protocol.bounds` prove the label of most pixels
  without interpolating anything;
* at the others (class borders, near ties, scales that disagree) the exact
  interpolated values are computed pointwise for the few classes that can win
  (the top two at every source pixel behind the pixel), and the winner is
  checked against an upper bound of every other class; where that check fails,
  all classes are computed;
* a band whose open pixels would cost more pointwise than computing it whole
  (noise-like scores) is computed whole ("dense"), a few rows at a time.

Every value computed is the float64 value OpenCV and the official sum produce
(the same operations in the same order), so the labels are exactly those of
the full-size computation, ties included (the first class wins), as
tests/service/protocol/test_stitch.py checks. :func:`uses_full_size` says when the
full-size computation is used instead (service.protocol.stitch).

Tested by tests/service/protocol/test_stitch.py (against the full-size oracle, every route).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from numpy.typing import NDArray

from service.protocol.argmax import Labels
from service.protocol.bounds import Index, Ranking, summarise
from service.protocol.taps import opencv_is_separable
from service.protocol.values import Source, dense, mean_values
from service.protocol.windows import ScaleGeometry

#: image pixels per band of the bounded route
BOUNDED_PIXELS = 2**18
#: candidate (pixel, class) pairs evaluated at once
PAIRS = 2**16
#: cost model (ns, measured on the 2-core machine): an open pixel's candidates (sorting, ranking), one
#: pointwise value per scale of a candidate, or of every class where the candidates prove nothing, one
#: value per scale of the dense pass. A band goes dense when its open pixels would cost more pointwise;
#: candidates and failures per pixel are estimated on SAMPLE of them
OPEN_NS = 300
VALUE_NS = 20
ALL_CLASSES_NS = 10
DENSE_NS = 3.5
SAMPLE = 1024
#: upper-bound slack on float32 thirds: relative (rounding to float32, weights summing to 1 + 2**-24)
#: and absolute (float32 subnormals)
RELATIVE_SLACK = 2.0**-20
ABSOLUTE_SLACK = 2.0**-40


def uses_full_size(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int) -> bool:
    """Whether the stitcher resizes every scale to the full image, as the official code does.

    It does when the image has no more pixels than its scales' working sizes
    together (full-size arrays are then no larger than the working ones, and
    OpenCV's resize and numpy's argmax are the fastest exact route), and when
    OpenCV would not resize some scale with the taps' arithmetic (an exact
    halving, or 3 or 4 classes, which it gives to IPP: 8 x C bytes per pixel).
    """
    if not all(opencv_is_separable(classes, g.size, image_size) for g in geometry):
        return True
    return image_size[0] * image_size[1] <= sum(g.size[0] * g.size[1] for g in geometry)


def resized_argmax(sources: Sequence[Source], image_size: tuple[int, int],
                   dtype: type[np.uint8] | type[np.uint16]) -> Labels:
    """``argmax_c (sum_s resize(sources[s].probs)[c]) / len(sources)``, labels of shape ``image_size``.

    The bounded route, for images larger than the working resolution.
    """
    labels = cast(Labels, np.zeros(image_size, dtype=dtype))
    if sources[0].probs.shape[0] > 1:  # one class: every label is 0
        _bounded(sources, labels)
    return labels


def _bounded(sources: Sequence[Source], labels: Labels) -> None:
    """Rank every scale once, then label band after band."""
    rankings = [summarise(s.probs, s.rows, s.cols) for s in sources]
    height, width = labels.shape
    band = max(1, BOUNDED_PIXELS // width)
    for y0 in range(0, height, band):
        _bounded_band(sources, rankings, labels, y0, min(y0 + band, height))


def _bounded_band(sources: Sequence[Source], rankings: Sequence[Ranking], labels: Labels, y0: int,
                  y1: int) -> None:
    """Labels of image rows [y0, y1): proven, then the open pixels pointwise, or the whole band dense."""
    proven = _proven_band(sources, rankings, y0, y1)
    ys, xs = np.nonzero(proven < 0)
    ys += y0
    if ys.shape[0] and not _pointwise_is_cheaper(sources, rankings, ys, xs, proven.size):
        # noise-like scores, or scales that disagree everywhere: every value of the band is cheaper
        del proven, ys, xs
        dense(sources, labels, y0, y1)
        return
    labels[y0:y1] = proven.astype(labels.dtype, copy=False)  # -1 wraps; those pixels are redone below
    del proven
    _by_candidates(sources, rankings, ys, xs, labels)


def _proven_band(sources: Sequence[Source], rankings: Sequence[Ranking], y0: int, y1: int) -> Index:
    """Labels proven by the block maps for image rows [y0, y1), -1 where they prove nothing."""
    label = None
    for src, rank in zip(sources, rankings, strict=True):
        here = rank.block_label[src.rows.lo[y0:y1]][:, src.cols.lo]
        if label is None:
            label = here
        else:
            label[here != label] = -1  # scales that disagree prove nothing
    assert label is not None
    return label


def _candidates(sources: Sequence[Source], rankings: Sequence[Ranking], ys: NDArray[np.intp],
                xs: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Each pixel's candidate classes (n, k), ascending then padding, how many are real, and the bound.

    Candidates: the top two classes at every source pixel behind the pixel in
    every scale. Any other class is at most the third value at each of those
    source pixels, so its mean over scales is at most the returned bound.
    """
    columns = []
    bound = np.zeros(ys.shape[0])
    for src, rank in zip(sources, rankings, strict=True):
        width = src.probs.shape[2]
        row_taps = [src.rows.lo[ys] * width] + ([] if src.rows.identity else [src.rows.hi[ys] * width])
        col_taps = [src.cols.lo[xs]] + ([] if src.cols.identity else [src.cols.hi[xs]])
        for r in row_taps:
            for c in col_taps:
                at = r + c
                columns += [rank.top1.take(at), rank.top2.take(at)]
        bound += rank.block_third.take(row_taps[0] + col_taps[0])
    bound = bound / len(sources) * (1 + RELATIVE_SLACK) + ABSOLUTE_SLACK
    ranked = np.sort(np.stack(columns, axis=1), axis=1)
    first = np.ones(ranked.shape, dtype=bool)
    first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    # each distinct class moves to its rank among the row's distinct classes; the rest repeat the lowest
    slot = np.cumsum(first, axis=1) - 1
    out = np.empty((ranked.shape[0], int(slot[:, -1].max()) + 1), dtype=np.intp)
    out[...] = ranked[:, :1]
    out[np.nonzero(first)[0], slot[first]] = ranked[first]
    return out, slot[:, -1] + 1, bound


def _candidate_labels(sources: Sequence[Source], rankings: Sequence[Ranking], y: NDArray[np.intp],
                      x: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
    """Winner among each pixel's candidates, how many candidates, and where the bound proves nothing."""
    candidates, count, bound = _candidates(sources, rankings, y, x)
    # values of the real candidates only (most pixels have two or three), padding at -inf
    pixel, slot = np.nonzero(np.arange(candidates.shape[1]) < count[:, None])
    values = np.full(candidates.shape, -np.inf)
    values[pixel, slot] = mean_values(sources, y[pixel], x[pixel], candidates[pixel, slot, None])[:, 0]
    best = values.max(axis=1)
    # the first (lowest) candidate class with the best value, as argmax over all classes would pick
    winner = candidates[np.arange(y.shape[0]), np.argmax(values == best[:, None], axis=1)]
    return winner, count, ~(best > bound)


def _pointwise_is_cheaper(sources: Sequence[Source], rankings: Sequence[Ranking], ys: NDArray[np.intp],
                          xs: NDArray[np.intp], pixels: int) -> bool:
    """Estimate, from a sample of the open pixels, whether they cost less pointwise than a dense band."""
    sample = slice(None, None, max(1, ys.shape[0] // SAMPLE))
    _, count, unsure = _candidate_labels(sources, rankings, ys[sample], xs[sample])
    classes, scales = sources[0].probs.shape[0], len(sources)
    per_pixel = OPEN_NS + scales * (VALUE_NS * float(count.mean())
                                    + ALL_CLASSES_NS * float(unsure.mean()) * classes)
    return bool(ys.shape[0] * per_pixel < pixels * classes * scales * DENSE_NS)


def _by_candidates(sources: Sequence[Source], rankings: Sequence[Ranking], ys: NDArray[np.intp],
                   xs: NDArray[np.intp], labels: Labels) -> None:
    """Exact labels of the open pixels (ys, xs): candidates, or every class where they prove nothing."""
    step = max(1, PAIRS // (2 * len(sources) * 4))
    for i in range(0, ys.shape[0], step):
        y, x = ys[i:i + step], xs[i:i + step]
        winner, _, unsure = _candidate_labels(sources, rankings, y, x)
        labels[y, x] = winner
        del winner
        _all_classes(sources, y[unsure], x[unsure], labels)


def _all_classes(sources: Sequence[Source], ys: NDArray[np.intp], xs: NDArray[np.intp],
                 labels: Labels) -> None:
    """Exact labels of pixels (ys, xs) from the values of every class."""
    classes = sources[0].probs.shape[0]
    step = max(1, PAIRS // classes)
    everything = np.broadcast_to(np.arange(classes), (step, classes))
    for i in range(0, ys.shape[0], step):
        y, x = ys[i:i + step], xs[i:i + step]
        labels[y, x] = np.argmax(mean_values(sources, y, x, everything[:y.shape[0]]), axis=1)
