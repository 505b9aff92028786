"""Property-based fuzzing of the decode path with Hypothesis (issue #7).

The property, for every input: ``decode_image`` returns a well-formed
:class:`DecodedImage` within the pixel limit, or raises a client error
(:class:`ServiceError` 400/413/415/422), never anything else (which the app
would turn into a 500), within a CPU-time bound, and Pillow's own
decompression-bomb warning never fires (our header check must come first).

Inputs: arbitrary bytes; a valid signature followed by arbitrary bytes; real
PNG/JPEG/GIF/WebP files (still, progressive, palette, alpha, animated)
mutated by flips, cuts, insertions, deletions and duplications; and the
fields that declare a size (PNG IHDR, JPEG SOF, GIF screen and frame, WebP
VP8L and VP8X) set to arbitrary values, so the header reader and Pillow are
made to disagree wherever they can.

The seeded, loop-based mutation test in test_decode.py stays: this one
shrinks a failure to a minimal input and reaches the header fields on purpose.
Deterministic (``derandomize=True``, no example database) and bounded.
"""

from __future__ import annotations

import os
import re
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.codec.decode import DecodedImage, decode_image
from service.errors import ServiceError
from tests.service import hostile_images as hi

#: Small limits: every size check is reachable, and a success is cheap to check.
MAX_BYTES, MAX_PIXELS = 64 * 1024, 200_000
#: CPU seconds per input. Measured with time.process_time: the slowest input of the default run
#: took 2.5 ms, of a five-fold run (PSPNET_FUZZ_SCALE=5, about 15,000 inputs) 36 ms, a PNG that
#: inflates to a large canvas within the limit; 0.5 s only trips on a real blow-up.
CPU_BOUND = 0.5
CLIENT_ERRORS = frozenset({400, 413, 415, 422})
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<_io.BytesIO object at 0x7f...>"

#: ``PSPNET_FUZZ_SCALE=100 pytest tests/service/codec/test_decode_fuzz.py`` fuzzes 100 times longer
#: (still deterministic); CI runs the default.
SCALE = int(os.environ.get("PSPNET_FUZZ_SCALE", "1"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=500 * SCALE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_IM = Image.fromarray(hi.pattern(24, 32))
_FRAMES = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
SEEDS: dict[str, bytes] = {
    "png": hi.encode(_IM, "PNG"),
    "png-palette": hi.encode(_IM.convert("P"), "PNG"),
    "png-rgba-interlaced": hi.encode(_IM.convert("RGBA"), "PNG", interlace=1),
    "png-grey16": hi.encode(Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80), "PNG"),
    "apng": hi.animated("PNG", _FRAMES),
    "jpeg": hi.encode(_IM, "JPEG", quality=80),
    "jpeg-progressive": hi.encode(_IM, "JPEG", progressive=True),
    "jpeg-cmyk": hi.encode(_IM.convert("CMYK"), "JPEG"),
    "jpeg-exif": hi.with_exif_orientation(_IM, "JPEG", 6),
    "gif": hi.encode(_IM, "GIF"),
    "gif-animated": hi.animated("GIF", _FRAMES),
    "webp": hi.encode(_IM, "WEBP", quality=70),
    "webp-lossless": hi.encode(_IM, "WEBP", lossless=True),
    "webp-animated": hi.animated("WEBP", _FRAMES, lossless=True),
}


def check_decode(data: bytes, content_type: str | None = None) -> DecodedImage | ServiceError:
    """Run the decoder and assert the property; the image, or the client error it raised."""
    t0 = time.process_time()
    try:
        with warnings.catch_warnings():
            # the bomb warning would mean Pillow saw a canvas our header check let through
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            out: DecodedImage | ServiceError = decode_image(
                data, content_type=content_type, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    except ServiceError as e:
        assert e.status in CLIENT_ERRORS, repr(e)
        assert e.detail and not ADDRESS.search(e.detail), e.detail  # no object reprs leaked
        out = e
    cpu = time.process_time() - t0
    assert cpu < CPU_BOUND, f"{cpu:.3f} s CPU for {len(data)} bytes"
    if isinstance(out, DecodedImage):
        rgb = out.rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.flags.c_contiguous and not rgb.flags.writeable
        assert min(out.height, out.width) >= 1 and out.height * out.width <= MAX_PIXELS
        assert out.format in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
        assert 1 <= out.orientation <= 8
    return out


# -- mutations ------------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with 1..4 edits; positions are fractions of the length so they shrink well."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "duplicate"]))
        at = int(draw(st.floats(0, 1, exclude_max=True)) * len(data)) if data else 0
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


# -- size fields set to arbitrary values ------------------------------------------------------------

#: 16-bit size fields (JPEG, GIF): small, edge and any values; PNG's are 32-bit
DIM = st.one_of(st.integers(0, 70), st.sampled_from([255, 256, 447, 448, 1 << 14, 1 << 15, 65535]),
                st.integers(0, 65535))
DIM32 = st.one_of(DIM, st.sampled_from([1 << 16, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]))


def _png_ihdr(width: int, height: int, depth: int, colour: int, interlace: int) -> bytes:
    seed = SEEDS["png"]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    # keep the CRC right: otherwise Pillow stops at the checksum and the reader is never exercised
    return seed[:8] + hi.png_chunk(b"IHDR", ihdr) + seed[33:]


@st.composite
def size_fields(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "jpeg", "gif-screen", "gif-frame", "webp-vp8l", "webp-vp8x"]))
    if kind == "png":
        return _png_ihdr(draw(DIM32), draw(DIM32), draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255])),
                         draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7])), draw(st.integers(0, 2)))
    w, h = draw(DIM), draw(DIM)
    if kind == "jpeg":
        return hi.jpeg_with_size(SEEDS["jpeg"], w, h)
    if kind == "gif-screen":
        return hi.gif_bomb((w, h), (0, 0, draw(DIM), draw(DIM)))
    if kind == "gif-frame":
        return hi.gif_bomb((draw(DIM), draw(DIM)), (draw(DIM), draw(DIM), w, h))
    if kind == "webp-vp8l":
        return hi.webp_vp8l_bomb(max(w, 1) & 0x3FFF or 1, max(h, 1) & 0x3FFF or 1)
    return hi.webp_vp8x_bomb(max(w, 1), max(h, 1))


# -- the tests ----------------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=2048),
       content_type=st.sampled_from([None, "", "image/png", "application/octet-stream", "text/plain",
                                     "image/jpeg; charset=x", "multipart/form-data"]))
def test_any_bytes(data: bytes, content_type: str | None) -> None:
    check_decode(data, content_type)


SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
              b"RIFF\x00\x00\x00\x00WEBP", b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00(\x00\x00\x00"]


@FUZZ
@given(signature=st.sampled_from(SIGNATURES), tail=st.binary(max_size=512))
def test_a_valid_signature_then_garbage(signature: bytes, tail: bytes) -> None:
    check_decode(signature + tail)


# Pillow's TIFF reader may warn about corrupt tags in a mutated file turned TIFF-like; that is
# the process's business (only bomb warnings are turned into errors above).
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=1500 * SCALE)
@given(data=mutated())
def test_mutated_real_files(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(data=size_fields())
def test_declared_sizes_never_get_past_the_pixel_limit(data: bytes) -> None:
    check_decode(data)


@pytest.mark.parametrize("header", [b"MM\x00+\x00\x08\x00\x00" + b"\xff" * 8,
                                    b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8])
def test_bigtiff_with_an_offset_past_any_buffer_is_undecodable(header: bytes) -> None:
    """Found by this fuzzer (PSPNET_FUZZ_SCALE=20): a mutated WebP turned BigTIFF with an IFD offset
    of 2**64 - 1 made the header reader raise OverflowError, a 500."""
    out = check_decode(header + bytes(64))
    assert isinstance(out, ServiceError) and out.status == 422


def test_the_seeds_decode() -> None:
    """The fuzz starts from real files: each decodes (else the mutations would start from garbage)."""
    for name, data in SEEDS.items():
        assert isinstance(check_decode(data), DecodedImage), name


def test_the_fuzz_reaches_success_and_every_refusal() -> None:
    """Guard against a vacuous fuzz: the strategies produce images and each kind of refusal."""
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=300)
    @given(data=st.one_of(mutated(), size_fields()))
    def collect(data: bytes) -> None:
        out = check_decode(data)
        key = "ok" if isinstance(out, DecodedImage) else str(out.status)
        outcomes[key] = outcomes.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        collect()
    assert {"ok", "413", "415", "422"} <= outcomes.keys(), outcomes


def test_crc_helper_is_right() -> None:
    """_png_ihdr keeps the PNG valid when the values are: same file back for the seed's own header."""
    seed = SEEDS["png"]
    width, height = _IM.size
    assert _png_ihdr(width, height, 8, 2, 0) == seed
    assert zlib.crc32(seed[12:29]) == struct.unpack(">I", seed[29:33])[0]
