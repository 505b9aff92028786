"""The optional ``labels`` output of the artifact contract (service/contract/artifact.py).

Artifacts exported before it (``logits`` only) and after (``logits`` + ``labels``)
are both read; ``labels`` is checked for name, rank, tile, dtype per class count
and for being computed as the contract says, ``Cast(ArgMax(logits, axis=1,
keepdims=0, select_last_index=0))``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from model.labels_output import add_labels_output
from service.contract.artifact import (
    INPUT_NAME,
    LABELS_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ArtifactError,
    ArtifactOutputs,
    read_meta,
    read_outputs,
)
from tests.service.tiny_model import build_tiny_artifact, tiny_meta

TILE = (32, 48)


def test_both_forms_read_and_name_their_outputs(tmp_path: Path) -> None:
    old = build_tiny_artifact(tmp_path / "old.onnx", tile=TILE)
    new = build_tiny_artifact(tmp_path / "new.onnx", tile=TILE, with_labels=True)
    assert read_outputs(old) == ArtifactOutputs(labels_dtype=None)
    assert not read_outputs(old).has_labels and read_outputs(old).names == (OUTPUT_NAME,)
    assert read_outputs(new).labels_dtype is np.uint8
    assert read_outputs(new).names == (OUTPUT_NAME, LABELS_NAME)
    assert read_meta(old) == read_meta(new)  # the metadata does not change with the form


@pytest.mark.parametrize(("classes", "dtype"), [(5, np.uint8), (256, np.uint8), (257, np.uint16)])
def test_labels_dtype_follows_the_class_count(tmp_path: Path, classes: int, dtype: type) -> None:
    path = build_tiny_artifact(tmp_path / "m.onnx", tile=TILE, num_classes=classes, with_labels=True)
    assert read_outputs(path).labels_dtype is dtype
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tiles = (np.random.default_rng(classes).random((2, 3, *TILE), dtype=np.float32) * 255).astype(np.float32)
    logits, labels = session.run([OUTPUT_NAME, LABELS_NAME], {INPUT_NAME: tiles})
    assert labels.dtype == dtype and labels.shape == (2, *TILE)
    assert np.array_equal(labels, logits.argmax(axis=1))


def test_ties_go_to_the_first_class(tmp_path: Path) -> None:
    """``logits = image`` (three classes): exact ties, as uint8-quantised logits have them."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])], "identity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 3, 8, 8])])
    add_labels_output(graph, 3)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {METADATA_KEY: json.dumps(tiny_meta(tile=(8, 8), num_classes=3).to_json())})
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "ties.onnx"
    onnx.save(model, str(path))
    assert read_outputs(path).labels_dtype is np.uint8
    image = np.zeros((1, 3, 8, 8), np.float32)
    pixels = {(0, 0): ((5, 5, 1), 0), (0, 1): ((1, 7, 7), 1), (0, 2): ((2, 2, 2), 0), (0, 3): ((0, 3, 3), 1),
              (0, 4): ((4, 1, 4), 0), (0, 5): ((1, 2, 3), 2)}
    for (y, x), (values, _) in pixels.items():
        image[0, :, y, x] = values
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (labels,) = session.run([LABELS_NAME], {INPUT_NAME: image})
    assert {yx: int(labels[0, *yx]) for yx in pixels} == {yx: want for yx, (_, want) in pixels.items()}
    assert np.array_equal(labels, image.argmax(axis=1))  # numpy's rule, and argmax_classes'


def _edited(tmp_path: Path, edit: Callable[[onnx.GraphProto], None]) -> Path:
    path = build_tiny_artifact(tmp_path / "base.onnx", tile=TILE, with_labels=True)
    model = onnx.load(str(path))
    edit(model.graph)
    out = tmp_path / "edited.onnx"
    onnx.save(model, str(out))
    return out


def _node(graph: onnx.GraphProto, op: str) -> onnx.NodeProto:
    node: onnx.NodeProto = next(n for n in graph.node if n.op_type == op and n.name.startswith(LABELS_NAME))
    return node


def _set_attr(graph: onnx.GraphProto, op: str, name: str, value: int) -> None:
    node = _node(graph, op)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _declare(graph: onnx.GraphProto, elem: int, shape: list[str | int]) -> None:
    labels = next(o for o in graph.output if o.name == LABELS_NAME)
    labels.CopyFrom(helper.make_tensor_value_info(LABELS_NAME, elem, shape))


def _cast_to(elem: int) -> Callable[[onnx.GraphProto], None]:
    def edit(g: onnx.GraphProto) -> None:
        _set_attr(g, "Cast", "to", elem)
        _declare(g, elem, ["N", *TILE])
    return edit


def _keepdims(g: onnx.GraphProto) -> None:
    _set_attr(g, "ArgMax", "keepdims", 1)
    _declare(g, TensorProto.UINT8, ["N", 1, *TILE])


def _argmax_of_image(g: onnx.GraphProto) -> None:
    _node(g, "ArgMax").input[0] = INPUT_NAME


NOT_ARGMAX = "is not Cast(ArgMax"
BAD: dict[str, tuple[Callable[[onnx.GraphProto], None], str]] = {
    "int64": (_cast_to(TensorProto.INT64), "is int64, expected uint8 for 5 classes"),
    "uint16 for 5 classes": (_cast_to(TensorProto.UINT16), "is uint16, expected uint8"),
    "rank 4": (_keepdims, "has shape [None, 1, 32, 48]"),
    "wrong tile": (lambda g: _declare(g, TensorProto.UINT8, ["N", 48, 32]), "expected [N, 32, 48]"),
    "last index on ties": (lambda g: _set_attr(g, "ArgMax", "select_last_index", 1), NOT_ARGMAX),
    "wrong axis": (lambda g: _set_attr(g, "ArgMax", "axis", 2), NOT_ARGMAX),
    "argmax of the input": (_argmax_of_image, NOT_ARGMAX),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_labels_output_off_the_contract_is_refused(tmp_path: Path, case: str) -> None:
    edit, message = BAD[case]
    path = _edited(tmp_path, edit)
    for read in (read_outputs, read_meta):  # the server refuses it at start, whichever it calls
        with pytest.raises(ArtifactError, match="output 'labels' .*" + re.escape(message)):
            read(path)


def test_add_labels_output_needs_logits_and_adds_once(tmp_path: Path) -> None:
    path = build_tiny_artifact(tmp_path / "m.onnx", tile=TILE, with_labels=True)
    graph = onnx.load(str(path)).graph
    with pytest.raises(ArtifactError, match="no 'labels' output yet"):
        add_labels_output(graph, 5)
    bare = helper.make_graph([], "empty", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])])
    with pytest.raises(ArtifactError, match="need a 'logits' output"):
        add_labels_output(bare, 5)
