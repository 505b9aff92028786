"""How many bytes :func:`service.protocol.stitch.stitch_labels` holds at its peak, from sizes alone.

The server can call :func:`stitch_peak_bytes` before decoding a request (the
geometry comes from the image header, :func:`service.protocol.windows.plan_geometry`).
It takes the stitcher's own decisions (one window, the full-size computation,
or the bounded route of :mod:`service.protocol.bands`) and adds up the arrays
alive at the worst moment of each phase:

* all along: the logits of every tile (float32) and, from the argmax on, the labels;
* building scale s: the scales before it (float64 at their working size), its
  own float64 sum, the softmax of a strip of one window (two, with flip) and
  the coverage;
* the argmax: every scale, their rankings and one band's temporaries, whose
  sizes are set by the constants of :mod:`service.protocol.bands` and
  :mod:`service.protocol.values` (the full-size route: the full-size sum, one
  resized scale and numpy's argmax).

Every term is an upper bound of what numpy allocates there, so the total is
too; tests/service/protocol/test_peak_bytes.py checks it against tracemalloc's peak
(bound / measured between 1.0 and 1.5). It is the traced peak: the process's
RSS grows by some more (allocator pages, OpenCV's own buffers: 20 to 32 MB
more on the 12 Mpx cases of benchmarks/results/stitch_agreement.json). Only the full-size route
grows with image pixels x classes, where that is no more than the working size
or where OpenCV resizes with another arithmetic (3 or 4 classes: IPP).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.protocol.bands import BOUNDED_PIXELS, PAIRS, uses_full_size
from service.protocol.bounds import RANK_BLOCK, index_dtype
from service.protocol.probs import strip_rows
from service.protocol.resize import CV_MAX_CHANNELS
from service.protocol.taps import linear_taps
from service.protocol.values import DENSE_VALUES
from service.protocol.windows import ScaleGeometry, count_tiles

F32, F64, INTP = 4, 8, 8
#: per (pixel, class) pair of one chunk of open pixels: candidates (index, sort, rank and value arrays;
#: measured at most 37) and every class where they prove nothing (index, gathered and product arrays of
#: four taps; measured at most 129)
CANDIDATE_PAIR_BYTES = 48
ALL_CLASSES_PAIR_BYTES = 136
#: index tuples, short taps, Python objects: what the terms above leave out
SMALL = 2**18
#: per source pixel while ranking: top1, top2 and label (index), margin and third (float32), shifted copies
RANK_BYTES_FIXED = 17


def _window_bytes(classes: int, tile: tuple[int, int], flip: bool) -> int:
    """One window's softmax: the tile (a pair with flip) and the max and sum planes."""
    n = 2 if flip else 1
    return n * (classes + 1) * tile[0] * tile[1] * F32


def _taps_bytes(image_size: tuple[int, int]) -> int:
    """Indices and weights of both axes, with their construction temporaries."""
    return 10 * F64 * (image_size[0] + image_size[1])


def _lone_bytes(geom: ScaleGeometry, classes: int, tile: tuple[int, int], label: int) -> int:
    """One window is the image: its softmax, then the argmax's running best, labels and masks."""
    h, w = geom.size
    return _window_bytes(classes, tile, geom.flip) + h * w * (F32 + 1 + 2 * label)


def _build_bytes(geom: ScaleGeometry, image_size: tuple[int, int], classes: int,
                 tile: tuple[int, int]) -> int:
    """One scale being built: its float64 sum, then one strip's softmax or the coverage; its taps."""
    h, w = geom.size
    strip = (strip_rows(classes, tile), tile[1])
    window = max(_window_bytes(classes, strip, geom.flip), h * w * F64 + F64 * (h + w))
    return classes * h * w * F64 + window + _taps_bytes(image_size)


def _row_pass_rows(h: int, height: int, band: int) -> tuple[int, int]:
    """Source rows one scale's horizontal pass keeps for a dense band, and the most it holds while adding
    a band's new rows (old rows, new rows, their concatenation), from the taps themselves."""
    taps = linear_taps(h, height, zero_border_weights=False)
    starts = np.arange(0, height, band)
    first = taps.lo[starts]
    last = taps.hi[np.minimum(starts + band, height) - 1]
    kept = last - first + 1
    new = last + 1 - np.maximum(first, np.concatenate([[0], last[:-1] + 1]))
    old = np.concatenate([[0], kept[:-1]])
    # the horizontal pass of new rows holds three of their size (numpy does not reuse the temporaries);
    # the bounded route may start dense bands anywhere, with nothing kept yet: all rows are new then
    busiest = np.maximum(old + np.maximum(3 * new, new + kept), 3 * kept)
    return int(kept.max()), int(busiest.max())


def _dense_band_bytes(working: Sequence[tuple[int, int]], image_size: tuple[int, int], classes: int,
                      label: int) -> int:
    """Dense bands: the running sum; per scale the source rows it keeps resized horizontally; one scale's
    new rows (and their concatenation with the kept ones) or its vertical products; the argmax."""
    height, width = image_size
    rows = min(height, max(1, DENSE_VALUES // (classes * width)))
    passes = [_row_pass_rows(h, height, rows) for h, _ in working]
    busiest = max(peak - kept for kept, peak in passes)
    argmax = rows * width * (F64 + 1 + 2 * label)
    # the vertical pass: its result, a gathered row set and their product
    return classes * width * F64 * (rows + sum(kept for kept, _ in passes) + max(busiest, 3 * rows)) + argmax


def _bounded_bytes(working: Sequence[tuple[int, int]], image_size: tuple[int, int], classes: int,
                   label: int) -> int:
    """Rankings of every scale, the heavier of ranking one scale and one band of the bounded route."""
    height, width = image_size
    idx = np.dtype(index_dtype(classes)).itemsize
    pixels = [h * w for h, w in working]
    held = sum(pixels) * (3 * idx + F32)
    ranking = max(pixels) * (3 * idx + RANK_BYTES_FIXED) + RANK_BLOCK * (6 * F64 + 4 * idx)
    rows = min(height, max(1, BOUNDED_PIXELS // width))
    band_pixels = rows * width
    # a band: its proven labels (and a scale's, and their comparison), then the open pixels' coordinates
    proven = band_pixels * (3 * idx + 1) + rows * max(w for _, w in working) * idx
    located = band_pixels * (idx + 1 + 2 * INTP)
    # then chunks of candidates beside the coordinates (the labels cast in between), or a dense band
    chunk = max(1, PAIRS // (8 * len(working)))  # open pixels per chunk, as stitch_bands cuts them
    pairs = max(min(PAIRS, height * width * 8 * len(working)) * CANDIDATE_PAIR_BYTES,
                min(PAIRS, chunk * classes) * ALL_CLASSES_PAIR_BYTES, band_pixels * (idx + label))
    dense = _dense_band_bytes(working, image_size, classes, label)
    return held + max(ranking, proven, located, band_pixels * 2 * INTP + pairs, dense)


def _full_size_bytes(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int,
                     tile: tuple[int, int], label: int) -> int:
    """The official route: the full-size sum, one scale's working probabilities, one resized range."""
    pixels = image_size[0] * image_size[1]
    total = classes * pixels * F64
    resized = min(classes, CV_MAX_CHANNELS) * pixels * F64
    peak = 0
    for i, geom in enumerate(geometry):
        h, w = geom.size
        window = max(_window_bytes(classes, tile, geom.flip), h * w * F64 + F64 * (h + w))
        # a scale of the image's size is not resized: its ranges are the sum or are added as they are;
        # the first scale's resized ranges become the sum while its working ranges are still alive
        copies = 0 if geom.size == image_size else (total if i == 0 else resized)
        peak = max(peak, (total if i else 0) + classes * h * w * F64 + max(window, copies))
    # argmax: labels and the cast; per channel range, labels and values of two ranges, the mask and picks
    argmax = pixels * ((6 * F64 + 1 if classes > CV_MAX_CHANNELS else F64) + label)
    return max(peak, total + argmax)


def stitch_peak_bytes(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], num_classes: int,
                      tile: tuple[int, int]) -> int:
    """Upper bound of the bytes alive at the peak of ``stitch_labels`` for this request.

    Counts the logits of all tiles (float32, ``count_tiles(geometry) x classes x
    tile``), the stitcher's own arrays and the output labels. ``geometry`` is
    :func:`service.protocol.windows.plan_geometry` of the request, ``image_size`` its
    (height, width).
    """
    if not geometry:
        raise ValueError("the geometry has no scales")
    height, width = image_size
    label = 1 if num_classes <= 256 else 2
    logits = count_tiles(geometry) * num_classes * tile[0] * tile[1] * F32
    first = geometry[0]
    if len(geometry) == 1 and first.num_windows == 1 and first.size == image_size:
        return logits + _lone_bytes(first, num_classes, tile, label) + SMALL
    if uses_full_size(geometry, image_size, num_classes):
        return logits + _full_size_bytes(geometry, image_size, num_classes, tile, label) + SMALL
    held = 0
    build = 0
    for geom in geometry:
        build = max(build, held + _build_bytes(geom, image_size, num_classes, tile))
        held += num_classes * geom.size[0] * geom.size[1] * F64 + _taps_bytes(image_size)
    working = [g.size for g in geometry]
    route = _bounded_bytes(working, image_size, num_classes, label) if num_classes > 1 else 0
    return logits + height * width * label + max(build, held + route) + SMALL
