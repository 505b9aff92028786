"""A model description: what the server needs to serve any semantic segmentation ONNX.

A PSPNet artifact describes itself (its ``pspnet`` metadata, service/contract/artifact.py) and
takes what the chain cuts: one input ``image``, float32 NCHW, raw 0..255 RGB, normalised in the
graph, and returns ``logits`` at the tile's resolution (:data:`ARTIFACT_CALL`). Any other ONNX
file ``X.onnx`` is described by ``X.json`` beside it (docs/DESIGN.md "The seam"): the
artifact's metadata fields (``name``, ``dataset``, ``classes``, ``palette``, ``tile``,
``mean``, ``std`` in 0..255 units of R, G, B, ``align_corners``, ``protocol``) and how to call
the graph (:class:`GraphCall`)::

    "input":  {"name": "pixel_values", "layout": "NCHW", "dtype": "float32", "colour": "RGB",
               "normalised_in_graph": false},
    "output": {"name": "logits", "kind": "strided_logits", "stride": 4},
    "batch":  "dynamic"

``layout`` NCHW or NHWC; ``dtype`` float32, float16 or uint8 (raw values: only with
``normalised_in_graph``); ``colour`` RGB or BGR; ``normalised_in_graph`` false: the server
feeds ``(x - mean) / std``. ``kind``: ``logits`` ``[N, C, H, W]`` at the input's resolution,
``strided_logits`` at 1/``stride`` of it (each tile's resized bilinearly to the tile with
``align_corners``, before the stitch), or ``labels`` ``[N, H, W]`` class ids only. ``batch``
``"dynamic"`` or ``1`` (a graph with a fixed batch of one: the engine runs its tiles one at a
time). Every field is required; a description beside a file wins over the file's own metadata.
:func:`read_description` checks the file against the graph's declarations (read from the wire
format, no ``onnx`` package); each error names the field to change.

Tested by tests/service/contract/test_description.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from service.contract.artifact import (
    INPUT_NAME,
    LABELS_NAME,
    OUTPUT_NAME,
    ArtifactError,
    ArtifactMeta,
    LabelDtype,
    label_dtype,
    meta_from_dict,
    read_artifact,
)
from service.contract.onnx_wire import ELEM_TYPE_NAMES, ModelView, ValueInfo, WireError, read_model

Layout = Literal["NCHW", "NHWC"]
InputDtype = Literal["float32", "float16", "uint8"]
Colour = Literal["RGB", "BGR"]
OutputKind = Literal["logits", "strided_logits", "labels"]
LAYOUTS: tuple[Layout, ...] = ("NCHW", "NHWC")
INPUT_DTYPES: tuple[InputDtype, ...] = ("float32", "float16", "uint8")
COLOURS: tuple[Colour, ...] = ("RGB", "BGR")
OUTPUT_KINDS: tuple[OutputKind, ...] = ("logits", "strided_logits", "labels")
#: ONNX element types of a logits output, and of a labels-only output (class ids)
FLOAT_TYPES = ("float32", "float16")
INTEGER_TYPES = ("uint8", "int8", "uint16", "int16", "int32", "int64")
#: the keys of a description that say how to call the graph (the rest is the artifact's metadata)
CALL_KEYS = ("input", "output", "batch")


@dataclass(frozen=True)
class GraphCall:
    """How the engine feeds the graph and reads it back (the defaults: a PSPNet artifact)."""

    input_name: str = INPUT_NAME
    layout: Layout = "NCHW"
    dtype: InputDtype = "float32"
    colour: Colour = "RGB"
    normalised_in_graph: bool = True
    output_name: str = OUTPUT_NAME
    kind: OutputKind = "logits"
    stride: int = 1  # strided_logits: the output is 1/stride of the input's height and width
    batch: int | None = None  # None: dynamic; 1: a fixed batch of one

    @property
    def output(self) -> str:
        """The contract's output this graph gives the chain: ``logits`` or ``labels``."""
        return LABELS_NAME if self.kind == "labels" else OUTPUT_NAME

    def to_json(self) -> dict[str, Any]:
        output: dict[str, Any] = {"name": self.output_name, "kind": self.kind}
        if self.kind == "strided_logits":
            output["stride"] = self.stride
        return {"input": {"name": self.input_name, "layout": self.layout, "dtype": self.dtype,
                          "colour": self.colour, "normalised_in_graph": self.normalised_in_graph},
                "output": output, "batch": "dynamic" if self.batch is None else self.batch}


#: a PSPNet artifact's call: it takes the chain's tiles and returns its logits as they are
ARTIFACT_CALL = GraphCall()


@dataclass(frozen=True)
class ModelDescription:
    """One servable model: its metadata, how to call it, the contract's outputs it gives."""

    meta: ArtifactMeta
    call: GraphCall
    outputs: tuple[str, ...]  # ("logits",), ("logits", "labels") or ("labels",)
    sidecar: Path | None = None  # the description file; None: an artifact's own metadata

    @property
    def labels_dtype(self) -> LabelDtype:
        return label_dtype(self.meta.num_classes)

    def to_json(self) -> dict[str, Any]:
        """The description file's object (``source`` and ``metrics`` only when set)."""
        d = {k: v for k, v in self.meta.to_json().items() if v or k not in ("source", "metrics")}
        return {**d, **self.call.to_json()}


def sidecar_path(model: Path) -> Path:
    """Where a model's description file lies: ``X.onnx`` -> ``X.json``."""
    return model.with_suffix(".json")


def _field(d: dict[str, Any], section: str, key: str, where: str) -> Any:
    if key not in d:
        raise ArtifactError(f"{where}: {section}.{key} is missing")
    return d[key]


def _one_of(value: Any, allowed: tuple[str, ...], name: str, where: str) -> str:
    if value not in allowed:
        raise ArtifactError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _flag(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ArtifactError(f"{where}: {name} must be true or false, not {value!r}")
    return value


def parse_call(d: dict[str, Any], where: str) -> GraphCall:
    """The ``input``, ``output`` and ``batch`` of a description; every problem an ArtifactError."""
    for key in CALL_KEYS:
        if key not in d:
            raise ArtifactError(f"{where}: {key} is missing")
    inp, out = d["input"], d["output"]
    for key, section in (("input", inp), ("output", out)):
        if not isinstance(section, dict):
            raise ArtifactError(f"{where}: {key} must be an object")
    name = _field(inp, "input", "name", where)
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{where}: input.name must be the graph input's name")
    out_name = _field(out, "output", "name", where)
    if not isinstance(out_name, str) or not out_name:
        raise ArtifactError(f"{where}: output.name must be the graph output's name")
    kind = _one_of(_field(out, "output", "kind", where), OUTPUT_KINDS, "output.kind", where)
    stride = 1
    if kind == "strided_logits":
        stride = _field(out, "output", "stride", where)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2:
            raise ArtifactError(f"{where}: output.stride must be an integer >= 2, not {stride!r}")
    batch = d["batch"]
    if batch not in ("dynamic", 1) or isinstance(batch, bool):
        raise ArtifactError(f"{where}: batch must be \"dynamic\" or 1, not {batch!r}")
    call = GraphCall(
        input_name=name,
        layout=cast(Layout, _one_of(_field(inp, "input", "layout", where), LAYOUTS, "input.layout", where)),
        dtype=cast(InputDtype, _one_of(_field(inp, "input", "dtype", where), INPUT_DTYPES, "input.dtype",
                                       where)),
        colour=cast(Colour, _one_of(_field(inp, "input", "colour", where), COLOURS, "input.colour", where)),
        normalised_in_graph=_flag(_field(inp, "input", "normalised_in_graph", where),
                                  "input.normalised_in_graph", where),
        output_name=out_name, kind=cast(OutputKind, kind), stride=stride,
        batch=None if batch == "dynamic" else 1)
    if call.dtype == "uint8" and not call.normalised_in_graph:
        raise ArtifactError(f"{where}: input.dtype uint8 carries raw 0..255 values, so normalisation must be "
                            "in the graph: set input.normalised_in_graph to true")
    return call


def parse_description(raw: str, where: str) -> tuple[ArtifactMeta, GraphCall]:
    """The metadata and the call of a description file's text."""
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{where} is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"{where} must be a JSON object")
    call = parse_call(d, where)
    meta = meta_from_dict({k: v for k, v in d.items() if k not in CALL_KEYS}, where)
    return meta, call


def _type_name(value: ValueInfo) -> str:
    return ELEM_TYPE_NAMES.get(value.elem_type or 0, f"type {value.elem_type}")


def _spatial_ok(found: int | None, tile: int, stride: int) -> bool:
    return found is None or found in (tile // stride, math.ceil(tile / stride))


def check_graph(model: ModelView, meta: ArtifactMeta, call: GraphCall, where: str) -> None:
    """The description agrees with what the graph declares (dims a graph leaves symbolic pass)."""
    inputs = [i for i in model.inputs if i.name not in model.initializers]
    names = [i.name for i in inputs]
    if call.input_name not in names:
        raise ArtifactError(f"{where}: input.name {call.input_name!r} is not an input of the graph; "
                            f"its inputs are {names}")
    if len(inputs) != 1:
        raise ArtifactError(f"{where}: the graph takes {len(inputs)} inputs {names}; the server feeds one")
    inp = inputs[0]
    if _type_name(inp) != call.dtype:
        raise ArtifactError(f"{where}: input.dtype is {call.dtype} but the graph's input {inp.name!r} is "
                            f"{_type_name(inp)}")
    shape = list(inp.shape or ())
    if len(shape) != 4:
        raise ArtifactError(f"{where}: the graph's input {inp.name!r} has shape {shape}, not 4 dimensions")
    channels, hw = (shape[1], shape[2:]) if call.layout == "NCHW" else (shape[3], shape[1:3])
    if channels not in (None, 3):
        raise ArtifactError(f"{where}: input.layout {call.layout} puts the colours where the graph's input "
                            f"{shape} has {channels}")
    if any(d is not None and d != t for d, t in zip(hw, meta.tile, strict=True)):
        raise ArtifactError(f"{where}: tile is {list(meta.tile)} but the graph's input takes "
                            f"{hw[0]}x{hw[1]}: set tile to {hw}")
    if shape[0] is not None and shape[0] != 1:
        raise ArtifactError(f"{where}: the graph's input has a fixed batch of {shape[0]}; the server runs "
                            "a dynamic batch or a batch of 1")
    if shape[0] == 1 and call.batch is None:
        raise ArtifactError(f"{where}: batch is \"dynamic\" but the graph's input has a fixed batch of 1: "
                            "set batch to 1")
    outputs = {o.name: o for o in model.outputs}
    out = outputs.get(call.output_name)
    if out is None:
        raise ArtifactError(f"{where}: output.name {call.output_name!r} is not an output of the graph; its "
                            f"outputs are {list(outputs)}")
    _check_output(out, meta, call, where)


def _check_output(out: ValueInfo, meta: ArtifactMeta, call: GraphCall, where: str) -> None:
    shape = list(out.shape or ())
    if call.kind == "labels":
        if _type_name(out) not in INTEGER_TYPES:
            raise ArtifactError(f"{where}: output.kind labels needs class ids, but {out.name!r} is "
                                f"{_type_name(out)}")
        if out.shape is not None and (len(shape) != 3 or any(
                d is not None and d != t for d, t in zip(shape[1:], meta.tile, strict=True))):
            raise ArtifactError(f"{where}: output.kind labels needs [N, {meta.tile[0]}, {meta.tile[1]}], but "
                                f"{out.name!r} is {shape}")
        return
    if _type_name(out) not in FLOAT_TYPES:
        raise ArtifactError(f"{where}: output.kind {call.kind} needs float32 or float16 logits, but "
                            f"{out.name!r} is {_type_name(out)}")
    if out.shape is None:
        return
    if len(shape) != 4:
        raise ArtifactError(f"{where}: output {out.name!r} has shape {shape}; logits are [N, C, H, W]")
    if shape[1] is not None and shape[1] != meta.num_classes:
        raise ArtifactError(f"{where}: classes names {meta.num_classes} classes but output {out.name!r} has "
                            f"{shape[1]} channels")
    if not all(_spatial_ok(d, t, call.stride) for d, t in zip(shape[2:], meta.tile, strict=True)):
        hint = ("; logits at a stride are output.kind strided_logits with output.stride"
                if call.kind == "logits" else "")
        raise ArtifactError(f"{where}: output {out.name!r} is {shape[2]}x{shape[3]}, not the tile "
                            f"{meta.tile[0]}x{meta.tile[1]} / {call.stride}{hint}")


def read_description(path: Path) -> ModelDescription:
    """The description of the model at ``path``: its ``.json`` beside it, else its own metadata."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        meta, outputs = read_artifact(path)
        return ModelDescription(meta, ARTIFACT_CALL, outputs.names)
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    try:
        raw = sidecar.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"cannot read {sidecar}: {e}") from None
    meta, call = parse_description(raw, sidecar.name)
    try:
        model = read_model(path)
    except (WireError, OSError) as e:
        raise ArtifactError(f"{path} is not a readable ONNX model: {e}") from None
    check_graph(model, meta, call, sidecar.name)
    return ModelDescription(meta, call, (call.output,), sidecar)
