"""Bilinear resize exactly as ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``, any channel count.

The official inference code resizes float images and float64 class probabilities
with OpenCV, so the service does too: the same library call gives the same numbers.
OpenCV 5 refuses arrays of more than 128 channels (``CV_CN_MAX``; it was 512 in
4.x) and ADE20K has 150 classes, so wider arrays are resized in channel chunks.
Bilinear interpolation treats every channel alone, but OpenCV picks its code path
by channel count: with IPP (the pip wheels) arrays of 1 to 4 float channels take
IPP's resize, wider ones OpenCV's own, and the two differ by about 1e-5 on
gradients (OpenCV's own path computes source coordinates in float32). Chunks are
therefore cut as evenly as possible, so that every chunk of an array wider than
128 channels has more than 4 and takes the path an unlimited OpenCV would take.

Tested by tests/service/protocol/test_stitch.py and tests/service/protocol/test_plan.py.
"""

from __future__ import annotations

import itertools
from typing import TypeVar, cast

import cv2
import numpy as np
from numpy.typing import NDArray

#: widest array one cv2.resize call accepts (OpenCV 5.0 ``CV_CN_MAX``)
CV_MAX_CHANNELS = 128

F = TypeVar("F", np.float32, np.float64)


def _check(array: NDArray[np.float32] | NDArray[np.float64], size: tuple[int, int]) -> None:
    if array.ndim not in (2, 3) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"expected an HxW or HxWxC array, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] < 1:
        raise ValueError("array has no channels")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"cannot resize to {size[0]}x{size[1]}")


def channel_chunks(channels: int) -> list[tuple[int, int]]:
    """``[start, stop)`` channel ranges that one cv2.resize call each accepts.

    One range up to 128 channels; beyond, ranges as even as possible, so each
    holds more than 4 channels and takes the same OpenCV code path.
    """
    if channels < 1:
        raise ValueError(f"cannot split {channels} channels")
    chunks = -(-channels // CV_MAX_CHANNELS)
    return list(itertools.pairwise(i * channels // chunks for i in range(chunks + 1)))


#: one group of channels resized at a time by :func:`resize_groups`: its source and resized values
RESIZE_GROUP_BYTES = 2**25


def resize_groups(channels: int, size: tuple[int, int], dsize: tuple[int, int]) -> list[tuple[int, int]]:
    """:func:`channel_groups` of about :data:`RESIZE_GROUP_BYTES` of float64 source and result."""
    per_channel = (size[0] * size[1] + dsize[0] * dsize[1]) * 8
    return channel_groups(channels, max(1, RESIZE_GROUP_BYTES // per_channel))


def channel_groups(channels: int, group: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of about ``group`` channels that resize exactly as the whole array.

    Bilinear resize treats every channel alone, and OpenCV takes the same code path for any
    5 to 128 channels (tests/service/protocol/test_plan.py): so groups are cut inside the ranges
    of :func:`channel_chunks`, each of at least 5 channels, and a range of 4 or fewer (IPP's path)
    is never cut. Resizing group by group holds ``group`` channels of the result at a time.
    """
    if group < 1:
        raise ValueError(f"group must be at least 1, not {group}")
    out = []
    for a, b in channel_chunks(channels):
        parts = max(1, min((b - a) // 5, -(-(b - a) // group)))  # every part keeps at least 5 channels
        out += [(a + i * (b - a) // parts, a + (i + 1) * (b - a) // parts) for i in range(parts)]
    return out


def resize_linear(array: NDArray[F], size: tuple[int, int]) -> NDArray[F]:
    """Resize an ``HxW`` or ``HxWxC`` float array to ``size = (height, width)``.

    The result has the input's dtype (float32 or float64) and layout; each
    channel equals what one ``cv2.resize`` call over all channels computes
    (that call itself when ``C <= 128``).
    """
    _check(array, size)
    h, w = size
    dsize = (w, h)  # OpenCV sizes are (width, height)
    src = np.ascontiguousarray(array)
    channels = 1 if src.ndim == 2 else src.shape[2]
    if channels <= CV_MAX_CHANNELS:
        out = cv2.resize(src, dsize, interpolation=cv2.INTER_LINEAR)
        # OpenCV returns HxW for a single-channel HxWx1 input
        return cast(NDArray[F], out.reshape((h, w) if src.ndim == 2 else (h, w, channels)))
    result = np.empty((h, w, channels), dtype=src.dtype)
    for start, stop in channel_chunks(channels):
        part = np.ascontiguousarray(src[:, :, start:stop])
        result[:, :, start:stop] = cv2.resize(part, dsize, interpolation=cv2.INTER_LINEAR)
    return result
