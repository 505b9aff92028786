"""The codecs' public face: decode uploads, encode results (DESIGN.md "Service").

The work lives in three modules with one job each: :mod:`service.sniff`
(format and declared size from the header), :mod:`service.decode` (bytes to
an RGB frame, hostile input refused) and :mod:`service.encode` (label maps to
PNG, overlay and JSON). Import from here or from them.
"""

from service.decode import DecodedImage, check_content_type, decode_image, pixel_limit
from service.encode import (
    PNG_COMPRESS_LEVEL,
    ClassShare,
    check_labels,
    class_summary,
    encode_color_png,
    encode_label_png,
    encode_overlay,
    palette_array,
)

__all__ = [
    "PNG_COMPRESS_LEVEL",
    "ClassShare",
    "DecodedImage",
    "check_content_type",
    "check_labels",
    "class_summary",
    "decode_image",
    "encode_color_png",
    "encode_label_png",
    "encode_overlay",
    "palette_array",
    "pixel_limit",
]
