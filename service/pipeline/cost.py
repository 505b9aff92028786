"""What a request will cost in memory, known from the image header before decoding.

:func:`upload_cost` (an encoded upload) and :func:`pixels_cost` (decoded pixels) call
:func:`request_peak_bytes`, which adds up the arrays the chain keeps alive at the
worst moment of each stage, from the width and height, the mode, scales and the
model's class count and tile; :class:`service.engine.admission.MemoryBudget` admits a
request only while the requests in flight plus this one fit
``PSPNET_MAX_MEMORY_MB``. Bytes per input pixel, per stage (P = width x height):

* decode: the upload, Pillow's frame (4 bytes a pixel for RGB), the RGB array
  and, with EXIF rotation, one more copy: at most ``DECODE_BYTES_PER_PIXEL``;
* plan (a scale at a time): the RGB array, its float32 copy (12), the scale's
  resized float image and mean-padded canvas, its tiles (3 x tile x 4 bytes
  each), beside what the stitcher keeps from the scales before
  (:func:`service.protocol.peak_bytes.stitch_held_bytes`);
* run and stitch: the RGB array, one scale's tiles and the stitcher's peak
  (:func:`service.protocol.peak_bytes.stitch_peak_bytes`: one chunk's logits, C x
  tile x 4 bytes a tile, of :func:`service.protocol.peak_bytes.stream_chunk` tiles; its
  own arrays, which follow the working resolution and the classes, never P x C
  beyond the working size, and the labels);
* encode: the RGB array, the labels and, for an overlay, the colour image, the
  blend and Pillow's copy;
* a soft output (service/contract/soft.py): what the stitcher keeps once every
  scale is in, the output array and its copies (a float64 map and its float32
  copy; or the float16 probabilities and the response's copy of them).

The figures are upper bounds checked against measured peaks (tests/service/
pipeline/test_cost.py; RELIABILITY.md "Memory per request").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.codec.sniff import declared_size, sniff_format
from service.contract.artifact import ArtifactMeta
from service.contract.soft import Soft
from service.pipeline.params import InferenceParams
from service.protocol.peak_bytes import stitch_held_bytes, stitch_peak_bytes, stream_chunk
from service.protocol.windows import ScaleGeometry, plan_geometry

#: Pillow's frame, the RGB array, an orientation copy, and mode conversions of 8-bit inputs
DECODE_BYTES_PER_PIXEL = 16
#: what an overlay holds besides the RGB array: colours (3), blend (3), Pillow's RGB frame (4), JPEG/PNG
OVERLAY_BYTES_PER_PIXEL = 14
#: a colour or label PNG: Pillow's frame and the compressed stream (at most about the raw size)
PNG_BYTES_PER_PIXEL = 4
F32 = 4
#: what the process's RSS grows by beyond the arrays counted: the allocator's arenas and unreturned
#: pages, Pillow's and the encoder's buffers. Measured RSS growth / sum of the arrays, one request at a
#: time (RELIABILITY.md "Memory per request"): up to 1.18 (CamVid 4000x3000 multiscale); so 1.25.
RSS_FACTOR = 1.25


def request_peak_bytes(height: int, width: int, geometry: Sequence[ScaleGeometry], *, num_classes: int,
                       tile: tuple[int, int], output: str, body_bytes: int = 0,
                       soft: Soft | None = None) -> int:
    """An upper bound of the bytes one request holds at its peak, from sizes alone."""
    pixels = height * width
    label_bytes = pixels * (1 if num_classes <= 256 else 2)
    rgb = pixels * 3
    th, tw = tile
    # the chain cuts one scale's tiles at a time, and streams them chunk by chunk
    tiles = max(g.num_tiles for g in geometry) * 3 * th * tw * F32
    chunk = stream_chunk(num_classes, tile, geometry[0].flip)
    # a scale's float copy of the image, its resize and its padded canvas
    widest_scale = max((g.size[0] * g.size[1] + g.canvas[0] * g.canvas[1]) * 3 * F32 for g in geometry)
    stages = {
        "decode": pixels * DECODE_BYTES_PER_PIXEL,
        # cutting a scale's tiles beside what the stitcher keeps from the scales before
        "plan": rgb + pixels * 3 * F32 + widest_scale + tiles
        + stitch_held_bytes(geometry, (height, width), num_classes),
        # the stitcher's figure counts a chunk's logits and the labels
        "stitch": rgb + tiles + stitch_peak_bytes(geometry, (height, width), num_classes, tile, chunk),
        "encode": rgb + label_bytes + pixels * (OVERLAY_BYTES_PER_PIXEL if output == "overlay"
                                                 else PNG_BYTES_PER_PIXEL),
    }
    if soft is not None:
        # what the stitcher keeps once every scale is in, and the soft output beside it: a float64 map
        # and its float32 copy, or the float16 probabilities and the response's copy of them
        out = soft.output_bytes(height, width, num_classes)
        made = 2 * out if soft.kind == "probabilities" else 3 * out
        stages["soft"] = (rgb + label_bytes + made
                          + stitch_held_bytes(geometry, (height, width), num_classes, final=True))
    return body_bytes + math.ceil(RSS_FACTOR * max(stages.values()))


def declared_hw(data: bytes) -> tuple[int, int] | None:
    """(height, width) from an upload's header, before decoding; None when it cannot be read."""
    fmt = sniff_format(data)
    size = declared_size(data, fmt) if fmt is not None else None
    if size is None or size[0] < 1 or size[1] < 1:
        return None
    return size[1], size[0]


def upload_cost(meta: ArtifactMeta, data: bytes, params: InferenceParams, output: str,
                soft: Soft | None = None) -> int | None:
    """The most memory a request for the upload ``data`` will hold, read from its header before decoding.

    None when the header cannot be read or the geometry cannot be planned: decoding or planning
    then refuses the request with the right status. EXIF orientation may swap the sides, so both
    readings are costed and the larger kept.
    """
    size = declared_hw(data)
    if size is None:
        return None
    costs = [pixels_cost(meta, height, width, params, output, body_bytes=len(data), soft=soft)
             for height, width in (size, size[::-1])]
    return None if None in costs else max(c for c in costs if c is not None)


def pixels_cost(meta: ArtifactMeta, height: int, width: int, params: InferenceParams, output: str, *,
                body_bytes: int = 0, soft: Soft | None = None) -> int | None:
    """:func:`upload_cost` of an image of known size (decoded pixels sent as a tensor)."""
    p = meta.protocol
    try:
        geometry = plan_geometry(height, width, tile=meta.tile, mode=params.mode, scales=params.scales,
                                 flip=params.flip, base_size=p.base_size, stride_rate=p.stride_rate)
    except ValueError:
        return None
    return request_peak_bytes(height, width, geometry, num_classes=meta.num_classes, tile=meta.tile,
                              output=output, body_bytes=body_bytes, soft=soft)
