"""Description files: parsed, checked against the graph, every error naming the field to change;
a PSPNet artifact without one is described by its own metadata, as before."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.contract.artifact import ArtifactError, read_meta
from service.contract.description import ARTIFACT_CALL, GraphCall, read_description
from tests.service.described_graphs import build_graph, description, write
from tests.service.tiny_model import build_tiny_artifact


def test_an_artifact_without_a_description_is_described_by_its_metadata(tmp_path: Path) -> None:
    path = build_tiny_artifact(tmp_path / "tiny.onnx", with_labels=True)
    d = read_description(path)
    assert d.call == ARTIFACT_CALL and d.sidecar is None
    assert d.meta == read_meta(path) and d.outputs == ("logits", "labels")


def test_a_description_round_trips(tmp_path: Path) -> None:
    path = write(
        build_graph(tmp_path / "m.onnx", layout="NHWC", dtype="float16", kind="strided_logits"),
        description(layout="NHWC", dtype="float16", kind="strided_logits", colour="BGR"),
    )
    d = read_description(path)
    assert d.call == GraphCall(
        input_name="x",
        layout="NHWC",
        dtype="float16",
        colour="BGR",
        normalised_in_graph=False,
        output_name="out",
        kind="strided_logits",
        stride=2,
    )
    assert d.outputs == ("logits",) and d.meta.tile == (16, 24) and d.meta.classes == ("r", "g", "b")
    assert json.loads(json.dumps(d.to_json())) == {
        **description(layout="NHWC", dtype="float16", kind="strided_logits", colour="BGR")
    }


def _without(d: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = json.loads(json.dumps(d))
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[last]
    return out


def _set(d: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(d))
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[last] = value
    return out


BASE = description()


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        (
            _set(BASE, "input.name", "image"),
            "input.name 'image' is not an input of the graph; its inputs are ['x']",
        ),
        (_without(BASE, "classes"), "m.json lacks 'classes'"),
        (_without(BASE, "input.layout"), "input.layout is missing"),
        (_without(BASE, "output"), "output is missing"),
        (_set(BASE, "input.layout", "NWHC"), "input.layout 'NWHC' is not one of NCHW, NHWC"),
        (_set(BASE, "input.layout", "NHWC"), "input.layout NHWC puts the colours where the graph's input"),
        (_set(BASE, "input.dtype", "float16"), "input.dtype is float16 but the graph's input 'x' is float32"),
        (_set(BASE, "input.dtype", "int32"), "input.dtype 'int32' is not one of float32, float16, uint8"),
        (_set(BASE, "input.colour", "GRB"), "input.colour 'GRB' is not one of RGB, BGR"),
        (_set(BASE, "input.normalised_in_graph", "yes"), "input.normalised_in_graph must be true or false"),
        (
            _set(BASE, "output.name", "logits"),
            "output.name 'logits' is not an output of the graph; its outputs are",
        ),
        (_set(BASE, "output.kind", "probabilities"), "output.kind 'probabilities' is not one of"),
        (_set(BASE, "output.kind", "strided_logits"), "output.stride is missing"),
        (_set(BASE, "output.kind", "labels"), "output.kind labels needs class ids, but 'out' is float32"),
        (
            _set(BASE, "tile", [32, 24]),
            "tile is [32, 24] but the graph's input takes 16x24: set tile to [16, 24]",
        ),
        (_set(BASE, "classes", ["a", "b"]), "2 classes but 3 palette colours"),
        (
            _set(_set(BASE, "classes", ["a", "b"]), "palette", [[0, 0, 0], [1, 1, 1]]),
            "classes names 2 classes but output 'out' has 3 channels",
        ),
        (_set(BASE, "batch", 4), 'batch must be "dynamic" or 1, not 4'),
        (_set(BASE, "std", [1, 0, 1]), "std positive"),
        (
            _set(_set(BASE, "input.dtype", "uint8"), "input.normalised_in_graph", False),
            "input.dtype uint8 carries raw 0..255 values",
        ),
    ],
)
def test_bad_descriptions_name_the_field(tmp_path: Path, desc: dict[str, Any], message: str) -> None:
    path = write(build_graph(tmp_path / "m.onnx"), desc)
    with pytest.raises(ArtifactError) as e:
        read_description(path)
    assert message in str(e.value)


def test_graph_mismatches_name_the_field(tmp_path: Path) -> None:
    strided = write(build_graph(tmp_path / "s.onnx", kind="strided_logits"), description())
    with pytest.raises(
        ArtifactError,
        match=re.escape(
            "output 'out' is 8x12, not the tile 16x24 / 1; logits at a stride are output.kind strided_logits"
        ),
    ):
        read_description(strided)
    wrong = write(
        build_graph(tmp_path / "w.onnx", kind="strided_logits"),
        _set(description(kind="strided_logits"), "output.stride", 4),
    )
    with pytest.raises(ArtifactError, match=re.escape("output 'out' is 8x12, not the tile 16x24 / 4")):
        read_description(wrong)
    fixed = write(build_graph(tmp_path / "f.onnx", batch=1), description())
    with pytest.raises(ArtifactError, match="set batch to 1"):
        read_description(fixed)
    (tmp_path / "j.onnx").write_bytes((tmp_path / "f.onnx").read_bytes())
    (tmp_path / "j.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"j\.json is not JSON"):
        read_description(tmp_path / "j.onnx")


def test_a_foreign_model_without_a_description_says_how_to_get_one(tmp_path: Path) -> None:
    path = build_graph(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match=r"describe it in m\.json beside it"):
        read_description(path)
