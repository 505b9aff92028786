"""What an upload claims to be, read from its first bytes before Pillow sees it.

:func:`sniff_format` names the format from its signature; :func:`declared_size`
reads the width and height the header declares. Together they let the decoder
refuse a decompression bomb (a tiny file declaring a huge canvas) without
handing it to Pillow at all: some of Pillow's readers allocate at open time
(the WebP canvas, a GIF frame's disposal buffer), and Pillow's own bomb check
warns instead of failing below twice its limit. :func:`is_plain_png` says
whether a PNG is one a plain decoder reads exactly as Pillow does.

Plain byte arithmetic, no third-party code, bounded work: every loop advances
through the data and stops after a fixed number of steps. For GIF the size is
the logical screen grown to hold the first frame, which is what Pillow makes
of it.
"""

from __future__ import annotations

import struct

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # Pillow's names for them
# Walking a header takes at most this many steps (JPEG segments, GIF blocks,
# TIFF entries): real files need tens, a hostile one must not cost millions.
MAX_STEPS = 10_000

_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
         b"II\x00*", b"MM*\x00")  # the last two are broken headers Pillow still reads
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)  # OS/2 v1, Windows v1-v5, OS/2 v2
# JPEG start-of-frame markers: every 0xC0-0xCF except DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's signature, or None if it is none of ours."""
    if data.startswith(_PNG):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is two letters of text; the DIB header size makes it a bitmap.
    if data[:2] == b"BM" and len(data) >= 18 and _u32le(data, 14) in _BMP_HEADER_SIZES:
        return "BMP"
    if data[:4] in _TIFF:
        return "TIFF"
    return None


def declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` as the header declares them, or None if the header is malformed."""
    reader = _READERS.get(fmt)
    if reader is None:
        raise ValueError(f"unknown format {fmt!r}; expected one of {IMAGE_FORMATS}")
    try:
        return reader(data)
    except (struct.error, IndexError):  # the header stops short
        return None
    except OverflowError:  # an offset beyond any buffer (a BigTIFF IFD at 2**64 - 1)
        return None


def _u32le(data: bytes, pos: int) -> int:
    value: int = struct.unpack_from("<I", data, pos)[0]
    return value


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The first chunk must be IHDR: length (4), "IHDR", width (4), height (4).
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, steps = 2, 0
    while steps < MAX_STEPS:
        steps += 1
        pos = data.find(b"\xff", pos)  # libjpeg and Pillow skip junk between segments
        if pos < 0 or pos + 1 >= len(data):
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2
        if marker in _JPEG_SOF:
            # length (2), precision (1), height (2), width (2)
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return width, height
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn carry no length
            continue
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return None
        pos += length
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if flags & 0x80:  # global colour table
        pos += 3 << ((flags & 7) + 1)
    steps = 0
    while pos < len(data) and steps < MAX_STEPS:
        steps += 1
        block = data[pos]
        if block == 0x2C:  # image descriptor: left, top, width, height
            left, top, frame_w, frame_h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, left + frame_w), max(height, top + frame_h)
        if block == 0x3B:  # trailer: no image at all
            return None
        if block == 0x21:  # extension: label, then length-prefixed sub-blocks up to a 0
            pos += 2
            while pos < len(data) and data[pos] and steps < MAX_STEPS:
                steps += 1
                pos += data[pos] + 1
            pos += 1
            continue
        pos += 1  # a stray byte: Pillow skips it too
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return (width, height) if len(data) >= 30 else None
    if chunk == b"VP8 ":  # lossy: frame tag (3), start code, 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            return None
        bits = _u32le(data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    header_size = _u32le(data, 14)
    if header_size == 12:  # OS/2 v1: unsigned 16-bit
        width, height = struct.unpack_from("<HH", data, 18)
        return width, height
    if header_size in _BMP_HEADER_SIZES:
        # Width is read unsigned (a negative one is absurd); a negative height
        # means top-down rows.
        width, height = struct.unpack_from("<Ii", data, 18)
        return width, abs(height)
    return None


# TIFF field types that can hold a dimension, and how to read them.
_TIFF_INT_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, ifd)
        first, entry, head, value_at = ifd + 8, 20, order + "HHQ", 12
    else:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        first, entry, head, value_at = ifd + 2, 12, order + "HHI", 8
    dims: dict[int, int] = {}
    for i in range(min(count, MAX_STEPS)):
        at = first + i * entry
        tag, kind, n = struct.unpack_from(head, data, at)
        if tag in (256, 257) and n >= 1 and kind in _TIFF_INT_TYPES:
            # A single value sits left-justified in the entry's value field.
            (value,) = struct.unpack_from(order + _TIFF_INT_TYPES[kind], data, at + value_at)
            if value < 0:
                return None
            dims[tag] = value
            if len(dims) == 2:
                return dims[256], dims[257]
    return None


# PNG chunks a plain decoder would ignore but Pillow reads something from: more
# frames (APNG), a transparent colour, EXIF. And the text keywords Pillow takes
# an EXIF block or an XMP orientation from (keywords end at a NUL, at most 79 bytes).
_PNG_NOT_PLAIN = frozenset({b"acTL", b"tRNS", b"eXIf"})
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_PNG_ORIENTATION_KEYS = frozenset({b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp"})


def is_plain_png(data: bytes) -> bool:
    """True for a complete, still, 8-bit grey, RGB or RGBA PNG with nothing else Pillow would read.

    That is: IHDR declares bit depth 8 and colour type 0, 2 or 6; the chunks
    are whole and end with IEND (bytes after it are ignored, as Pillow does);
    there is no acTL (animation), tRNS (a transparent colour) or eXIf chunk
    and no text chunk keyed ``exif``, ``Raw profile type exif`` or
    ``XML:com.adobe.xmp`` (Pillow reads an EXIF orientation from those). For
    such a file the pixels are fully determined by IHDR and IDAT, so any
    correct decoder gives Pillow's. Chunk CRCs are not checked here. Walks
    the chunk headers, at most ``MAX_STEPS`` of them (more: False).
    """
    if not data.startswith(_PNG) or len(data) < 33 or data[12:16] != b"IHDR":
        return False
    if data[24] != 8 or data[25] not in (0, 2, 6):  # bit depth, colour type
        return False
    pos = 8
    for _ in range(MAX_STEPS):
        if pos + 12 > len(data):
            return False
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data) or kind in _PNG_NOT_PLAIN:
            return False
        if kind == b"IEND":
            return True
        if kind in _PNG_TEXT:
            start = pos + 8
            stop = min(end - 4, start + 80)
            nul = data.find(b"\0", start, stop)
            if data[start:nul if nul >= 0 else stop] in _PNG_ORIENTATION_KEYS:
                return False
        pos = end
    return False


_READERS = {
    "PNG": _png_size, "JPEG": _jpeg_size, "WEBP": _webp_size,
    "GIF": _gif_size, "BMP": _bmp_size, "TIFF": _tiff_size,
}
