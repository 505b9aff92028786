"""The small ONNX graphs that run the paper's stitch on the serving device (issue "Feed the GPU").

On CUDA the server keeps each batch's logits on the GPU and folds them into a request's
probabilities there (service/engine/device_stitch.py): these graphs are the steps, each run
through IO binding so that only labels (or the soft output asked for) come back to the host.
``service/`` does not import ``onnx``: the graphs are generated here and shipped as files in
``service/engine/graphs/`` (``python -m model.device_graphs`` writes them;
tests/model/test_device_graphs.py checks the shipped files are what this module makes).

Every graph has dynamic shapes (any classes, tile and image size); the host passes the
geometry as small int64 tensors. The steps mirror service/protocol/probs.py and stitch.py in
float32:

* ``window`` / ``window_flip``: softmax over classes of one tile (averaged with its mirrored
  mirror tile, ``(p + mirror(q)) / 2``), the part that overlaps the image cropped and padded to
  the scale's size, added to the scale's running sum;
* ``fold``: a finished scale's sum divided by its window coverage, resized bilinearly to the
  image (half-pixel centres, OpenCV's INTER_LINEAR), added to the image's running sum;
* ``labels_uint8`` / ``labels_uint16``: the argmax over classes (first class on ties);
* ``confidence``, ``probability``, ``probabilities``: the soft outputs, divided by the scale count;
* ``tile_logits_{float,float16}_{half_pixel,align_corners}``: a described model's (strided or
  float16) logits to float32 at the tile (torch's bilinear ``align_corners`` false or true).

A running sum starts as a one-element zero: Add broadcasts it, so no buffer needs clearing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto, helper

#: where the server finds the graphs
GRAPHS = Path(__file__).resolve().parent.parent / "service" / "engine" / "graphs"
OPSET = 17
F32, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


def _value(name: str, elem: int, rank: int) -> onnx.ValueInfoProto:
    """A tensor of dynamic shape (every axis named)."""
    return helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(rank)])


def _fixed(name: str, length: int) -> onnx.ValueInfoProto:
    """A small int64 vector of geometry the host passes (indices, crops, pads, sizes)."""
    return helper.make_tensor_value_info(name, I64, [length])


def _const(name: str, values: list[int] | float) -> onnx.NodeProto:
    if isinstance(values, float):
        tensor = helper.make_tensor(name, F32, [], [values])
    else:
        tensor = helper.make_tensor(name, I64, [len(values)], values)
    return helper.make_node("Constant", [], [name], value=tensor)


def _model(name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, doc_string=doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pspnet-serve device graphs")
    model.ir_version = 8  # what every ONNX Runtime this project supports reads
    onnx.checker.check_model(model, full_check=True)
    return model


def _window_probs(prefix: str, logits: str, index: str) -> list[onnx.NodeProto]:
    """Softmax over classes of tile ``index`` of ``logits``: output ``{prefix}probs`` (1, C, th, tw)."""
    return [helper.make_node("Gather", [logits, index], [f"{prefix}tile"], axis=0),
            helper.make_node("Softmax", [f"{prefix}tile"], [f"{prefix}probs"], axis=1)]


def window(flip: bool) -> onnx.ModelProto:
    """total_out = total + pad(crop(softmax(logits[index]) [averaged with its mirror]))."""
    nodes = _window_probs("w_", "logits", "index")
    inputs = [_value("logits", F32, 4), _fixed("index", 1)]
    probs = "w_probs"
    if flip:
        inputs += [_value("mirror_logits", F32, 4), _fixed("mirror_index", 1)]
        nodes += _window_probs("m_", "mirror_logits", "mirror_index")
        nodes += [
            _const("flip_starts", [-1]), _const("flip_ends", [-(2**62)]), _const("flip_axes", [3]),
            _const("flip_steps", [-1]),
            helper.make_node("Slice", ["m_probs", "flip_starts", "flip_ends", "flip_axes", "flip_steps"],
                             ["m_back"]),
            helper.make_node("Add", ["w_probs", "m_back"], ["pair"]),
            _const("half", 2.0),
            helper.make_node("Div", ["pair", "half"], ["averaged"]),  # (p + q) / 2, as the official code
        ]
        probs = "averaged"
    inputs += [_fixed("crop", 4), _fixed("pads", 6), _value("total", F32, 3)]
    nodes += [
        _const("crop_axes", [2, 3]), _const("zero", [0]), _const("two", [2]), _const("four", [4]),
        # crop = (y0, x0, y1, x1) in the tile: starts crop[0:2], ends crop[2:4]
        helper.make_node("Slice", ["crop", "zero", "two"], ["crop_starts"]),
        helper.make_node("Slice", ["crop", "two", "four"], ["crop_ends"]),
        helper.make_node("Slice", [probs, "crop_starts", "crop_ends", "crop_axes"], ["part"]),
        helper.make_node("Squeeze", ["part", "zero"], ["part_chw"]),
        helper.make_node("Pad", ["part_chw", "pads"], ["placed"], mode="constant"),
        helper.make_node("Add", ["total", "placed"], ["total_out"]),
    ]
    nodes = _ordered(nodes)  # the mirror's constants were appended after the window's first nodes
    return _model("window_flip" if flip else "window", nodes, inputs, [_value("total_out", F32, 3)],
                  "one window's probabilities added to its scale's running sum")


def _ordered(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Constants first, the rest in their order: a valid topological order for these graphs."""
    return [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]


def fold() -> onnx.ModelProto:
    """total_out = total + resize(scale_sum / cover, size)."""
    nodes = [
        helper.make_node("Div", ["scale_sum", "cover"], ["probs"]),
        _const("batch_axis", [0]),
        helper.make_node("Unsqueeze", ["probs", "batch_axis"], ["probs_nchw"]),
        helper.make_node("Resize", ["probs_nchw", "", "", "size"], ["resized"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Squeeze", ["resized", "batch_axis"], ["resized_chw"]),
        helper.make_node("Add", ["total", "resized_chw"], ["total_out"]),
    ]
    inputs = [_value("scale_sum", F32, 3), _value("cover", F32, 2), _value("total", F32, 3),
              _fixed("size", 4)]
    return _model("fold", _ordered(nodes), inputs, [_value("total_out", F32, 3)],
                  "a finished scale, divided by its coverage and resized, added to the image's sum")


def labels(elem: int, name: str) -> onnx.ModelProto:
    nodes = [helper.make_node("ArgMax", ["total"], ["ids"], axis=0, keepdims=0, select_last_index=0),
             helper.make_node("Cast", ["ids"], ["labels"], to=elem)]
    return _model(name, nodes, [_value("total", F32, 3)], [_value("labels", elem, 2)],
                  "the argmax over classes, first class on ties")


def confidence() -> onnx.ModelProto:
    nodes = [helper.make_node("ReduceMax", ["total"], ["top"], axes=[0], keepdims=0),
             helper.make_node("Div", ["top", "count"], ["values"])]
    return _model("confidence", nodes, [_value("total", F32, 3), _value("count", F32, 0)],
                  [_value("values", F32, 2)], "the winning class's probability per pixel")


def probability() -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", ["total", "class_index"], ["plane"], axis=0),
             helper.make_node("Div", ["plane", "count"], ["values"])]
    return _model("probability", nodes, [_value("total", F32, 3), _value("class_index", I64, 0),
                                         _value("count", F32, 0)],
                  [_value("values", F32, 2)], "one class's probability per pixel")


def probabilities() -> onnx.ModelProto:
    nodes = [helper.make_node("Div", ["total", "count"], ["mean"]),
             helper.make_node("Cast", ["mean"], ["values"], to=F16)]
    return _model("probabilities", nodes, [_value("total", F32, 3), _value("count", F32, 0)],
                  [_value("values", F16, 3)], "every class's probability per pixel, float16")


def tile_logits(elem: int, align_corners: bool, name: str) -> onnx.ModelProto:
    """A described model's raw logits (N, C, h, w) to float32 at the tile: cast, then bilinear resize."""
    mode = "align_corners" if align_corners else "half_pixel"
    nodes = [helper.make_node("Cast", ["raw"], ["raw_f32"], to=F32),
             helper.make_node("Resize", ["raw_f32", "", "", "size"], ["logits"], mode="linear",
                              coordinate_transformation_mode=mode)]
    return _model(name, nodes, [_value("raw", elem, 4), _fixed("size", 4)], [_value("logits", F32, 4)],
                  "strided or float16 logits to float32 at the tile, as torch's bilinear interpolate")


def graphs() -> Iterator[tuple[str, onnx.ModelProto]]:
    """Every graph the server ships, by file stem."""
    yield "window", window(False)
    yield "window_flip", window(True)
    yield "fold", fold()
    yield "labels_uint8", labels(TensorProto.UINT8, "labels_uint8")
    yield "labels_uint16", labels(TensorProto.UINT16, "labels_uint16")
    yield "confidence", confidence()
    yield "probability", probability()
    yield "probabilities", probabilities()
    for elem, dtype in ((F32, "float"), (F16, "float16")):
        for align_corners in (False, True):
            name = f"tile_logits_{dtype}_{'align_corners' if align_corners else 'half_pixel'}"
            yield name, tile_logits(elem, align_corners, name)


def write(folder: Path = GRAPHS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, model in graphs():
        path = folder / f"{stem}.onnx"
        path.write_bytes(model.SerializeToString(deterministic=True))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=GRAPHS, help="folder to write the graphs to")
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path.name)


if __name__ == "__main__":
    main()
