"""Every kind of upload the decoder must handle, generated in memory (issue #7 "Hostile images").

Pillow writes the well-formed files; the ones Pillow will not write (16-bit
RGB PNG, decompression bombs: tiny files declaring huge canvases) are put
together here byte by byte from the format specs. Import it as
``from tests.service import hostile_images as hi``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic H x W x 3 uint8 image with some structure (JPEG-friendly) and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 7 % 256], -1)
    return np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)


def unique_pixels(height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 where every pixel differs (for checking where pixels went)."""
    idx = np.arange(height * width, dtype=np.int64).reshape(height, width)
    return np.stack([idx % 256, idx // 256 % 256, 255 - idx % 251], -1).astype(np.uint8)


def with_exif_orientation(im: Image.Image, fmt: str, orientation: int, **params: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif, **params)


def animated(fmt: str, colours: Sequence[tuple[int, int, int]], size: tuple[int, int] = (8, 6),
             **params: object) -> bytes:
    """A multi-frame file, one solid colour per frame (GIF, PNG = APNG, WEBP, TIFF)."""
    frames = [Image.new("RGB", size, c) for c in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


# -- PNG by hand ------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2): Pillow reads these but will not write them."""
    height, width, _ = values.shape
    rows = values.astype(">u2").reshape(height, width * 3).view(np.uint8)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter 0 per row
    return raw_png(width, height, 16, 2, zlib.compress(scanlines.tobytes()))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grey PNG header over a few hundred bytes of zeros."""
    return raw_png(width, height, 8, 0, zlib.compress(bytes(4096), 9))


# -- other bombs: a real small file with its declared size patched -------------------------------

def gif_bomb(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF with logical screen ``screen`` and one frame at ``(left, top, width, height)``.

    The graphic control extension asks for disposal 2, which makes Pillow
    allocate a frame-sized buffer while opening.
    """
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)  # no global colour table
    gce = b"!\xf9\x04" + bytes([2 << 2, 0, 0, 0]) + b"\x00"
    descriptor = b"," + struct.pack("<HHHHB", *frame, 0)
    lzw = b"\x02" + b"\x02\x4c\x01" + b"\x00"  # min code size 2, one tiny sub-block
    return header + gce + descriptor + lzw + b";"


def webp_vp8l_bomb(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + bytes(64)
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_vp8x_bomb(width: int, height: int) -> bytes:
    payload = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk) + 64) + b"WEBP" + chunk + bytes(64)


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG from Pillow) with its SOF0 declaring another size."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def bmp_with_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<Ii", width, height) + data[26:]


def tiff_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a little-endian TIFF from Pillow) with ImageWidth/ImageLength rewritten as LONGs."""
    out = bytearray(data)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", out, at)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", out, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(out)


# -- not images ----------------------------------------------------------------------------------

NON_IMAGES = {
    "text": b"hello, this is not an image\n",
    "json": b'{"image": "cat.png"}',
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "html": b"<!DOCTYPE html><html><body><img src=x></body></html>",
    "zip": b"PK\x03\x04" + bytes(26),
    "zeros": bytes(1024),
    "bm-text": b"BMW 3 series, not a bitmap",
    "riff-wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(24),
}
