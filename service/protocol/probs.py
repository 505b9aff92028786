"""Tile logits -> one scale's coverage-averaged class probabilities at its working resolution.

The official ``scale_process``: softmax per window in float32, a mirrored
window's probabilities mirrored back and averaged with the window's, window
probabilities summed in float64 and divided by the number of windows covering
each pixel, padding cropped. Windows are summed only where they overlap the
resized image, never into the padding the crop throws away: every kept pixel
still gets the same additions in the same order as in the official code, so the
result is the same to the last bit.

Two layouts of the same numbers: channel-last ranges of at most 128 classes
(:func:`scale_probs_hwc`, what OpenCV resizes) and one channel-first array
(:func:`scale_probs_chw`, what the label stitcher reads: each class is a
contiguous plane, so windows add in contiguous rows, about 8x faster than
adding into a channel-last array through a transposed view).

Tested by tests/service/protocol/test_stitch.py and tests/service/protocol/test_plan.py.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.protocol.resize import channel_chunks
from service.protocol.windows import ScaleGeometry, cover, overlaps

#: logits per softmax strip of :func:`scale_probs_chw` (16 MiB of float32)
STRIP_VALUES = 2**22

#: per-pixel probabilities held as channel ranges: ((start, stop), (H, W, stop - start) float64)
Chunks = list[tuple[tuple[int, int], NDArray[np.float64]]]


def softmax(logits: NDArray[np.float32], axis: int = 1) -> NDArray[np.float32]:
    """Numerically stable float32 softmax (subtract the max, exponentiate, normalise)."""
    out: NDArray[np.float32] = logits - logits.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def window_probs(logits: NDArray[np.float32], index: int, flip: bool,
                 rows: slice = slice(None)) -> NDArray[np.float32]:
    """(C, rows, tw) probabilities of one window, flip-averaged when it has a mirror.

    ``rows`` selects tile rows: softmax is per pixel and the mirror is
    horizontal, so any rows give the same numbers as the whole tile's.
    """
    if not flip:
        single: NDArray[np.float32] = softmax(logits[index:index + 1, :, rows])[0]
        return single
    pair = softmax(logits[index:index + 2, :, rows])
    # (p + mirror(q)) / 2 in float32, in place: the same roundings without two more tile-sized arrays
    averaged: NDArray[np.float32] = pair[0]
    averaged += pair[1][:, :, ::-1]
    averaged /= np.float32(2)
    return averaged


def strip_rows(classes: int, tile: tuple[int, int]) -> int:
    """Tile rows per softmax in :func:`scale_probs_chw`: about :data:`STRIP_VALUES` logits."""
    return max(1, min(tile[0], STRIP_VALUES // (classes * tile[1])))


def scale_probs_hwc(geom: ScaleGeometry, tile: tuple[int, int], logits: NDArray[np.float32]) -> Chunks:
    """One scale's probabilities, (h, w, classes) per channel range of :func:`channel_chunks`.

    More than 128 classes are kept in channel ranges so that each resizes with
    one OpenCV call and no strided copies. Windows are the outer loop, so each
    window's softmax is computed once and never kept.
    """
    h, w = geom.size
    ranges = channel_chunks(logits.shape[1])
    # a lone window covers the whole image: 0 + p and p / 1 are p, so assign and skip the division
    alone = geom.num_windows == 1
    sums = [(np.empty if alone else np.zeros)((h, w, b - a), dtype=np.float64) for a, b in ranges]
    for k, (ty, tx), (iy, ix) in overlaps(geom, tile):
        probs = window_probs(logits, k, geom.flip)[:, ty, tx]
        for (a, b), acc in zip(ranges, sums, strict=True):
            part = probs[a:b].transpose(1, 2, 0)
            if alone:
                acc[...] = part
            else:
                acc[iy, ix] += part
        del probs, part  # before the next window's softmax: one tile-sized array alive, not two
    if not alone:
        counts = cover(geom, tile)[:, :, None]
        for acc in sums:
            acc /= counts
    return list(zip(ranges, sums, strict=True))


class ScaleSum:
    """One scale's probabilities built window by window as its tiles' logits arrive: the numbers
    of :func:`scale_probs_hwc`, as one (classes, h, w) array.

    :meth:`add` takes the logits of consecutive tiles in plan order (a window and its mirror in
    the same call); each window is added as it comes and its logits can go, so a request never
    holds more than the tiles in flight. Windows are taken a strip of rows at a time: the
    softmax of a whole tile of 150 classes at 473x473 is 134 MB, of a strip 16 MB.
    """

    def __init__(self, geom: ScaleGeometry, tile: tuple[int, int], classes: int) -> None:
        self.geom = geom
        self.tile = tile
        h, w = geom.size
        self._alone = geom.num_windows == 1
        self.sum = (np.empty if self._alone else np.zeros)((classes, h, w), dtype=np.float64)
        self._windows = list(overlaps(geom, tile))
        self._next_window = 0
        self.received = 0  # tiles of this scale whose logits were added (or were padding only)

    @property
    def complete(self) -> bool:
        return self.received == self.geom.num_tiles

    def add(self, logits: NDArray[np.float32], first: int) -> None:
        """Add the windows among tiles ``first .. first + len(logits)`` (plan indices, consecutive
        with what came before)."""
        start = self.geom.first + self.received
        if first != start or len(logits) > self.geom.num_tiles - self.received:
            left = self.geom.num_tiles - self.received
            raise ValueError(f"expected tiles from {start} on, at most {left}; "
                             f"got {len(logits)} from {first}")
        if self.geom.flip and len(logits) % 2:
            raise ValueError("a window and its mirror must come in the same call")
        stop = first + len(logits)
        step = strip_rows(self.sum.shape[0], self.tile)
        while self._next_window < len(self._windows) and self._windows[self._next_window][0] < stop:
            k, (ty, tx), (iy, ix) = self._windows[self._next_window]
            for top in range(ty.start, ty.stop, step):
                rows = slice(top, min(top + step, ty.stop))
                into = slice(iy.start + top - ty.start, iy.start + rows.stop - ty.start)
                part = window_probs(logits, k - first, self.geom.flip, rows)[:, :, tx]
                if self._alone:
                    self.sum[:, into] = part
                else:
                    self.sum[:, into, ix] += part
                del part  # before the next strip's softmax: one strip-sized array alive, not two
            self._next_window += 1
        self.received += len(logits)

    def result(self) -> NDArray[np.float64]:
        """The scale's (classes, h, w) probabilities; the sum is divided in place (call once)."""
        if not self.complete:
            raise ValueError(f"{self.geom.num_tiles - self.received} tiles of this scale have not arrived")
        if not self._alone:
            self.sum /= cover(self.geom, self.tile)
        return self.sum


def scale_probs_chw(geom: ScaleGeometry, tile: tuple[int, int],
                    logits: NDArray[np.float32]) -> NDArray[np.float64]:
    """One scale's probabilities as one (classes, h, w) array, from the logits of every tile of the
    plan (:class:`ScaleSum` fed this scale's tiles at once)."""
    built = ScaleSum(geom, tile, logits.shape[1])
    built.add(logits[geom.first:geom.first + geom.num_tiles], geom.first)
    return built.result()
