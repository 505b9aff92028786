"""``pspnet-serve describe MODEL.onnx``: draft the description file of any segmentation ONNX.

Reads the graph's one input (name, layout, dtype, fixed or dynamic sizes and batch) from the
file, picks the tile (the input's own size, or ``--tile``, or 512x512 for a dynamic input),
runs ONE inference of a grey tile on ONNX Runtime's CPU provider to learn the class count and
the output's stride, and writes ``MODEL.json`` beside the model
(service/contract/description.py): placeholder class names ``class_0``..., a generated
palette, ImageNet's mean and std in 0..255 units, RGB, normalisation by the server, the
protocol defaults (slide, base size = the tile's long side, stride 2/3, no flip). The draft is
read back with the server's own reader before the command says it is done, so a graph with one
NCHW float input and one logits output serves as drafted: ``describe`` then
``pspnet-serve --model DIR``. An existing description is kept unless ``--force``.
No torch: ONNX Runtime and the wire reader only.

Tested by tests/service/test_describe.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.contract.artifact import METADATA_KEY, ArtifactError, ArtifactMeta, InferenceProtocol
from service.contract.description import (
    INPUT_DTYPES,
    INTEGER_TYPES,
    GraphCall,
    InputDtype,
    Layout,
    ModelDescription,
    OutputKind,
    read_description,
    sidecar_path,
)
from service.contract.onnx_wire import ELEM_TYPE_NAMES, WireError, read_model

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
DEFAULT_TILE = (512, 512)
_NUMPY = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


def draft_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for up to 256 classes (odd multipliers are one-to-one modulo 256)."""
    return tuple(((53 * i + 128) % 256, (151 * i + 32) % 256, (229 * i + 200) % 256)
                 for i in range(num_classes))


def _layout(shape: list[int | None]) -> Layout:
    if shape[1] == 3:
        return "NCHW"
    if shape[3] == 3:
        return "NHWC"
    raise ArtifactError(f"cannot tell where the colours are in the input shape {shape}: neither axis 1 nor "
                        "axis 3 is 3; write the description by hand")


def _tile(hw: list[int | None], asked: tuple[int, int] | None) -> tuple[int, int]:
    fixed = [d for d in hw if d is not None]
    if len(fixed) == 2:
        if asked is not None and tuple(fixed) != asked:
            raise ArtifactError(f"the graph's input takes {fixed[0]}x{fixed[1]} tiles, not --tile {asked[0]} "
                                f"{asked[1]}")
        return (fixed[0], fixed[1])
    if fixed:
        raise ArtifactError(f"the graph's input fixes one side ({hw}) but not the other: write the "
                            "description by hand")
    return asked or DEFAULT_TILE


def _stride(found: tuple[int, ...], tile: tuple[int, int]) -> int:
    """1 at the tile's resolution, else the integer stride both sides agree on."""
    if found == tile:
        return 1
    for s in range(2, max(tile) + 1):
        if all(f in (t // s, -(-t // s)) for f, t in zip(found, tile, strict=True)):
            return s
    raise ArtifactError(f"the output is {found[0]}x{found[1]} for a {tile[0]}x{tile[1]} tile: not the tile "
                        "at an integer stride")


def draft(model: Path, tile: tuple[int, int] | None = None) -> tuple[ModelDescription, list[str]]:
    """The draft description of ``model`` and notes on what was found (one inference on the CPU)."""
    try:
        view = read_model(model)
    except (WireError, OSError) as e:
        raise ArtifactError(f"{model} is not a readable ONNX model: {e}") from None
    if METADATA_KEY in view.metadata:  # a draft would add ImageNet normalisation to the graph's own
        raise ArtifactError(f"{model} is a pspnet-model artifact: it describes itself (classes, protocol, "
                            "normalisation inside the graph); serve it as it is, with no description")
    inputs = [i for i in view.inputs if i.name not in view.initializers]
    if len(inputs) != 1:
        raise ArtifactError(f"the graph takes {len(inputs)} inputs {[i.name for i in inputs]}; the server "
                            "feeds one image")
    inp = inputs[0]
    dtype = ELEM_TYPE_NAMES.get(inp.elem_type or 0, f"type {inp.elem_type}")
    shape = list(inp.shape or ())
    if dtype not in _NUMPY or len(shape) != 4:
        raise ArtifactError(f"input {inp.name!r} is {dtype} {shape}: the server feeds float32, float16 or "
                            "uint8 images of 4 dimensions")
    layout = _layout(shape)
    hw = shape[2:] if layout == "NCHW" else shape[1:3]
    size = _tile(hw, tile)
    if shape[0] not in (None, 1):
        raise ArtifactError(f"the graph's input has a fixed batch of {shape[0]}; the server runs a dynamic "
                            "batch or a batch of 1")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = session.get_outputs()
    logits = [o for o in outs if o.type in ("tensor(float)", "tensor(float16)") and len(o.shape) == 4]
    labels = [o for o in outs if o.type in tuple(f"tensor({t})" for t in INTEGER_TYPES) and len(o.shape) == 3]
    chosen = (logits or labels or [None])[0]
    if chosen is None:
        raise ArtifactError(f"no output looks like logits [N, C, H, W] or labels [N, H, W]: "
                            f"{[(o.name, o.type, o.shape) for o in outs]}")
    grey = np.full((1, 3, *size) if layout == "NCHW" else (1, *size, 3), 0 if dtype != "uint8" else 128,
                   dtype=_NUMPY[dtype])
    result = np.asarray(session.run([chosen.name], {inp.name: grey})[0])
    notes = [f"input {inp.name!r}: {layout} {dtype}, tile {size[0]}x{size[1]}"
             + (" (a dynamic input: chosen)" if hw == [None, None] else ""),
             "batch: " + ("fixed 1, tiles run one at a time" if shape[0] == 1 else "dynamic")]
    kind: OutputKind
    if chosen in logits:
        classes, stride = int(result.shape[1]), _stride(tuple(result.shape[2:]), size)
        kind = "logits" if stride == 1 else "strided_logits"
        notes.append(f"output {chosen.name!r}: {classes} classes, " + (
            "at the tile's resolution" if stride == 1 else f"at stride {stride} (resized to the tile)"))
    else:
        classes, stride, kind = 2, 1, "labels"
        notes.append(f"output {chosen.name!r}: labels; set classes (placeholder: 2 classes)")
    if len(outs) > 1:
        notes.append(f"the graph has {len(outs)} outputs; the draft serves {chosen.name!r}")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", model.stem).lstrip("._-") or "model"
    meta = ArtifactMeta(
        name=name, dataset="unknown", classes=tuple(f"class_{i}" for i in range(classes)),
        palette=draft_palette(classes), tile=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, align_corners=False,
        protocol=InferenceProtocol(mode="slide", base_size=max(size), scales=(1.0,), stride_rate=2 / 3,
                                   flip=False))
    call = GraphCall(input_name=inp.name, layout=layout, dtype=_as_dtype(dtype),
                     normalised_in_graph=dtype == "uint8", output_name=chosen.name, kind=kind,
                     stride=stride, batch=1 if shape[0] == 1 else None)
    return ModelDescription(meta, call, (call.output,)), notes


def _as_dtype(name: str) -> InputDtype:
    for known in INPUT_DTYPES:
        if name == known:
            return known
    raise ArtifactError(f"input dtype {name} is not one of {', '.join(INPUT_DTYPES)}")


def write_draft(model: Path, *, tile: tuple[int, int] | None = None,
                force: bool = False) -> tuple[Path, list[str]]:
    """Draft, write and read back ``model``'s description; refuses to overwrite one unless ``force``."""
    target = sidecar_path(model)
    if target.exists() and not force:
        raise ArtifactError(f"{target} exists; pass --force to overwrite it")
    description, notes = draft(model, tile)
    body: dict[str, Any] = description.to_json()
    target.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    read_description(model)  # the server's own checks: what is written serves
    return target, notes


def describe_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pspnet-serve describe",
        description="Draft MODEL.json beside MODEL.onnx (any semantic segmentation ONNX), for you to "
                    "complete: class names, palette, mean/std, colour order, protocol.")
    parser.add_argument("model", type=Path, help="the .onnx file")
    parser.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"),
                        help=f"the tile of a dynamic input (default {DEFAULT_TILE[0]} {DEFAULT_TILE[1]})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing description")
    args = parser.parse_args(argv)
    if args.tile is not None and min(args.tile) < 8:
        parser.error("--tile needs sides of at least 8 pixels")
    try:
        target, notes = write_draft(args.model, tile=None if args.tile is None else tuple(args.tile),
                                    force=args.force)
    except ArtifactError as e:
        print(f"pspnet-serve describe: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    for note in notes:
        print(f"  {note}")
    print("  placeholders to edit: classes and palette, dataset, mean/std (ImageNet's, 0..255 units, "
          "applied as (x - mean) / std), colour, align_corners, protocol")
    return 0

