"""Upload bytes -> one RGB uint8 frame, refusing hostile input early (docs/DESIGN.md "Service").

Checks, cheapest first, each with its own status:

1. empty body -> 400 BadRequest: nothing was sent, so there is no image to
   call undecodable (422 is for bytes that try to be an image and fail);
2. more than ``max_bytes`` -> 413;
3. a declared Content-Type that is neither ``image/*`` nor
   ``application/octet-stream`` -> 415 (None, or an empty string, means the
   client did not say: multipart parts without a type, raw bodies without
   the header);
4. the signature is not PNG, JPEG, WebP, BMP, TIFF or GIF -> 415. The bytes
   decide the format; a declared ``image/png`` carrying a JPEG is decoded as
   the JPEG it is;
5. the header's declared width*height over the pixel limit -> 413, read by
   :mod:`service.codec.sniff` before Pillow sees the file; a header too broken to
   read -> 422;
6. Pillow opens the file (its header only) and decodes the first frame only;
   truncated or corrupt data -> 422. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
   left False (Pillow's default) and never touched here, so a cut-off file
   fails instead of coming back grey.

Two formats take a faster decoder when they can (benchmarks/speed/image_codecs.py,
benchmarks/results/codecs.md, one core: JPEG 2.2x as fast at 4000x3000 and 1.2x at
360x480, PNG 1.27x and 1.14x; both release the GIL for the whole decode,
where Pillow holds it for up to 18 ms of a 12 Mpx image while copying out;
pyspng, faster still on PNG, holds it throughout and is not used). An RGB or
grey JPEG goes to simplejpeg (libjpeg-turbo, ``strict``: any libjpeg
warning, a truncated file included, is a failure); a plain PNG
(:func:`service.codec.sniff.is_plain_png`: 8-bit grey, RGB or RGBA, complete, no
animation, transparent colour or EXIF) to ``cv2.imdecode``. On such files
both give exactly Pillow's pixels. Whenever the fast decoder fails, or its
result is not the size Pillow read from the header, Pillow decodes the file
as before and decides, so status codes and pixels stay Pillow's (a broken
plain PNG only makes libpng print one "libpng error" line to stderr first).
Everything else (CMYK JPEGs; 16-bit, palette, grey+alpha PNGs; the other
formats) stays on Pillow, and so do JPEGs without simplejpeg installed.

The pixel limit in force is ``min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS)``:
anything Pillow's own bomb check would warn about is refused at step 5, so
that warning never fires, and its DecompressionBombError maps to 413.

Then: EXIF orientation (all eight, also from XMP, which Pillow folds in) is
applied to the pixels; every mode becomes RGB uint8: alpha is dropped (the
colour under it is kept), palettes are looked up, 16-bit and 32-bit integer
greys are scaled (v * 255 / 65535, rounded, not clipped), float greys are
read as 0..1 when they fit, else as 0..255. Embedded ICC profiles are
ignored, as cv2.imread and the training loader ignore them: the model saw raw
values. Runs in a worker thread; everything is bounded by the byte and pixel
limits and never more than one frame is decoded.
"""

from __future__ import annotations

import importlib
import io
import re
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFile

from service.codec.sniff import declared_size, is_plain_png, sniff_format
from service.errors import BadRequest, PayloadTooLarge, UndecodableImage, UnsupportedMediaType

ACCEPTED_CONTENT_TYPES = "image/* or application/octet-stream"
_ACCEPTED_NAMES = "PNG, JPEG, WebP, BMP, TIFF, GIF"
# What a broken or hostile file makes Pillow raise (OSError covers
# UnidentifiedImageError and "image file is truncated").
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError,
                  KeyError, ZeroDivisionError)
_ORIENTATION_TAG = 0x0112
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
# cv2 must not apply the EXIF orientation itself (plain PNGs carry none; this says so anyway).
# IMREAD_COLOR_RGB is OpenCV >= 4.10; before it, BGR is reversed afterwards.
_CV2_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_CV2_FLAGS = (cv2.IMREAD_COLOR if _CV2_RGB is None else _CV2_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
# What the fast decoders raise on data they cannot decode (cv2.imdecode returns None instead).
_FAST_ERRORS = (ValueError, RuntimeError, cv2.error)


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_SIMPLEJPEG = _optional("simplejpeg")


@dataclass(frozen=True)
class DecodedImage:
    """The first frame as the model sees it.

    ``rgb`` is H x W x 3 uint8, C-contiguous and read-only (decoded pixels are
    shared, never mutated: copy before writing). H and W are after EXIF
    orientation.
    """

    rgb: np.ndarray
    format: str  # Pillow's name: PNG, JPEG, WEBP, GIF, BMP, TIFF
    mode: str  # the source frame's Pillow mode before conversion (P, LA, I;16, CMYK, ...)
    orientation: int  # EXIF orientation applied, 1 = none
    was_animated: bool  # more than one frame in the file; only the first was decoded

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def pixel_limit(max_pixels: int) -> int:
    """The pixel limit in force: ours, or Pillow's bomb threshold if that is lower."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, pillow)


def check_content_type(content_type: str | None) -> None:
    """415 unless the declared type could be an image; None or empty means undeclared."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/octet-stream" or media.startswith("image/"):
        return
    raise UnsupportedMediaType(f"Content-Type {media!r} is not an image; send {ACCEPTED_CONTENT_TYPES}.")


def decode_image(data: bytes, *, content_type: str | None, max_bytes: int, max_pixels: int,
                 fast_decoders: bool = True) -> DecodedImage:
    """Decode the first frame of ``data``; every refusal is a ServiceError (see the module doc).

    ``fast_decoders=False`` keeps every format on Pillow (the reference the fast path is tested against).
    """
    if max_bytes < 1 or max_pixels < 1:
        raise ValueError(f"limits must be positive, got max_bytes={max_bytes} max_pixels={max_pixels}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide switch someone else flipped: with it Pillow pads a
        # cut-off file with grey and calls it decoded. Fail loudly instead.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode uploads")
    if not data:
        raise BadRequest("The request carried no image: the body is empty.")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The image is {len(data)} bytes; the limit is {max_bytes}.")
    check_content_type(content_type)
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(f"Not an image in a supported format ({_ACCEPTED_NAMES}).")
    size = declared_size(data, fmt)
    if size is None:
        raise UndecodableImage(f"The {fmt} header is malformed.")
    _check_pixels(size, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            _check_pixels(im.size, max_pixels)  # Pillow's reading of the header, in case it differs
            # Before load: for GIF this peeks at the next frame's header and
            # rewinds, which would throw away an already decoded frame.
            was_animated = bool(getattr(im, "is_animated", False))
            # Pillow's TIFF reader applies the orientation while loading and
            # drops the tag, so read it first (from the IFD, no pixels) to
            # report it. Other readers must load first: PNG's getexif loads
            # the pixels, and a load error must not pass for bad EXIF.
            orientation = _orientation(im) if fmt == "TIFF" else 1
            mode = im.mode
            fast = _fast_decode(data, fmt, im) if fast_decoders else None
            if fast is not None:
                rgb, pending = fast
            else:
                im.load()
                pending = _orientation(im)  # what is left for us to apply
                rgb = _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"The image's dimensions exceed the pixel limit: {e}") from None
    except _PILLOW_ERRORS as e:
        raise UndecodableImage(f"The {fmt} data could not be decoded: {_reason(e)}") from None
    rgb = _orient(rgb, pending)
    rgb.flags.writeable = False
    applied = orientation if orientation != 1 else pending
    return DecodedImage(rgb=rgb, format=fmt, mode=mode, orientation=applied, was_animated=was_animated)


def _fast_decode(data: bytes, fmt: str, im: Image.Image) -> tuple[np.ndarray, int] | None:
    """(RGB pixels, orientation left to apply) from simplejpeg or cv2, or None: Pillow decodes.

    ``im`` is Pillow's opened, not loaded, file: its header says the mode and
    size; a JPEG's EXIF (and XMP) sits in front of the scan, so its
    orientation is known without decoding a pixel.
    """
    rgb: Any
    try:
        if fmt == "JPEG" and _SIMPLEJPEG is not None and im.mode in ("RGB", "L"):
            pending = _orientation(im)
            rgb = _SIMPLEJPEG.decode_jpeg(data, colorspace="RGB", strict=True)
        elif fmt == "PNG" and im.mode in ("RGB", "RGBA", "L") and is_plain_png(data):
            pending = 1  # a plain PNG carries no orientation
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
            if rgb is not None and _CV2_RGB is None:
                rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
        else:
            return None
    except _FAST_ERRORS:
        return None
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != (im.height, im.width, 3):
        return None
    return rgb, pending


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UndecodableImage(f"The image declares an empty size {width}x{height}.")
    limit = pixel_limit(max_pixels)
    if width * height > limit:
        raise PayloadTooLarge(f"The image is {width}x{height} = {width * height} pixels; "
                              f"the limit is {limit}.")


def _reason(e: BaseException) -> str:
    # Pillow's messages are safe to show, except that some name the file
    # object with its memory address ("<_io.BytesIO object at 0x7f...>").
    text = _OBJECT_REPR.sub("the upload", str(e)).strip() or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 when absent, unreadable or out of range."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except _PILLOW_ERRORS:  # a corrupt EXIF block must not sink a good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation: views, then one copy if the result is not C-contiguous."""
    if orientation == 2:  # mirrored left-right
        rgb = rgb[:, ::-1]
    elif orientation == 3:  # rotated 180
        rgb = rgb[::-1, ::-1]
    elif orientation == 4:  # mirrored top-bottom
        rgb = rgb[::-1]
    elif orientation == 5:  # transposed (mirror across the main diagonal)
        rgb = rgb.transpose(1, 0, 2)
    elif orientation == 6:  # needs 90 degrees clockwise
        rgb = rgb[::-1].transpose(1, 0, 2)
    elif orientation == 7:  # transversed (mirror across the anti-diagonal)
        rgb = rgb[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:  # needs 90 degrees counter-clockwise
        rgb = rgb[:, ::-1].transpose(1, 0, 2)
    return np.ascontiguousarray(rgb)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> H x W x 3 uint8 (see the module doc for the rules)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("P", "PA"):
        return _palette_to_rgb(im)
    if mode.startswith("I") or mode == "F":
        grey = _grey_to_uint8(np.asarray(im), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # 1, L, LA, La, RGBA, RGBa, RGBX, CMYK, YCbCr: Pillow converts (and drops
    # alpha); a mode it cannot convert raises ValueError, a 422.
    return np.asarray(im.convert("RGB"))


def _palette_to_rgb(im: Image.Image) -> np.ndarray:
    # Look the indices up ourselves: Pillow's P -> RGB conversion warns about
    # transparency, and its alpha is dropped anyway.
    index = np.asarray(im)
    if index.ndim == 3:  # PA: index and alpha
        index = index[:, :, 0]
    lut = np.zeros((256, 3), np.uint8)
    colours = np.frombuffer(bytes(im.getpalette("RGB") or b""), np.uint8)[: 256 * 3]
    lut.reshape(-1)[: colours.size] = colours
    rgb: np.ndarray = lut[index]
    return rgb


def _grey_to_uint8(grey: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        values = np.nan_to_num(grey.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if values.size and values.min() >= 0.0 and values.max() <= 1.0 else 255.0
        out: np.ndarray = np.rint(np.clip(values, 0.0, top) * (255.0 / top)).astype(np.uint8)
        return out
    # I;16 variants hold 0..65535; "I" is how Pillow hands out 16-bit greys
    # from some files, so read it on the same scale, clipped to it.
    wide = np.clip(grey, 0, 65535).astype(np.uint32)
    scaled: np.ndarray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return scaled


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds of what :func:`decode` accepts (the service's settings; offline: effectively none)."""

    max_bytes: int
    max_pixels: int


#: local files read by the offline commands: the decoder's own checks, no size policy
NO_LIMITS = DecodeLimits(max_bytes=1 << 31, max_pixels=1 << 31)


def decode(data: bytes, content_type: str | None, limits: DecodeLimits) -> DecodedImage:
    """Upload bytes -> the RGB frame (service.codec.decode: hostile input refused with its status)."""
    return decode_image(data, content_type=content_type, max_bytes=limits.max_bytes,
                        max_pixels=limits.max_pixels)
