"""Window geometry of the paper's inference protocols: sizes, padding, window origins.

Pure arithmetic on image sizes, no pixels: the server can count a request's
tiles from the image header alone. The numbers are those of the official code
(hszhao/semseg ``tool/test.py``, ``test`` and ``scale_process``):

* per scale ``s`` the long side becomes ``round(s * base_size)`` (Python's
  round), the short side ``round(long / long_in * short_in)``;
* the resized image is padded up to the tile, centred, top/left getting
  ``pad // 2`` (the official ``int(pad / 2)``);
* windows every ``ceil(tile * stride_rate)`` pixels, ``ceil((L - tile) / stride)
  + 1`` per axis, the last one moved back to end flush with the far edge.

Tested by tests/service/protocol/test_plan.py and tests/service/protocol/test_peak_bytes.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.contract.artifact import MODES, MULTISCALE, Mode


@dataclass(frozen=True)
class ScaleGeometry:
    """Where one scale's tiles come from, in the coordinates of the resized image.

    ``size`` is the resized image, ``pad`` the (top, left) offset of that image
    in the mean-padded canvas of size ``canvas``; ``rows`` x ``cols`` are the
    window origins in the canvas, visited row-major. Its tiles are
    ``plan.tiles[first : first + num_tiles]``: each window, then (with flip)
    its mirror.
    """

    scale: float | None  # None for ``whole``
    size: tuple[int, int]
    pad: tuple[int, int]
    canvas: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    first: int
    flip: bool

    @property
    def num_windows(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def num_tiles(self) -> int:
        return self.num_windows * (2 if self.flip else 1)


def scaled_size(height: int, width: int, scale: float, base_size: int) -> tuple[int, int]:
    """Image size at ``scale``: long side ``round(scale * base_size)``, aspect kept.

    Python's ``round`` (ties to even) and float division, as the official code.
    """
    long_side = round(scale * base_size)
    if height > width:
        size = (long_side, round(long_side / float(height) * width))
    else:
        size = (round(long_side / float(width) * height), long_side)
    if min(size) < 1:
        raise ValueError(f"scale {scale} (base {base_size}) shrinks a {height}x{width} image to nothing")
    return size


def window_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Window origins along one axis of a canvas at least ``tile`` long.

    ``ceil((length - tile) / stride) + 1`` windows every ``stride`` pixels; the
    last one is moved back so that it ends exactly at ``length``.
    """
    if length < tile:
        raise ValueError(f"canvas of {length} is shorter than the tile {tile}")
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    count = -(-(length - tile) // stride) + 1
    return tuple(min(i * stride + tile, length) - tile for i in range(count))


def _check_args(tile: tuple[int, int], mode: str, scales: Sequence[float] | None, base_size: int,
                stride_rate: float) -> tuple[float, ...]:
    if tile[0] < 1 or tile[1] < 1:
        raise ValueError(f"tile {tile} must be positive")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if mode == "whole":
        # the image goes into the tile once: [1.0] is the only list that means anything
        if scales is not None and tuple(scales) != (1.0,):
            raise ValueError(f"mode 'whole' takes no scales, got {list(scales)}")
        return ()
    chosen = tuple(float(s) for s in (scales if scales is not None else
                                      ((1.0,) if mode == "slide" else MULTISCALE)))
    if not chosen or not all(math.isfinite(s) and s > 0 for s in chosen):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    if base_size < 1:
        raise ValueError(f"base_size must be positive, got {base_size}")
    if not 0 < stride_rate <= 1:
        raise ValueError(f"stride_rate must be in (0, 1], got {stride_rate}")
    return chosen


def plan_geometry(height: int, width: int, *, tile: tuple[int, int], mode: Mode,
                  scales: Sequence[float] | None = None, flip: bool = False, base_size: int = 512,
                  stride_rate: float = 2 / 3) -> tuple[ScaleGeometry, ...]:
    """The windows of every scale for an image of this size, without touching pixels.

    Cheap: the server can count a request's tiles from the image header alone.
    ``scales`` defaults to ``[1.0]`` for ``slide`` and the paper's six for
    ``multiscale``; ``whole`` takes none.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} is empty")
    chosen = _check_args(tile, mode, scales, base_size, stride_rate)
    th, tw = tile
    if mode == "whole":
        return (ScaleGeometry(None, tile, (0, 0), tile, (0,), (0,), 0, flip),)
    # as the official code: int(np.ceil(crop * stride_rate)), computed in float64
    stride_h = math.ceil(th * stride_rate)
    stride_w = math.ceil(tw * stride_rate)
    out: list[ScaleGeometry] = []
    first = 0
    for s in chosen:
        h, w = scaled_size(height, width, s, base_size)
        pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
        canvas = (h + pad_h, w + pad_w)
        geom = ScaleGeometry(s, (h, w), (pad_h // 2, pad_w // 2), canvas,
                             window_starts(canvas[0], th, stride_h), window_starts(canvas[1], tw, stride_w),
                             first, flip)
        out.append(geom)
        first += geom.num_tiles
    return tuple(out)


def count_tiles(geometry: Sequence[ScaleGeometry]) -> int:
    """Tiles a plan with this geometry holds (what a request puts in the queue)."""
    return sum(g.num_tiles for g in geometry)


def _coverage(starts: tuple[int, ...], tile: int, lo: int, hi: int) -> NDArray[np.float64]:
    """How many windows cover each canvas pixel of [lo, hi) along one axis."""
    count = np.zeros(hi - lo, dtype=np.float64)
    for s in starts:
        count[max(s, lo) - lo:max(min(s + tile, hi) - lo, 0)] += 1
    return count


#: one window's overlap with the resized image: its tile index, the slices in the tile and in the image
Overlap = tuple[int, tuple[slice, slice], tuple[slice, slice]]


def overlaps(geom: ScaleGeometry, tile: tuple[int, int]) -> Iterator[Overlap]:
    """The windows of a scale that overlap the resized image, in the order the official code adds them."""
    th, tw = tile
    (top, left), (h, w) = geom.pad, geom.size
    step = 2 if geom.flip else 1  # a window's tile index: its mirror, if any, follows it
    for i, (y, x) in enumerate(itertools.product(geom.rows, geom.cols)):  # row-major, as plan_tiles cut them
        y0, y1 = max(y, top), min(y + th, top + h)
        x0, x1 = max(x, left), min(x + tw, left + w)
        if y0 < y1 and x0 < x1:
            yield (geom.first + i * step, (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)),
                   (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)))


def cover(geom: ScaleGeometry, tile: tuple[int, int]) -> NDArray[np.float64]:
    """Windows covering each pixel of the resized image: (row count) x (column count), as they form a grid."""
    (top, left), (h, w) = geom.pad, geom.size
    return np.multiply.outer(_coverage(geom.rows, tile[0], top, top + h),
                             _coverage(geom.cols, tile[1], left, left + w))
