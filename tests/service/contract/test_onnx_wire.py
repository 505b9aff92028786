"""service.contract.onnx_wire reads what the onnx package reads, for the parts the service checks."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from service.contract.onnx_wire import ModelView, Node, ValueInfo, WireError, parse_model, read_model
from service.settings import shipped_model
from tests.service.tiny_model import build_tiny_artifact


def _expected(path: Path) -> ModelView:
    """The same view built with the onnx package, the reference implementation."""
    m = onnx.load(str(path), load_external_data=False)

    def info(v: onnx.ValueInfoProto) -> ValueInfo:
        if not v.type.HasField("tensor_type"):
            return ValueInfo(v.name, None, None)
        t = v.type.tensor_type
        shape = (tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                 if t.HasField("shape") else None)
        return ValueInfo(v.name, t.elem_type, shape)

    nodes = tuple(Node(n.op_type, tuple(n.input), tuple(n.output),
                       {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT})
                  for n in m.graph.node)
    return ModelView({p.key: p.value for p in m.metadata_props}, tuple(info(i) for i in m.graph.input),
                     tuple(info(o) for o in m.graph.output), frozenset(t.name for t in m.graph.initializer),
                     nodes)


@pytest.mark.parametrize("with_labels", [False, True])
def test_tiny_artifact_reads_as_onnx_reads_it(tmp_path: Path, with_labels: bool) -> None:
    path = build_tiny_artifact(tmp_path / "tiny.onnx", with_labels=with_labels)
    view = read_model(path)
    assert view == _expected(path)
    assert view.initializers  # the tiny graph has weights: they were walked over, by name
    if with_labels:
        argmax = next(n for n in view.nodes if n.op_type == "ArgMax")
        assert argmax.int_attrs == {"axis": 1, "keepdims": 0, "select_last_index": 0}


@pytest.mark.parametrize("name", ["pspnet_camvid.onnx", "pspnet_camvid_int8.onnx"])
def test_shipped_artifacts_read_as_onnx_reads_them(name: str) -> None:
    path = shipped_model(name)
    assert path.is_file(), path
    assert read_model(path) == _expected(path)


def test_negative_and_symbolic_values(tmp_path: Path) -> None:
    # a negative int attribute is a 10-byte two's-complement varint; a dim_param has no dim_value
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=-3, keepdims=0)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 5])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"k": "v ü"})
    path = tmp_path / "neg.onnx"
    onnx.save(model, str(path))
    view = read_model(path)
    assert view == _expected(path)
    assert view.nodes[0].int_attrs["axis"] == -3
    assert view.inputs[0].shape == (None, 4, 5)
    assert view.metadata == {"k": "v ü"}


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x3a\xff\xff\xff\xff\x0f", b"\x07abc", b"\x3a\x02\x0a"])
def test_malformed_bytes_are_wire_errors(tmp_path: Path, data: bytes) -> None:
    # empty; a truncated varint; a graph longer than the file; wire type 7; a node running past its graph
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(WireError):
        read_model(path)


def test_truncated_artifact_is_refused(tmp_path: Path) -> None:
    whole = build_tiny_artifact(tmp_path / "tiny.onnx").read_bytes()
    with pytest.raises(WireError):
        parse_model(memoryview(whole[: len(whole) // 2]))
