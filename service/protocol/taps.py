"""OpenCV's bilinear resize written as taps: the two source pixels and two weights behind each output pixel.

``cv2.resize(src, dsize, interpolation=cv2.INTER_LINEAR)`` on float64 data is
separable (OpenCV's ``resizeGeneric_``, no SIMD for doubles). Per output column
``dx`` it computes ``fx = float32((dx + 0.5) * scale - 0.5)``, ``sx = floor(fx)``,
``fx -= sx`` in float32, clamps ``sx`` into the image and sets ``fx = 0`` where
it had to; each source row becomes ``S[sx] * (1 - fx) + S[sx + 1] * fx`` in
float64 with float32 weights. Rows go the same way, except that the weights of
the rows are NOT zeroed at the borders, only the row indices clamped: the top
output rows of an upscale mix row 0 with itself, ``r * (1 - fy) + r * fy``,
which can differ from ``r`` by one ulp. :class:`Taps` holds those indices and
weights for one axis, so that the stitcher can evaluate any single output pixel
of a resize, bit for bit, without computing the others.

Two cases do not follow that arithmetic, and :func:`opencv_is_separable` says
when: an exact halving of both sides (OpenCV averages 2x2 blocks instead), and
channel counts that OpenCV hands to IPP (1, 3 and 4 with the pip wheels; IPP
computes its own coordinates, up to 3e-5 away). The second is found by a probe
of the installed OpenCV, not assumed, once per channel count.

Tested by tests/service/protocol/test_stitch.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.protocol.resize import channel_chunks, resize_linear


@dataclass(frozen=True)
class Taps:
    """Output index ``i`` along one axis is ``src[lo[i]] * w_lo[i] + src[hi[i]] * w_hi[i]``."""

    lo: NDArray[np.intp]
    hi: NDArray[np.intp]  # lo + 1, or lo itself at the far border
    w_lo: NDArray[np.float64]  # float32 weights, widened as OpenCV widens them
    w_hi: NDArray[np.float64]
    identity: bool  # same length in and out: OpenCV uses the source values as they are

    @property
    def size(self) -> int:
        return int(self.lo.shape[0])


def identity_taps(n: int) -> Taps:
    index = np.arange(n, dtype=np.intp)
    return Taps(index, index, np.ones(n), np.zeros(n), identity=True)


def linear_taps(n_in: int, n_out: int, *, zero_border_weights: bool) -> Taps:
    """OpenCV's INTER_LINEAR indices and weights along an axis of ``n_in`` -> ``n_out`` pixels.

    ``zero_border_weights``: True for columns, False for rows (see the module docstring).
    """
    if n_in == n_out:
        return identity_taps(n_in)
    scale = 1.0 / (n_out / n_in)  # OpenCV: inv_scale = dsize / ssize, scale = 1 / inv_scale
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(f).astype(np.intp)
    f = f - start.astype(np.float32)  # float32, as fx -= sx
    if zero_border_weights:
        f[(start < 0) | (start >= n_in - 1)] = 0
    lo = np.clip(start, 0, n_in - 1)
    hi = np.clip(start + 1, 0, n_in - 1)
    return Taps(lo, hi, (np.float32(1) - f).astype(np.float64), f.astype(np.float64), identity=False)


def resize_taps(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[Taps, Taps]:
    """(rows, columns) taps of a resize from ``src_size`` to ``dst_size``, both (height, width)."""
    return (linear_taps(src_size[0], dst_size[0], zero_border_weights=False),
            linear_taps(src_size[1], dst_size[1], zero_border_weights=True))


def apply_taps(src: NDArray[np.float64], rows: Taps, cols: Taps) -> NDArray[np.float64]:
    """The whole resize of a ``(..., h, w)`` array from its taps: the separable arithmetic above."""
    if not cols.identity:
        src = src[..., cols.lo] * cols.w_lo + src[..., cols.hi] * cols.w_hi
    if not rows.identity:
        src = src[..., rows.lo, :] * rows.w_lo[:, None] + src[..., rows.hi, :] * rows.w_hi[:, None]
    return src


def halves_both_sides(src_size: tuple[int, int], dst_size: tuple[int, int]) -> bool:
    """OpenCV turns INTER_LINEAR into 2x2 averaging when the scale is exactly 2 on both axes."""
    return src_size[0] == 2 * dst_size[0] and src_size[1] == 2 * dst_size[1]


@functools.lru_cache(maxsize=64)
def _probe(channels: int) -> bool:
    """Does this OpenCV resize ``channels`` float64 channels with the taps' arithmetic? (up and down)"""
    rng = np.random.default_rng(channels)
    src = rng.random((23, 37, channels))
    for dst in ((61, 90), (10, 15)):
        expected = resize_linear(src, dst).transpose(2, 0, 1)
        if not np.array_equal(apply_taps(src.transpose(2, 0, 1), *resize_taps((23, 37), dst)), expected):
            return False
    return True


def opencv_is_separable(channels: int, src_size: tuple[int, int], dst_size: tuple[int, int]) -> bool:
    """Whether :func:`service.protocol.resize.resize_linear` of ``channels`` float64 channels equals the taps.

    Arrays wider than OpenCV's channel limit are resized in chunks: each chunk's
    width is probed.
    """
    if src_size == dst_size:
        return True
    if halves_both_sides(src_size, dst_size):
        return False
    return all(_probe(stop - start) for start, stop in channel_chunks(channels))

