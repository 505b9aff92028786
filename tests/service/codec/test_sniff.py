"""Format and declared size from the header, checked against what Pillow itself reads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.codec.sniff import IMAGE_FORMATS, MAX_STEPS, declared_size, sniff_format
from tests.service import hostile_images as hi

RGB = Image.fromarray(hi.pattern(37, 53))  # odd sizes: width and height cannot be swapped unnoticed

# Every variant Pillow can write for our six formats, including the header
# layouts that differ (VP8 / VP8L / VP8X WebP, big-endian TIFF, BMP v5 with
# alpha, progressive JPEG with EXIF in front of the frame header).
VARIANTS = {
    "png": hi.encode(RGB, "PNG"),
    "png-palette": hi.encode(RGB.convert("P"), "PNG"),
    "apng": hi.animated("PNG", [(1, 2, 3), (4, 5, 6)], size=(53, 37)),
    "jpeg": hi.encode(RGB, "JPEG"),
    "jpeg-progressive-exif": hi.with_exif_orientation(RGB, "JPEG", 6, progressive=True),
    "jpeg-cmyk": hi.encode(RGB.convert("CMYK"), "JPEG"),
    "webp-lossy": hi.encode(RGB, "WEBP"),
    "webp-lossless": hi.encode(RGB, "WEBP", lossless=True),
    "webp-extended": hi.with_exif_orientation(RGB, "WEBP", 3),
    "webp-animated": hi.animated("WEBP", [(1, 2, 3), (4, 5, 6)], size=(53, 37)),
    "gif": hi.encode(RGB, "GIF"),
    "gif-animated": hi.animated("GIF", [(1, 2, 3), (4, 5, 6)], size=(53, 37)),
    "bmp": hi.encode(RGB, "BMP"),
    "bmp-rgba": hi.encode(RGB.convert("RGBA"), "BMP"),
    "tiff": hi.encode(RGB, "TIFF"),
    "tiff-big-endian": hi.encode(Image.new("I;16B", (53, 37)), "TIFF"),  # Pillow writes I;16B as MM
    "tiff-bigtiff": hi.encode(RGB, "TIFF", big_tiff=True),
    "tiff-lzw": hi.encode(RGB, "TIFF", compression="tiff_lzw"),
    "tiff-16bit": hi.encode(Image.fromarray(np.zeros((37, 53), np.uint16)), "TIFF"),
}
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_format_and_size_agree_with_pillow(name: str) -> None:
    data = VARIANTS[name]
    fmt = sniff_format(data)
    assert fmt is not None
    with Image.open(io.BytesIO(data)) as im:
        expected_format = "JPEG" if im.format == "MPO" else im.format
        assert fmt == expected_format
        assert declared_size(data, fmt) == im.size == (53, 37)


def test_one_by_one_in_every_format() -> None:
    one = Image.new("RGB", (1, 1), (9, 8, 7))
    for fmt in IMAGE_FORMATS:
        data = hi.encode(one, fmt)
        assert sniff_format(data) == fmt
        assert declared_size(data, fmt) == (1, 1)


@pytest.mark.parametrize("name", sorted(hi.NON_IMAGES))
def test_non_images_have_no_format(name: str) -> None:
    assert sniff_format(hi.NON_IMAGES[name]) is None


def test_other_image_formats_are_not_ours() -> None:
    # Real images Pillow can read but the service does not accept.
    for fmt in ("ICO", "PPM", "TGA", "PCX", "AVIF"):
        assert sniff_format(hi.encode(Image.new("RGB", (4, 4)), fmt)) is None, fmt


def test_bomb_headers_are_read_without_the_pixels() -> None:
    assert declared_size(hi.png_bomb(60000, 60000), "PNG") == (60000, 60000)
    assert declared_size(hi.gif_bomb((60000, 60000), (0, 0, 1, 1)), "GIF") == (60000, 60000)
    # The first frame reaching past the screen grows the canvas, as in Pillow.
    assert declared_size(hi.gif_bomb((10, 10), (5, 7, 30000, 20000)), "GIF") == (30005, 20007)
    assert declared_size(hi.webp_vp8l_bomb(16384, 16384), "WEBP") == (16384, 16384)
    assert declared_size(hi.webp_vp8x_bomb(2**24, 2**24), "WEBP") == (2**24, 2**24)
    small = Image.new("RGB", (4, 4))
    assert declared_size(hi.jpeg_with_size(hi.encode(small, "JPEG"), 65000, 65001), "JPEG") == (65000, 65001)
    assert declared_size(hi.bmp_with_size(hi.encode(small, "BMP"), 60000, -60001), "BMP") == (60000, 60001)
    assert declared_size(hi.tiff_with_size(hi.encode(small, "TIFF"), 60000, 60001), "TIFF") == (60000, 60001)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_truncated_headers_give_none(fmt: str) -> None:
    data = hi.encode(RGB, fmt)
    for n in (len(sniff_prefix(fmt)), 12, 20):
        assert declared_size(data[:n], fmt) is None, n


def sniff_prefix(fmt: str) -> bytes:
    return {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "WEBP": b"RIFF", "GIF": b"GIF89a",
            "BMP": b"BM", "TIFF": b"II*\x00"}[fmt]


def test_hostile_headers_cost_bounded_steps() -> None:
    # Thousands of 1-byte GIF sub-blocks, or of empty JPEG segments, in front
    # of the frame: the walk gives up (None) instead of crawling the body.
    gif = b"GIF89a" + bytes(7) + b"!\xfe" + b"\x01x" * (2 * MAX_STEPS) + b"\x00" + b"," + bytes(9)
    assert declared_size(gif, "GIF") is None
    jpeg = b"\xff\xd8" + b"\xff\xfe\x00\x02" * (2 * MAX_STEPS) + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10"
    assert declared_size(jpeg, "JPEG") is None
    # ... while a handful of them is fine.
    jpeg_ok = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 10 + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x20"
    assert declared_size(jpeg_ok, "JPEG") == (32, 16)


def test_unknown_format_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        declared_size(b"", "PDF")
