"""Tiny foreign (non-PSPNet) ONNX graphs and their description files, built with the onnx helper API.

Each graph hands back what it was fed, so a test sees exactly what the engine converted: the
input (any layout, dtype, colour order) is brought to NCHW float32 and returned as 3-class
"logits" (``kind="logits"``), average-pooled 2x2 (``kind="strided_logits"``, stride 2), or
argmaxed over the colours (``kind="labels"``, int64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}


def build_graph(
    path: Path,
    *,
    tile: tuple[int, int] = (16, 24),
    layout: str = "NCHW",
    dtype: str = "float32",
    kind: str = "logits",
    batch: int | None = None,
    input_name: str = "x",
    output_name: str = "out",
    dynamic_size: bool = False,
) -> Path:
    """``dynamic_size``: the height and width are symbolic (any tile)."""
    h, w = ("H", "W") if dynamic_size else tile
    n: Any = "N" if batch is None else batch
    shape = [n, 3, h, w] if layout == "NCHW" else [n, h, w, 3]
    nodes = []
    last = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], ["nchw"], perm=[0, 3, 1, 2]))
        last = "nchw"
    nodes.append(helper.make_node("Cast", [last], ["f32"], to=TensorProto.FLOAT))
    last = "f32"
    if kind == "logits":
        nodes.append(helper.make_node("Identity", [last], [output_name]))
        out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [n, 3, h, w])
    elif kind == "strided_logits":
        nodes.append(
            helper.make_node("AveragePool", [last], [output_name], kernel_shape=[2, 2], strides=[2, 2])
        )
        out = helper.make_tensor_value_info(
            output_name,
            TensorProto.FLOAT,
            [n, 3, None if dynamic_size else h // 2, None if dynamic_size else w // 2],
        )
    else:
        nodes.append(helper.make_node("ArgMax", [last], [output_name], axis=1, keepdims=0))
        out = helper.make_tensor_value_info(output_name, TensorProto.INT64, [n, h, w])
    graph = helper.make_graph(
        nodes, "described", [helper.make_tensor_value_info(input_name, ONNX_TYPES[dtype], shape)], [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def description(
    *,
    tile: tuple[int, int] = (16, 24),
    layout: str = "NCHW",
    dtype: str = "float32",
    kind: str = "logits",
    colour: str = "RGB",
    normalised_in_graph: bool = False,
    batch: Any = "dynamic",
    align_corners: bool = False,
    name: str = "described",
    mean: tuple[float, float, float] = (10.0, 20.0, 30.0),
    std: tuple[float, float, float] = (2.0, 4.0, 8.0),
) -> dict[str, Any]:
    output: dict[str, Any] = {"name": "out", "kind": kind}
    if kind == "strided_logits":
        output["stride"] = 2
    return {
        "name": name,
        "dataset": "none",
        "classes": ["r", "g", "b"],
        "palette": [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        "tile": list(tile),
        "mean": list(mean),
        "std": list(std),
        "align_corners": align_corners,
        "protocol": {
            "mode": "slide",
            "base_size": max(tile),
            "scales": [1.0],
            "stride_rate": 2 / 3,
            "flip": False,
        },
        "input": {
            "name": "x",
            "layout": layout,
            "dtype": dtype,
            "colour": colour,
            "normalised_in_graph": normalised_in_graph,
        },
        "output": output,
        "batch": batch,
    }


def write(model: Path, desc: dict[str, Any]) -> Path:
    model.with_suffix(".json").write_text(json.dumps(desc))
    return model
