"""How many bytes a :class:`service.protocol.stitch.Stitcher` holds at its peak, from sizes alone.

The server can call :func:`stitch_peak_bytes` before decoding a request (the
geometry comes from the image header, :func:`service.protocol.windows.plan_geometry`).
It takes the stitcher's own decisions (one window, the full-size computation,
or the bounded route of :mod:`service.protocol.bands`) and adds up the arrays
alive at the worst moment of each phase:

* while a chunk is folded: its logits (float32); from the argmax on, the labels;
* building scale s: its own float64 sum, the softmax of a strip of one window
  (two, with flip) and the coverage; beside it what the route keeps of the
  scales before (the bounded route: each at its working size; the full-size
  route: the image-size sum, to which each scale is then added a group of
  classes at a time, gathered and resized);
* the argmax: every scale, their rankings and one band's temporaries, whose
  sizes are set by the constants of :mod:`service.protocol.bands` and
  :mod:`service.protocol.values` (the full-size route: the image-size sum and
  the running argmax).

Every term is an upper bound of what numpy allocates there, so the total is
too; tests/service/protocol/test_peak_bytes.py checks it against tracemalloc's peak
(bound / measured between 1.0 and 1.5). It is the traced peak: the process's
RSS grows by some more (allocator pages, OpenCV's own buffers: 20 to 32 MB
more on the 12 Mpx cases of benchmarks/results/stitch_agreement.json). Only the full-size route
grows with image pixels x classes, where that is no more than the working size
or where OpenCV resizes with another arithmetic (3 or 4 classes: IPP); no route
holds more than one chunk of logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.protocol.bands import BOUNDED_PIXELS, PAIRS, uses_full_size
from service.protocol.bounds import RANK_BLOCK, index_dtype
from service.protocol.probs import strip_rows
from service.protocol.resize import resize_groups
from service.protocol.taps import linear_taps
from service.protocol.values import DENSE_VALUES
from service.protocol.windows import ScaleGeometry, count_tiles

F32, F64, INTP = 4, 8, 8
#: per (pixel, class) pair of one chunk of open pixels: candidates (index, sort, rank and value arrays;
#: measured at most 37) and every class where they prove nothing (index, gathered and product arrays of
#: four taps; measured at most 129)
CANDIDATE_PAIR_BYTES = 48
ALL_CLASSES_PAIR_BYTES = 136
#: logits per submission of a streamed request (:func:`stream_chunk`)
STREAM_BYTES = 2**26
#: index tuples, short taps, Python objects: what the terms above leave out
SMALL = 2**18
#: per source pixel while ranking: top1, top2 and label (index), margin and third (float32), shifted copies
RANK_BYTES_FIXED = 17


def stream_chunk(classes: int, tile: tuple[int, int], flip: bool) -> int:
    """Tiles per submission of a stitched request: about :data:`STREAM_BYTES` of logits, whole
    windows, at least one window (a 150-class 473x473 window and its mirror: 268 MB)."""
    window = 2 if flip else 1
    per_window = window * classes * tile[0] * tile[1] * 4
    return window * max(1, STREAM_BYTES // per_window)


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
                     tile: tuple[int, int], logits: int, label: int, *, streamed: bool) -> int:
    """The official route, streamed: the image-size sum and the scale being built (with one chunk's
    logits and a strip's softmax, or its coverage) or being added (with one group of classes,
    gathered and resized); then the argmax."""
    height, width = image_size
    total = classes * height * width * F64
    peak = 0
    for i, geom in enumerate(geometry):
        h, w = geom.size
        own = classes * h * w * F64
        strip = (strip_rows(classes, tile), tile[1])
        build = own + logits + max(_window_bytes(classes, strip, geom.flip), h * w * F64 + F64 * (h + w))
        group = 0
        if geom.size != image_size:
            widest = max(b - a for a, b in resize_groups(classes, geom.size, image_size))
            group = widest * (h * w + height * width) * F64
        # the sum exists from the first scale's addition on
        # streamed, the logits are gone when the scale is folded (the chain drops them first)
        peak = max(peak, (total if i else 0) + build, total + own + group + (0 if streamed else logits))
    # argmax: the running best, the labels, the mask and the step
    return max(peak, total + height * width * (F64 + 1 + 2 * label))


def stitch_peak_bytes(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], num_classes: int,
                      tile: tuple[int, int], chunk_tiles: int | None = None) -> int:
    """Upper bound of the bytes alive at the peak of a :class:`~service.protocol.stitch.Stitcher`
    fed ``chunk_tiles`` tiles at a time (None: every tile at once, as ``stitch_labels``).

    Counts one chunk's logits (float32, ``chunk x classes x tile``) while they are added (all
    along, when every tile comes at once; streamed, a scale is folded after they are gone), the
    stitcher's own arrays and the output labels. ``geometry`` is
    :func:`service.protocol.windows.plan_geometry` of the request, ``image_size`` its
    (height, width).
    """
    if not geometry:
        raise ValueError("the geometry has no scales")
    height, width = image_size
    label = 1 if num_classes <= 256 else 2
    # chunks never straddle scales (the chain cuts a scale's tiles at a time)
    widest = max(g.num_tiles for g in geometry)
    chunk = count_tiles(geometry) if chunk_tiles is None else max(1, min(chunk_tiles, widest))
    logits = chunk * num_classes * tile[0] * tile[1] * F32
    first = geometry[0]
    if len(geometry) == 1 and first.num_windows == 1 and first.size == image_size:
        return logits + _lone_bytes(first, num_classes, tile, label) + SMALL
    if uses_full_size(geometry, image_size, num_classes):
        return _full_size_bytes(geometry, image_size, num_classes, tile, logits, label,
                                streamed=chunk_tiles is not None) + SMALL
    held = 0
    build = 0
    for geom in geometry:
        build = max(build, held + logits + _build_bytes(geom, image_size, num_classes, tile))
        held += num_classes * geom.size[0] * geom.size[1] * F64 + _taps_bytes(image_size)
    working = [g.size for g in geometry]
    route = _bounded_bytes(working, image_size, num_classes, label) if num_classes > 1 else 0
    return height * width * label + max(build, held + route) + SMALL


def stitch_held_bytes(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int],
                      num_classes: int, *, final: bool = False) -> int:
    """The most a :class:`~service.protocol.stitch.Stitcher` keeps between two scales (while the next
    scale's tiles are cut): the image-size sum (full-size route) or the scales before the last at
    their working size (bounded route); nothing for one window. ``final``: what it keeps once every
    scale is in (for a soft output): every scale, or the one window's softmax."""
    first = geometry[0]
    if len(geometry) == 1 and first.num_windows == 1 and first.size == image_size:
        return _lone_bytes(first, num_classes, first.canvas, 1) if final else 0
    if uses_full_size(geometry, image_size, num_classes):
        return num_classes * image_size[0] * image_size[1] * F64 if final or len(geometry) > 1 else 0
    kept = geometry if final else geometry[:-1]
    return sum(num_classes * g.size[0] * g.size[1] * F64 + _taps_bytes(image_size) for g in kept)
