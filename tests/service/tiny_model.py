"""A tiny real PSPNet-shaped ONNX artifact, built with the onnx helper API (no torch).

Same contract as an exported model (docs/DESIGN.md "The seam"): one input ``image``
float32 ``[N, 3, H, W]`` (raw 0..255, normalised inside the graph), N dynamic,
H and W fixed; one output ``logits`` ``[N, C, H, W]`` at full tile resolution;
``pspnet`` metadata. The graph is normalise -> 3x3 conv stride 2 -> bilinear
resize x2, so outputs vary over the image and between batch items, and every
value is cheap to recompute in numpy. ``with_labels=True`` adds the optional
``labels`` output ``[N, H, W]`` (ArgMax + Cast, as the exporter writes it).

Import it as ``from tests.service.tiny_model import build_tiny_artifact``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.labels_output import add_labels_output
from service.contract.artifact import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ArtifactMeta,
    InferenceProtocol,
)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def tiny_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    # 37, 91 and 173 are odd, so i -> k*i mod 256 is one-to-one: distinct colours up to 256 classes.
    return tuple(((37 * i) % 256, (91 * i + 64) % 256, (173 * i + 128) % 256) for i in range(num_classes))


def tiny_meta(*, tile: tuple[int, int] = (32, 48), num_classes: int = 5, name: str = "tiny") -> ArtifactMeta:
    return ArtifactMeta(
        name=name, dataset="tiny", classes=tuple(f"class{i}" for i in range(num_classes)),
        palette=tiny_palette(num_classes), tile=tile, mean=MEAN, std=STD, align_corners=False,
        protocol=InferenceProtocol(mode="slide", base_size=max(tile), scales=(1.0,), stride_rate=2 / 3,
                                   flip=False),
        source={"format": "tiny-test-graph", "checkpoint_sha256": None},
    )


def tiny_weights(num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.5, size=(num_classes, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(num_classes,)).astype(np.float32)
    return weight, bias


def build_tiny_artifact(path: Path, *, tile: tuple[int, int] = (32, 48), num_classes: int = 5,
                        name: str = "tiny", with_labels: bool = False) -> Path:
    """Write the tiny artifact to ``path`` and return ``path``; ``with_labels`` adds the ``labels`` output."""
    h, w = tile
    if h % 2 or w % 2:
        raise ValueError("the tiny graph halves then doubles the tile: use even sizes")
    weight, bias = tiny_weights(num_classes)
    inits = [
        numpy_helper.from_array(np.array(MEAN, np.float32).reshape(1, 3, 1, 1), "mean"),
        numpy_helper.from_array(np.array(STD, np.float32).reshape(1, 3, 1, 1), "std"),
        numpy_helper.from_array(weight, "conv_w"),
        numpy_helper.from_array(bias, "conv_b"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Conv", ["normed", "conv_w", "conv_b"], ["feat"], kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["feat", "", "scales"], [OUTPUT_NAME], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", num_classes, h, w])],
        initializer=inits,
    )
    if with_labels:
        add_labels_output(graph, num_classes)
    # IR 8 / opset 17: loadable by every onnxruntime the project supports (>= 1.18).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="tests.service.tiny_model")
    helper.set_model_props(model, {METADATA_KEY: json.dumps(tiny_meta(tile=tile, num_classes=num_classes,
                                                                         name=name).to_json())})
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of ONNX Resize ``linear`` + ``half_pixel``, edges clamped."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        i0 = int(np.floor(x))
        i1 = min(i0 + 1, n_in - 1)
        m[i, i0] += 1.0 - (x - i0)
        m[i, i1] += x - i0
    return m


#: max |ONNX Runtime - tiny_reference| on random 0..255 tiles (logits up to ~11): measured
#: 1.55e-6 on this host over 30 batches; every level of tests/bounds.py is in docs/TESTING.md.
TINY_REFERENCE_BOUND = 3e-6


def tiny_reference(tiles: np.ndarray, num_classes: int = 5) -> np.ndarray:
    """The tiny graph's logits computed directly in float64 numpy: ``(N, 3, H, W) -> (N, C, H, W)``."""
    weight, bias = tiny_weights(num_classes)
    mean = np.array(MEAN).reshape(1, 3, 1, 1)
    std = np.array(STD).reshape(1, 3, 1, 1)
    x = (tiles.astype(np.float64) - mean) / std
    n, _, h, w = x.shape
    ho, wo = h // 2, w // 2
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    feat = np.broadcast_to(bias.astype(np.float64)[None, :, None, None], (n, num_classes, ho, wo)).copy()
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, :, dy:dy + 2 * ho:2, dx:dx + 2 * wo:2]
            feat += np.einsum("nkhw,ck->nchw", patch, weight[:, :, dy, dx].astype(np.float64))
    return np.einsum("ih,nchw,jw->ncij", _linear_weights(ho, h), feat, _linear_weights(wo, w))


def street_like(i: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth 40x60 BGR image with noise (photos, not white noise, are what calibration sees)."""
    y, x = np.mgrid[0:40, 0:60]
    img = np.stack([(x * 4 + i * 20) % 256, (y * 6) % 256, ((x + y) * 3) % 256], -1)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def write_street_like(folder: Path, count: int) -> None:
    """``count`` :func:`street_like` PNGs ``0.png``... in ``folder`` (seed 0): the int8 tests' and the
    int8 benchmark's calibration images."""
    import cv2

    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), street_like(i, rng))
