"""The fast decoders (simplejpeg for JPEG, cv2 for plain PNGs) against the Pillow path they replace.

The reference is ``decode_image(..., fast_decoders=False)``, the decoder as it
was: for every input here both must give the same outcome, the same
exception class or the same pixels, orientation, mode and flags. The fast
path must also really be taken where it should (Pillow's pixel loader is made
to fail) and not where it should not.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps
from PIL.PngImagePlugin import PngInfo

import service.codec.decode as decode_module
from service.codec.decode import DecodedImage, decode_image
from service.codec.sniff import MAX_STEPS, is_plain_png
from service.errors import ServiceError
from tests.service import hostile_images as hi

LIMITS = {"max_bytes": 8 << 20, "max_pixels": 4_000_000}


def _software_text() -> PngInfo:
    info = PngInfo()
    info.add_text("Software", "a tool that writes exif and XML:com.adobe.xmp in its name")
    return info


def _png_with_chunk_before_idat(png: bytes, kind: bytes, payload: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + hi.png_chunk(kind, payload) + png[at:]


def _exif_payload(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes().removeprefix(b"Exif\x00\x00")


def _raw_profile(orientation: int) -> bytes:
    """ImageMagick's way of keeping EXIF in a PNG text chunk: a header, then the block in hex."""
    block = b"Exif\x00\x00" + _exif_payload(orientation)
    return f"\nexif\n{len(block):8d}\n{block.hex()}\n".encode()
RGB = hi.pattern(48, 64)
ALPHA = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # every level, 0 to 255
needs_simplejpeg = pytest.mark.skipif(decode_module._SIMPLEJPEG is None, reason="simplejpeg not installed")


def outcome(data: bytes, fast: bool) -> DecodedImage | type[ServiceError]:
    try:
        return decode_image(data, content_type=None, fast_decoders=fast, **LIMITS)
    except ServiceError as e:
        return type(e)


def assert_same(data: bytes) -> DecodedImage | type[ServiceError]:
    """Fast and Pillow-only decoding agree on ``data``; the fast outcome."""
    fast, slow = outcome(data, True), outcome(data, False)
    if isinstance(slow, DecodedImage):
        assert isinstance(fast, DecodedImage), fast
        assert np.array_equal(fast.rgb, slow.rgb)
        assert (fast.format, fast.mode, fast.orientation, fast.was_animated) == (
            slow.format, slow.mode, slow.orientation, slow.was_animated)
        assert fast.rgb.flags.c_contiguous and not fast.rgb.flags.writeable
    else:
        assert fast is slow, (fast, slow)
    return fast


@pytest.fixture
def pillow_never_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("Pillow decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# -- what takes the fast path ----------------------------------------------------------------------

FAST_PNG: dict[str, bytes] = {
    "rgb": hi.encode(Image.fromarray(RGB), "PNG"),
    "rgb-level-9": hi.encode(Image.fromarray(RGB), "PNG", compress_level=9),
    "rgb-interlaced": hi.encode(Image.fromarray(RGB), "PNG", interlace=1),
    "rgba": hi.encode(Image.fromarray(np.dstack([RGB, ALPHA])), "PNG"),
    "rgba-interlaced": hi.encode(Image.fromarray(np.dstack([RGB, ALPHA])), "PNG", interlace=1),
    "grey": hi.encode(Image.fromarray(RGB[:, :, 1]), "PNG"),
    "with-text": hi.encode(Image.fromarray(RGB), "PNG", pnginfo=_software_text()),
    "trailing-bytes": hi.encode(Image.fromarray(RGB), "PNG") + b"after IEND",
    # colour-management and background chunks: Pillow ignores them, and so must the fast decoder
    # (no gamma correction, no compositing of transparent pixels over bKGD)
    "gamma": _png_with_chunk_before_idat(hi.encode(Image.fromarray(RGB), "PNG"), b"gAMA",
                                         struct.pack(">I", 100000)),
    "significant-bits": _png_with_chunk_before_idat(hi.encode(Image.fromarray(RGB), "PNG"), b"sBIT",
                                                    bytes([5, 6, 5])),
    "srgb-intent": _png_with_chunk_before_idat(hi.encode(Image.fromarray(RGB), "PNG"), b"sRGB", b"\x01"),
    "icc-profile": hi.encode(Image.fromarray(RGB), "PNG",
                             icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
    "rgba-transparent-over-background": _png_with_chunk_before_idat(
        hi.encode(Image.fromarray(np.dstack([RGB, np.zeros_like(ALPHA)])), "PNG"), b"bKGD",
        struct.pack(">HHH", 255, 0, 0)),
}
FAST_JPEG: dict[str, bytes] = {
    "baseline": hi.encode(Image.fromarray(RGB), "JPEG", quality=90),
    "progressive": hi.encode(Image.fromarray(RGB), "JPEG", progressive=True),
    "444": hi.encode(Image.fromarray(RGB), "JPEG", subsampling=0),
    "422": hi.encode(Image.fromarray(RGB), "JPEG", subsampling=1),
    "restart-markers": hi.encode(Image.fromarray(RGB), "JPEG", restart_marker_blocks=1),
    "grey": hi.encode(Image.fromarray(RGB[:, :, 0]), "JPEG"),
    "odd-size": hi.encode(Image.fromarray(hi.pattern(37, 53)), "JPEG"),
    "exif-6": hi.with_exif_orientation(Image.fromarray(RGB), "JPEG", 6),
    "trailing-bytes": hi.encode(Image.fromarray(RGB), "JPEG") + b"after EOI",
}


def _png_with_text(key: bytes, value: bytes = b"x", kind: bytes = b"tEXt") -> bytes:
    return _png_with_chunk_before_idat(hi.encode(Image.fromarray(RGB), "PNG"), kind, key + b"\0" + value)


def _png_with_chunk_after_idat(kind: bytes, payload: bytes) -> bytes:
    png = hi.encode(Image.fromarray(RGB), "PNG")
    return png[:-12] + hi.png_chunk(kind, payload) + png[-12:]  # just before IEND


@pytest.mark.parametrize("name", sorted(FAST_PNG))
def test_plain_pngs_decode_without_pillow_and_equal_it(name: str, pillow_never_decodes: None) -> None:
    data = FAST_PNG[name]
    assert is_plain_png(data)
    out = decode_image(data, content_type=None, **LIMITS)
    assert out.rgb.shape == (48, 64, 3) and out.orientation == 1


@pytest.mark.parametrize("name", sorted(FAST_PNG))
def test_plain_pngs_equal_the_pillow_path(name: str) -> None:
    assert isinstance(assert_same(FAST_PNG[name]), DecodedImage)


@needs_simplejpeg
@pytest.mark.parametrize("name", sorted(FAST_JPEG))
def test_jpegs_decode_without_pillow(name: str, pillow_never_decodes: None) -> None:
    out = decode_image(FAST_JPEG[name], content_type=None, **LIMITS)
    assert out.format == "JPEG" and out.rgb.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(FAST_JPEG))
def test_jpegs_equal_the_pillow_path(name: str) -> None:
    assert isinstance(assert_same(FAST_JPEG[name]), DecodedImage)


@pytest.mark.parametrize("name", ["rgba", "rgba-transparent-over-background"])
def test_alpha_is_dropped_not_composited(name: str) -> None:
    out = decode_image(FAST_PNG[name], content_type=None, **LIMITS)
    assert out.mode == "RGBA" and np.array_equal(out.rgb, RGB)


PILLOW_ONLY: dict[str, bytes] = {
    "png-16-bit-grey": hi.encode(Image.fromarray(RGB[:, :, 0].astype(np.uint16) * 257), "PNG"),
    "png-16-bit-rgb": hi.png16_rgb(RGB.astype(np.uint16) * 257),
    "png-palette": hi.encode(Image.fromarray(RGB).convert("P"), "PNG"),
    "png-grey-alpha": hi.encode(Image.fromarray(np.dstack([RGB[:, :, 0], ALPHA]), "LA"), "PNG"),
    "png-bilevel": hi.encode(Image.fromarray(RGB[:, :, 0] > 128), "PNG"),
    "png-rgb-trns": hi.encode(Image.fromarray(RGB), "PNG", transparency=(1, 2, 3)),
    "png-grey-trns": hi.encode(Image.fromarray(RGB[:, :, 0]), "PNG", transparency=7),
    "apng": hi.animated("PNG", [(255, 0, 0), (0, 255, 0)]),
    "png-exif": hi.with_exif_orientation(Image.fromarray(RGB), "PNG", 6),
    "png-exif-after-idat": _png_with_chunk_after_idat(b"eXIf", _exif_payload(3)),
    "png-text-exif": _png_with_text(b"exif", b"MM\0*"),
    "png-raw-profile": _png_with_text(b"Raw profile type exif", b"\0" + zlib.compress(_raw_profile(8)),
                                      kind=b"zTXt"),
    "png-xmp": _png_with_text(b"XML:com.adobe.xmp", b"\0\0\0\0<x tiff:Orientation=\"6\"/>", kind=b"iTXt"),
    "jpeg-cmyk": hi.encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("name", sorted(PILLOW_ONLY))
def test_other_kinds_stay_on_pillow(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = PILLOW_ONLY[name]
    if name.startswith("png"):
        assert not is_plain_png(data)
    loads = []
    real = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        loads.append(self.format)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    assert isinstance(assert_same(data), DecodedImage)
    assert loads  # Pillow decoded it


@pytest.mark.parametrize(("name", "orientation"),
                         [("png-xmp", 6), ("png-exif", 6), ("png-exif-after-idat", 3),
                          ("png-raw-profile", 8)])
def test_png_orientation_is_still_applied(name: str, orientation: int) -> None:
    out = assert_same(PILLOW_ONLY[name])
    assert isinstance(out, DecodedImage) and out.orientation == orientation
    assert out.rgb.shape == ((64, 48, 3) if orientation >= 5 else (48, 64, 3))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_from_the_header(orientation: int) -> None:
    stored = hi.unique_pixels(4, 6)
    data = hi.with_exif_orientation(Image.fromarray(stored), "JPEG", orientation, quality=100, subsampling=0)
    out = assert_same(data)
    with Image.open(io.BytesIO(data)) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert isinstance(out, DecodedImage) and out.orientation == orientation
    assert np.array_equal(out.rgb, reference)


def test_without_simplejpeg_jpegs_take_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "_SIMPLEJPEG", None)
    assert isinstance(assert_same(FAST_JPEG["baseline"]), DecodedImage)


# -- broken files: the same refusal as Pillow's ------------------------------------------------------

@pytest.mark.parametrize("name", ["png-rgb", "png-rgba-interlaced", "jpeg", "jpeg-progressive"])
def test_every_truncation_gets_pillows_answer(name: str) -> None:
    im = Image.fromarray(hi.pattern(24, 32))
    data = {"png-rgb": hi.encode(im, "PNG"),
            "png-rgba-interlaced": hi.encode(im.convert("RGBA"), "PNG", interlace=1),
            "jpeg": hi.encode(im, "JPEG"), "jpeg-progressive": hi.encode(im, "JPEG", progressive=True)}[name]
    refused = 0
    for n in range(1, len(data)):
        refused += not isinstance(assert_same(data[:n]), DecodedImage)
    assert refused > len(data) // 2  # most cuts are refused, and identically


def test_corrupt_idat_checksum_gets_pillows_answer() -> None:
    png = bytearray(FAST_PNG["rgb"])
    crc_at = png.index(b"IDAT") + 4 + struct.unpack(">I", png[png.index(b"IDAT") - 4:png.index(b"IDAT")])[0]
    png[crc_at] ^= 0xFF
    assert is_plain_png(bytes(png))  # the structure is whole; only the CRC is wrong
    assert_same(bytes(png))


# A mutated EXIF block makes Pillow's TIFF tag reader warn: the process's business, not the decoder's.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_seeded_mutations_get_pillows_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """400 mutations (byte flips, noise runs) of PNG and JPEG seeds: identical outcome every time."""
    fast_results: list[bool] = []
    real = decode_module._fast_decode

    def counted(data: bytes, fmt: str, im: Image.Image) -> tuple[np.ndarray, int] | None:
        out = real(data, fmt, im)
        fast_results.append(out is not None)
        return out

    monkeypatch.setattr(decode_module, "_fast_decode", counted)
    im = Image.fromarray(hi.pattern(24, 32))
    seeds = [hi.encode(im, "PNG"), hi.encode(im.convert("RGBA"), "PNG", interlace=1),
             hi.encode(im.convert("L"), "PNG"), hi.encode(im, "JPEG"),
             hi.encode(im, "JPEG", progressive=True), hi.with_exif_orientation(im, "JPEG", 8),
             hi.encode(im.convert("L"), "JPEG")]
    rng = np.random.default_rng(7)
    kinds: dict[str, int] = {}
    for i in range(400):
        data = bytearray(seeds[i % len(seeds)])
        if i % 2:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        else:
            start = int(rng.integers(2, len(data)))
            data[start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        out = assert_same(bytes(data))
        key = "ok" if isinstance(out, DecodedImage) else out.__name__
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds.get("ok", 0) > 40 and kinds.get("UndecodableImage", 0) > 40, kinds
    # both sides of the fast path were exercised: decoded fast, and handed back to Pillow
    assert sum(fast_results) > 40 and fast_results.count(False) > 40, (sum(fast_results), len(fast_results))


# -- is_plain_png ------------------------------------------------------------------------------------

def test_plain_png_needs_a_whole_chunk_list_ending_in_iend() -> None:
    png = FAST_PNG["rgb"]
    assert is_plain_png(png)
    assert not is_plain_png(png[:-12])  # no IEND
    assert not is_plain_png(png[:-13])  # IEND cut
    assert not is_plain_png(png[:40])
    assert not is_plain_png(b"\x89PNG\r\n\x1a\n")
    assert not is_plain_png(FAST_JPEG["baseline"])


def test_plain_png_ignores_other_text_and_private_chunks() -> None:
    assert is_plain_png(_png_with_text(b"Software", b"exif XML:com.adobe.xmp"))
    assert is_plain_png(_png_with_text(b"Comment", b"x", kind=b"zTXt"))
    assert is_plain_png(_png_with_chunk_after_idat(b"prVt", b"eXIf tRNS acTL"))
    assert not is_plain_png(_png_with_chunk_after_idat(b"tEXt", b"exif\0" + bytes(8)))
    assert not is_plain_png(_png_with_text(b"exif"))
    assert not is_plain_png(_png_with_chunk_after_idat(b"tEXt", b"exif"))  # no NUL: the whole text is the key


def test_plain_png_walk_is_bounded() -> None:
    png = FAST_PNG["rgb"]
    idat = png.index(b"IDAT") - 4
    many = png[:idat] + hi.png_chunk(b"prVt", b"") * (MAX_STEPS + 1) + png[idat:]
    assert not is_plain_png(many)  # too many chunks to walk: Pillow decides
    assert isinstance(assert_same(many), DecodedImage)

