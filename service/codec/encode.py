"""Label map -> response bytes: colour mask, label PNG, overlay, JSON summary (docs/DESIGN.md "Service").

Every function takes ``labels``, an H x W map of class ids (uint8 or uint16,
as the stitcher's argmax produces), and checks them against the model's
classes: an id outside the palette is a bug upstream, a ValueError here, not
a silently wrong colour. Runs in worker threads; each function makes one
pass to check and at most one image-sized temporary besides the encoder's
own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Annotated, Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads typing's own only from Python 3.12

from service.contract.artifact import label_dtype

# zlib level for every PNG written here. Measured on ten CamVid 360x480 label
# maps, 12 colours, CPU time per encode on a loaded 2-core box, two runs of
# benchmarks/speed/png_levels.py; colour mask / label PNG:
#   level 0: 85 / 169 KiB, 1.4-1.9 / 1.8-2.3 ms   (stored, no compression)
#   level 1: 6.3 / 7.1 KiB, 1.3-1.6 / 2.2-2.9 ms
#   level 3: 5.9 / 6.5 KiB, 1.9-2.3 / 3.0 ms
#   level 6: 5.2 / 5.3 KiB, 3.2-3.8 / 3.6-4.1 ms   (Pillow's default)
#   level 9: 4.4 / 4.6 KiB, 22-23 / 20-21 ms
# Level 1 costs about a kilobyte over the default and halves the time.
PNG_COMPRESS_LEVEL = 1
OverlayFormat = Literal["jpeg", "png"]
Palette = Sequence[Sequence[int]] | np.ndarray
RGB = Annotated[list[int], Field(min_length=3, max_length=3, description="red, green, blue (0-255)")]


class ClassShare(TypedDict):
    """A class present in the image and the share of pixels it covers."""

    id: int
    name: str
    color: RGB
    pixels: int
    fraction: Annotated[float, Field(ge=0, le=1, description="of all pixels")]


def palette_array(palette: Palette) -> np.ndarray:
    """The palette as a (C, 3) uint8 array; a ValueError if it is not C RGB triples in 0..255."""
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 1:
        raise ValueError(f"palette must be C x 3 RGB triples, got shape {pal.shape}")
    if not np.issubdtype(pal.dtype, np.integer) or pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette values must be integers in 0..255")
    return pal.astype(np.uint8)


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """A ValueError unless ``labels`` is a 2-D uint8/uint16 map of ids below ``num_classes``."""
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"labels must be H x W uint8 or uint16, got {labels.dtype} {labels.shape}")
    if labels.size == 0:
        raise ValueError("labels are empty")
    top = int(labels.max())
    if top >= num_classes:
        raise ValueError(f"label {top} is not a class id (the model has {num_classes} classes)")


def encode_color_png(labels: np.ndarray, palette: Palette) -> bytes:
    """The colour mask as a paletted PNG: index = class id, so it is exact and small.

    Pillow stores as few bits per pixel as the palette needs (4 for CamVid's
    12 classes). Beyond 256 classes no PNG palette can hold them, so the mask
    is an RGB PNG instead (same colours, still lossless).
    """
    pal = palette_array(palette)
    check_labels(labels, len(pal))
    if len(pal) <= 256:
        im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # mode L
        im.putpalette(pal.tobytes(), "RGB")  # L becomes P with exactly these C colours
    else:
        im = Image.fromarray(pal[labels])
    return _png(im)


def encode_label_png(labels: np.ndarray, num_classes: int) -> bytes:
    """Class ids as greyscale PNG pixels: 8-bit, or 16-bit when there are more than 256 classes."""
    check_labels(labels, num_classes)
    return _png(Image.fromarray(np.ascontiguousarray(labels, dtype=label_dtype(num_classes))))  # L or I;16


def encode_probability_png(values: np.ndarray) -> bytes:
    """Probabilities in [0, 1] as an 8-bit greyscale PNG: ``round(255 * p)`` (1/510 at most off)."""
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map of probabilities, got shape {values.shape}")
    levels = np.rint(np.clip(values, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    return _png(Image.fromarray(levels))  # L


def encode_overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    palette: Palette,
    *,
    alpha: float = 0.5,
    fmt: OverlayFormat = "jpeg",
    quality: int = 90,
) -> bytes:
    """The input blended with its colour mask: ``(1 - alpha) * rgb + alpha * colour``, rounded."""
    pal = palette_array(palette)
    check_labels(labels, len(pal))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != labels.shape:
        raise ValueError(f"rgb must be uint8 {labels.shape} x 3 to match the labels, "
                         f"got {rgb.dtype} {rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"overlay format must be 'jpeg' or 'png', got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    colours = pal[labels]  # H x W x 3, the one image-sized temporary
    # One SIMD pass, rounded and saturated: cheaper than numpy's float or
    # widened-integer temporaries.
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colours, alpha, 0.0)
    im = Image.fromarray(blended)
    if fmt == "png":
        return _png(im)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def class_summary(
    labels: np.ndarray, classes: Sequence[str], palette: Palette
) -> list[ClassShare]:
    """``{"id", "name", "color", "pixels", "fraction"}`` for each class present, by id."""
    pal = palette_array(palette)
    if len(classes) != len(pal):
        raise ValueError(f"{len(classes)} classes but {len(pal)} palette colours")
    check_labels(labels, len(classes))
    counts = np.bincount(labels.reshape(-1), minlength=len(classes))
    total = int(labels.size)
    return [
        ClassShare(id=i, name=classes[i], color=[int(c) for c in pal[i]],
                   pixels=int(counts[i]), fraction=int(counts[i]) / total)
        for i in map(int, np.flatnonzero(counts))
    ]


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
