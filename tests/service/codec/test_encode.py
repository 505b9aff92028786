"""Encoders: the bytes decode back to exactly the labels and palette they were given."""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from service.codec.encode import (
    check_labels,
    class_summary,
    encode_color_png,
    encode_label_png,
    encode_overlay,
    palette_array,
)
from tests.bounds import within
from tests.service import hostile_images as hi

H, W = 36, 48
CAMVID_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CLASSES = [f"class{i}" for i in range(len(CAMVID_PALETTE))]


def blobs(num_classes: int, dtype: type = np.uint8, seed: int = 0, shape: tuple[int, int] = (H, W),
          noise: bool = True) -> np.ndarray:
    """A label map of rectangles (like a segmentation) over a random (or class 0) background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape) if noise else np.zeros(shape, np.int64)
    for _ in range(12):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[y:y + shape[0] // 3, x:x + shape[1] // 3] = rng.integers(0, num_classes)
    return labels.astype(dtype)


def random_palette(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3)).astype(np.uint8)


def open_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# -- colour mask -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_color_png_is_paletted_and_exact(dtype: type) -> None:
    labels = blobs(len(CAMVID_PALETTE), dtype)
    im = open_png(encode_color_png(labels, CAMVID_PALETTE))
    assert im.mode == "P" and im.size == (W, H)
    assert np.array_equal(np.asarray(im), labels)  # indices are the class ids
    stored = np.array(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
    assert np.array_equal(stored[: len(CAMVID_PALETTE)], np.array(CAMVID_PALETTE, np.uint8))
    assert np.array_equal(np.asarray(im.convert("RGB")), np.array(CAMVID_PALETTE, np.uint8)[labels])


def test_color_png_uses_few_bits_for_few_classes() -> None:
    labels = blobs(len(CAMVID_PALETTE))
    data = encode_color_png(labels, CAMVID_PALETTE)
    bit_depth = data[24]  # IHDR: width (4), height (4), bit depth
    assert bit_depth == 4
    assert len(data) < H * W // 2  # smaller than the raw 4-bit pixels


def test_color_png_with_256_classes_and_beyond() -> None:
    pal = random_palette(256)
    labels = blobs(256)
    im = open_png(encode_color_png(labels, pal))
    assert im.mode == "P" and np.array_equal(np.asarray(im), labels)
    # 300 classes do not fit a PNG palette: an RGB PNG with the same colours.
    pal = random_palette(300)
    labels = blobs(300, np.uint16)
    im = open_png(encode_color_png(labels, pal))
    assert im.mode == "RGB" and np.array_equal(np.asarray(im), pal[labels])


# -- label PNG -------------------------------------------------------------------------------------

def test_label_png_8_bit() -> None:
    labels = blobs(150)  # ADE20K
    data = encode_label_png(labels, 150)
    im = open_png(data)
    assert im.mode == "L" and data[24] == 8
    assert np.array_equal(np.asarray(im), labels)


def test_label_png_16_bit_beyond_256_classes() -> None:
    labels = blobs(1000, np.uint16)
    labels[0, 0] = 999
    data = encode_label_png(labels, 1000)
    im = open_png(data)
    assert data[24] == 16 and im.mode == "I;16"
    assert np.array_equal(np.asarray(im), labels)
    # uint16 labels of a small model still give an 8-bit PNG.
    assert open_png(encode_label_png(blobs(12, np.uint16), 12)).mode == "L"


def test_label_png_decodes_with_opencv_too() -> None:
    labels = blobs(1000, np.uint16)
    back = cv2.imdecode(np.frombuffer(encode_label_png(labels, 1000), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back is not None and back.dtype == np.uint16 and np.array_equal(back, labels)


# -- overlay ---------------------------------------------------------------------------------------

def test_overlay_png_is_the_rounded_blend() -> None:
    rgb, labels = hi.pattern(H, W), blobs(len(CAMVID_PALETTE))
    colours = np.array(CAMVID_PALETTE, np.float64)[labels]
    for alpha in (0.0, 0.3, 0.5, 1.0):
        im = open_png(encode_overlay(rgb, labels, CAMVID_PALETTE, alpha=alpha, fmt="png"))
        assert im.mode == "RGB" and im.size == (W, H)
        exact = (1 - alpha) * rgb + alpha * colours
        # cv2.addWeighted rounds to the nearest integer: measured max |diff| from the exact float64
        # blend 0.5 + 2.8e-14 (ties, and 0.3 not being exact in binary).
        within("encode.overlay_blend", np.abs(np.asarray(im) - exact).max(), 0.5 + 1e-9)
    untouched = open_png(encode_overlay(rgb, labels, CAMVID_PALETTE, alpha=0.0, fmt="png"))
    assert np.array_equal(np.asarray(untouched), rgb)


def test_overlay_jpeg() -> None:
    labels = blobs(len(CAMVID_PALETTE), noise=False)
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 255 // (W - 1), y * 255 // (H - 1), np.full_like(x, 96)], -1).astype(np.uint8)
    exact = 0.5 * rgb + 0.5 * np.array(CAMVID_PALETTE, np.float64)[labels]
    errors, sizes = [], []
    for quality in (90, 30):
        data = encode_overlay(rgb, labels, CAMVID_PALETTE, alpha=0.5, quality=quality)
        assert data.startswith(b"\xff\xd8\xff")
        back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
        assert back.shape == (H, W, 3)
        errors.append(np.abs(back - exact).mean())
        sizes.append(len(data))
    # Measured mean |diff| 3.86 at q90 (a 36x48 image is mostly edges, and
    # 4:2:0 chroma smears them), 7.27 at q30.
    assert errors[0] < 4.0
    assert errors[1] > errors[0] and sizes[1] < sizes[0]  # quality is passed through


def test_overlay_accepts_read_only_decoder_output() -> None:
    rgb = hi.pattern(H, W)
    rgb.flags.writeable = False
    assert encode_overlay(rgb, blobs(len(CAMVID_PALETTE)), CAMVID_PALETTE, fmt="png")


@pytest.mark.parametrize("bad", [
    {"alpha": 1.5}, {"alpha": -0.1}, {"fmt": "gif"}, {"quality": 0}, {"quality": 101},
])
def test_overlay_rejects_bad_options(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_overlay(hi.pattern(H, W), blobs(3), CAMVID_PALETTE, **bad)


def test_overlay_rejects_mismatched_image() -> None:
    with pytest.raises(ValueError):
        encode_overlay(hi.pattern(H + 1, W), blobs(3), CAMVID_PALETTE)
    with pytest.raises(ValueError):
        encode_overlay(hi.pattern(H, W).astype(np.float32), blobs(3), CAMVID_PALETTE)


# -- summary ---------------------------------------------------------------------------------------

def test_class_summary() -> None:
    labels = blobs(len(CAMVID_PALETTE))
    labels[labels == 4] = 5  # one class absent
    summary = class_summary(labels, CLASSES, CAMVID_PALETTE)
    ids = [row["id"] for row in summary]
    assert ids == sorted(set(np.unique(labels).tolist())) and 4 not in ids
    for row in summary:
        i = row["id"]
        assert row["name"] == CLASSES[i] and row["color"] == list(CAMVID_PALETTE[i])
        assert row["pixels"] == int((labels == i).sum())
        assert row["fraction"] == row["pixels"] / labels.size
    assert sum(row["pixels"] for row in summary) == labels.size
    # Fractions of a partition: the float sum is 1 up to rounding. Measured |sum - 1| 1.1e-16 here,
    # at most 3.3e-16 over 200 random 37x53 maps.
    assert math.isclose(sum(row["fraction"] for row in summary), 1.0, abs_tol=1e-15)
    assert math.fsum(row["pixels"] for row in summary) / labels.size == 1.0


def test_class_summary_single_class_and_uint16() -> None:
    labels = np.full((3, 5), 7, np.uint16)
    assert class_summary(labels, CLASSES, CAMVID_PALETTE) == [
        {"id": 7, "name": "class7", "color": [64, 64, 128], "pixels": 15, "fraction": 1.0}]


# -- validation shared by all encoders -------------------------------------------------------------

def test_labels_outside_the_palette_are_a_bug_not_a_colour() -> None:
    labels = blobs(len(CAMVID_PALETTE))
    labels[3, 4] = len(CAMVID_PALETTE)
    for call in (lambda: encode_color_png(labels, CAMVID_PALETTE),
                 lambda: encode_label_png(labels, len(CAMVID_PALETTE)),
                 lambda: encode_overlay(hi.pattern(H, W), labels, CAMVID_PALETTE),
                 lambda: class_summary(labels, CLASSES, CAMVID_PALETTE)):
        with pytest.raises(ValueError, match="not a class id"):
            call()


@pytest.mark.parametrize("labels", [np.zeros((2, 2), np.int64), np.zeros((2, 2, 1), np.uint8),
                                    np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.float32)])
def test_check_labels_rejects_bad_arrays(labels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        check_labels(labels, 12)


@pytest.mark.parametrize("palette", [[(0, 0)], [(0, 0, 256)], [(0, 0, -1)], [], [[0.5, 0, 0]]])
def test_palette_array_rejects_bad_palettes(palette: list[Any]) -> None:
    with pytest.raises(ValueError):
        palette_array(palette)


def test_summary_needs_a_name_per_colour() -> None:
    with pytest.raises(ValueError):
        class_summary(blobs(3), CLASSES[:3], CAMVID_PALETTE)


def test_randomized_round_trips() -> None:
    """Seeded: 30 random shapes, class counts (1..1000) and palettes; every encoder round-trips."""
    rng = np.random.default_rng(7)
    for i in range(30):
        n = int(rng.choice([1, 2, 11, 150, 256, 257, 1000]))
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        labels = blobs(n, np.uint8 if n <= 256 else np.uint16, seed=i, shape=shape)
        pal = random_palette(n, seed=i)
        assert np.array_equal(np.asarray(open_png(encode_label_png(labels, n))), labels)
        colour = open_png(encode_color_png(labels, pal))
        assert np.array_equal(np.asarray(colour.convert("RGB")), pal[labels])
        summary = class_summary(labels, [str(k) for k in range(n)], pal)
        assert sum(row["pixels"] for row in summary) == labels.size
