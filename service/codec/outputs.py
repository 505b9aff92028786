"""The output formats: one table, name -> encoder, media types, file suffix and the options it takes.

Every front end (the HTTP app, ``pspnet-serve segment``) encodes through
:func:`encode_output` and lists formats from :data:`FORMATS`, so a new format is
one :class:`OutputFormat` entry plus its encoder, and nothing else changes.

Options come from two places, merged into one :class:`OutputOptions`: the
service's settings (overlay opacity, JPEG quality: the same for every request)
and the request (overlay file format, whether JSON carries the mask). A format
names the options that mean something to it in ``options``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.codec.encode import (
    OverlayFormat,
    class_summary,
    encode_color_png,
    encode_label_png,
    encode_overlay,
    encode_probability_png,
)
from service.contract.artifact import ArtifactMeta
from service.contract.soft import Soft, SoftKind
from service.errors import BadRequest


class OutputSettings(Protocol):
    """What the encoders read of :class:`service.settings.Settings` (any object with these)."""

    overlay_alpha: float
    jpeg_quality: int


@dataclass(frozen=True)
class OutputOptions:
    """Everything an encoder may need besides the image and its labels."""

    overlay_alpha: float = 0.5  # weight of the mask in overlays (setting)
    jpeg_quality: int = 90  # of JPEG overlays (setting)
    overlay_format: OverlayFormat = "jpeg"  # overlay file format (request: ``format``)
    include_mask: bool = False  # JSON carries the label PNG in base64 (request: ``include_mask``)
    class_name: str | None = None  # the class whose probability ``probability`` gives (request: ``class``)

    @classmethod
    def from_settings(cls, settings: OutputSettings, *, overlay_format: OverlayFormat = "jpeg",
                      include_mask: bool = False, class_name: str | None = None) -> OutputOptions:
        return cls(overlay_alpha=settings.overlay_alpha, jpeg_quality=settings.jpeg_quality,
                   overlay_format=overlay_format, include_mask=include_mask, class_name=class_name)


@dataclass(frozen=True)
class Encoded:
    """One encoded result: the bytes, their media type and the file suffix to save them under."""

    body: bytes
    media_type: str
    suffix: str


#: (model metadata, RGB input H x W x 3 uint8, labels H x W, options) -> encoded result; a soft
#: format's encoder gets its (H, W) probabilities in place of the labels
Encoder = Callable[[ArtifactMeta, np.ndarray, np.ndarray, OutputOptions], Encoded]


@dataclass(frozen=True)
class OutputFormat:
    name: str
    description: str
    media_types: tuple[str, ...]  # every type it can answer with (for the API schema)
    options: tuple[str, ...]  # the OutputOptions fields it reads
    encode: Encoder
    soft: SoftKind | None = None  # a soft format: what it encodes instead of the labels


def _color(meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray, opts: OutputOptions) -> Encoded:
    return Encoded(encode_color_png(labels, meta.palette), "image/png", ".png")


def _label(meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray, opts: OutputOptions) -> Encoded:
    return Encoded(encode_label_png(labels, meta.num_classes), "image/png", ".png")


def _overlay(meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray, opts: OutputOptions) -> Encoded:
    body = encode_overlay(rgb, labels, meta.palette, alpha=opts.overlay_alpha, fmt=opts.overlay_format,
                          quality=opts.jpeg_quality)
    if opts.overlay_format == "png":
        return Encoded(body, "image/png", ".png")
    return Encoded(body, "image/jpeg", ".jpg")


def _json(meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray, opts: OutputOptions) -> Encoded:
    doc: dict[str, Any] = {
        "model": meta.name, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
        "classes": class_summary(labels, meta.classes, meta.palette),
    }
    if opts.include_mask:
        doc["mask"] = base64.b64encode(encode_label_png(labels, meta.num_classes)).decode("ascii")
    return Encoded(json.dumps(doc, separators=(",", ":")).encode(), "application/json", ".json")


def _probability_png(meta: ArtifactMeta, rgb: np.ndarray, values: np.ndarray, opts: OutputOptions) -> Encoded:
    return Encoded(encode_probability_png(values), "image/png", ".png")


FORMATS: dict[str, OutputFormat] = {f.name: f for f in (
    OutputFormat("color", "colour mask, paletted PNG", ("image/png",), (), _color),
    OutputFormat("label", "class ids, 8-bit PNG (16-bit beyond 256 classes)", ("image/png",), (), _label),
    OutputFormat("overlay", "the input blended with its colour mask, JPEG or PNG",
                 ("image/jpeg", "image/png"), ("overlay_alpha", "jpeg_quality", "overlay_format"), _overlay),
    OutputFormat("json", "classes present with pixel fractions, optionally the label PNG in base64",
                 ("application/json",), ("include_mask",), _json),
    OutputFormat("confidence", "the top class's probability x 255 per pixel, 8-bit PNG", ("image/png",), (),
                 _probability_png, soft="confidence"),
    OutputFormat("probability", "one class's probability x 255 per pixel (class=NAME), 8-bit PNG",
                 ("image/png",), ("class_name",), _probability_png, soft="probability"),
)}
OUTPUTS: tuple[str, ...] = tuple(FORMATS)


def media_types() -> list[str]:
    """Every media type some format answers with, in table order (for the API schema)."""
    return list(dict.fromkeys(t for f in FORMATS.values() for t in f.media_types))


def output_format(name: str) -> OutputFormat:
    """The format called ``name``; a 400 naming the choices when there is none."""
    try:
        return FORMATS[name]
    except KeyError:
        raise BadRequest(f"output must be one of {', '.join(FORMATS)}, got {name!r}") from None


def soft_request(name: str, meta: ArtifactMeta, options: OutputOptions) -> Soft | None:
    """What format ``name`` needs of the stitch besides the labels: None, or its soft output (the
    class named by ``options.class_name`` for ``probability``: a 400 naming the classes if unknown)."""
    kind = FORMATS[name].soft
    if kind is None:
        return None
    if kind != "probability":
        return Soft(kind)
    if options.class_name is None:
        raise BadRequest("output=probability needs class=NAME, one of the model's classes "
                         f"({', '.join(meta.classes[:8])}{', ...' if len(meta.classes) > 8 else ''})")
    try:
        return Soft(kind, meta.classes.index(options.class_name))
    except ValueError:
        raise BadRequest(f"class {options.class_name!r} is not one of the model's {meta.num_classes}: "
                         f"{', '.join(meta.classes)}") from None


def encode_output(name: str, meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray,
                  options: OutputOptions) -> Encoded:
    """Encode ``labels`` (and, for overlays, ``rgb``) as the format ``name``; a KeyError if unknown.

    A soft format (``confidence``, ``probability``) takes its (H, W) probabilities as ``labels``."""
    return FORMATS[name].encode(meta, rgb, labels, options)
