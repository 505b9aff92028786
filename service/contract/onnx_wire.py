"""Read what the service checks in an ONNX file straight from the protobuf wire format.

The service needs an artifact's metadata, its input and output declarations and
the two nodes behind ``labels`` (service/contract/artifact.py); ONNX Runtime's own model
metadata gives the first two but not the graph's nodes, and the ``onnx`` package
(31 MB with protobuf) would be a dependency for this alone. The file is mapped,
not read: weights (``raw_data`` of initializers) are skipped by their length,
never copied. Only the fields below are decoded; field numbers are those of
onnx.proto3 (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto,
TypeProto, TensorShapeProto, TensorProto, StringStringEntryProto).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# onnx.TensorProto.DataType values the service names
FLOAT, UINT8, UINT16 = 1, 2, 4
ELEM_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                   10: "float16", 11: "float64", 16: "bfloat16"}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element type (None if not a tensor) and dims (None = symbolic)."""

    name: str
    elem_type: int | None
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    int_attrs: dict[str, int]


@dataclass(frozen=True)
class ModelView:
    metadata: dict[str, str]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    initializers: frozenset[str]
    nodes: tuple[Node, ...]


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field in [start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError("length-delimited field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise WireError("fixed-width field runs past its message")
        else:
            raise WireError(f"unsupported wire type {wire}")


def _text(buf: memoryview, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"a string field is not UTF-8: {e}") from None


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _entry(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, a, b in _fields(buf, start, end):
        if wire == _LEN and number == 1:
            key = _text(buf, a, b)
        elif wire == _LEN and number == 2:
            value = _text(buf, a, b)
    return key, value


def _shape(buf: memoryview, start: int, end: int) -> tuple[int | None, ...]:
    dims: list[int | None] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:  # TensorShapeProto.dim
            value = None
            for n, w, x, _ in _fields(buf, a, b):
                if n == 1 and w == _VARINT:  # Dimension.dim_value
                    value = _signed64(x)
            dims.append(value)
    return tuple(dims)


def _value_info(buf: memoryview, start: int, end: int) -> ValueInfo:
    name, elem, shape = "", None, None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == _LEN:
            name = _text(buf, a, b)
        elif number == 2 and wire == _LEN:  # TypeProto
            for n, w, x, y in _fields(buf, a, b):
                if n == 1 and w == _LEN:  # TypeProto.tensor_type
                    elem = 0
                    for n2, w2, x2, y2 in _fields(buf, x, y):
                        if n2 == 1 and w2 == _VARINT:
                            elem = x2
                        elif n2 == 2 and w2 == _LEN:
                            shape = _shape(buf, x2, y2)
    return ValueInfo(name, elem, shape)


def _node(buf: memoryview, start: int, end: int) -> Node:
    op_type = ""
    inputs: list[str] = []
    outputs: list[str] = []
    attrs: dict[str, int] = {}
    for number, wire, a, b in _fields(buf, start, end):
        if wire != _LEN:
            continue
        if number == 1:
            inputs.append(_text(buf, a, b))
        elif number == 2:
            outputs.append(_text(buf, a, b))
        elif number == 4:
            op_type = _text(buf, a, b)
        elif number == 5:  # AttributeProto: its name and, for INT attributes, i
            attr_name, attr_int = "", None
            for n, w, x, y in _fields(buf, a, b):
                if n == 1 and w == _LEN:
                    attr_name = _text(buf, x, y)
                elif n == 3 and w == _VARINT:
                    attr_int = _signed64(x)
            if attr_int is not None:
                attrs[attr_name] = attr_int
    return Node(op_type, tuple(inputs), tuple(outputs), attrs)


def _tensor_name(buf: memoryview, start: int, end: int) -> str:
    for number, wire, a, b in _fields(buf, start, end):
        if number == 8 and wire == _LEN:  # TensorProto.name; raw_data is skipped unread
            return _text(buf, a, b)
    return ""


def parse_model(buf: memoryview) -> ModelView:
    """The parts of a serialised ModelProto the service checks."""
    metadata: dict[str, str] = {}
    inputs: list[ValueInfo] = []
    outputs: list[ValueInfo] = []
    initializers: set[str] = set()
    nodes: list[Node] = []
    seen_graph = False
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 14 and wire == _LEN:  # metadata_props
            key, value = _entry(buf, a, b)
            metadata[key] = value
        elif number == 7 and wire == _LEN:  # graph
            seen_graph = True
            for n, w, x, y in _fields(buf, a, b):
                if w != _LEN:
                    continue
                if n == 1:
                    nodes.append(_node(buf, x, y))
                elif n == 5:
                    initializers.add(_tensor_name(buf, x, y))
                elif n == 11:
                    inputs.append(_value_info(buf, x, y))
                elif n == 12:
                    outputs.append(_value_info(buf, x, y))
    if not seen_graph:
        raise WireError("no graph")
    return ModelView(metadata, tuple(inputs), tuple(outputs), frozenset(initializers), tuple(nodes))


def read_model(path: Path) -> ModelView:
    """:func:`parse_model` of a file, memory-mapped. Raises WireError (or OSError) on failure."""
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            raise WireError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return parse_model(view)
            finally:
                view.release()
