"""Open Inference Protocol (KServe v2) tensors over HTTP: JSON and Triton's binary data extension.

Framework-free: bytes in, tensors out, and back. A request body is JSON, or,
with the ``Inference-Header-Content-Length: L`` header, L bytes of JSON followed
by the raw data of every input whose ``parameters.binary_data_size`` is set, in
input order. Raw BYTES tensors are elements each prefixed by its length (uint32,
little endian); other types are their row-major values in little endian. In
JSON, ``data`` is a flat or nested row-major list; BYTES elements are strings,
and since a UTF-8 string cannot hold an image file, an element of a BYTES input
sent in JSON is read as base64 (documented in README "Open Inference Protocol").

Responses mirror it: an output is sent raw when the request asks
(``outputs[i].parameters.binary_data``, else the request's
``parameters.binary_data_output``, else JSON). Every malformed request is a
:class:`service.errors.BadRequest` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
#: protocol datatype -> numpy dtype (little endian); BYTES is a list of bytes, not an array
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's name for a numpy dtype (uint8 -> UINT8)."""
    for name, candidate in DTYPES.items():
        if candidate == dtype.newbyteorder("<"):
            return name
    raise ValueError(f"no protocol datatype for {dtype}")


@dataclass(frozen=True)
class Tensor:
    """An input: ``data`` is an array of ``shape`` for numeric types, a list of bytes for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's default


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output
    parameters: dict[str, Any]

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` goes back raw: its own flag, else ``binary_data_output``."""
        asked = next((o.binary for o in self.outputs or () if o.name == name), None)
        return bool(self.parameters.get("binary_data_output", False)) if asked is None else asked


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _flatten(data: Any, name: str) -> list[Any]:
    """Row-major elements of a flat or nested JSON list."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    out: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:  # iterative: a deeply nested list cannot exhaust the Python stack
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _bytes_elements(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """``count`` length-prefixed elements that fill ``raw`` exactly."""
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise BadRequest(f"input {name!r}: binary BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise BadRequest(f"input {name!r}: a BYTES element of {length} bytes runs past binary_data_size")
        out.append(bytes(raw[pos:pos + length]))
        pos += length
    if pos != len(raw):
        raise BadRequest(f"input {name!r}: binary_data_size holds more than the {count} elements "
                         "of its shape")
    return out


def _json_bytes(elements: list[Any], name: str) -> list[bytes]:
    out = []
    for e in elements:
        if not isinstance(e, str):
            raise BadRequest(f"input {name!r}: BYTES elements in JSON must be strings (base64)")
        try:
            out.append(base64.b64decode(e, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: a BYTES element in JSON is not base64 (send files as "
                             "binary data, or base64 in JSON)") from None
    return out


def _json_numbers(elements: list[Any], datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    if datatype == "BOOL":
        if not all(isinstance(e, bool) for e in elements):
            raise BadRequest(f"input {name!r}: BOOL data must be true/false")
    elif not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in elements):
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not all(isinstance(e, int) and info.min <= e <= info.max for e in elements):
            raise BadRequest(f"input {name!r}: {datatype} data must be integers in [{info.min}, {info.max}]")
    return np.asarray(elements, dtype=dtype).reshape(shape)


def _tensor(spec: dict[str, Any], binary: bytes | memoryview | None, max_elements: int) -> Tensor:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("every input needs a non-empty string 'name'")
    datatype = spec.get("datatype")
    if datatype != BYTES and datatype not in DTYPES:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    shape = _shape(spec.get("shape"), name)
    count = math.prod(shape)
    if count > max_elements:
        raise BadRequest(f"input {name!r}: {count} elements is more than this server takes ({max_elements})")
    params = _object(spec.get("parameters", {}), f"input {name!r} parameters")
    if binary is not None:
        if "data" in spec:
            raise BadRequest(f"input {name!r}: both 'data' and binary_data_size given")
        if datatype == BYTES:
            return Tensor(name, datatype, shape, _bytes_elements(binary, count, name), params)
        dtype = DTYPES[datatype]
        if len(binary) != count * dtype.itemsize:
            raise BadRequest(f"input {name!r}: binary_data_size {len(binary)} is not {count} x "
                             f"{dtype.itemsize} bytes of {datatype} {list(shape)}")
        return Tensor(name, datatype, shape, np.frombuffer(binary, dtype=dtype).reshape(shape), params)
    if "data" not in spec:
        raise BadRequest(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    elements = _flatten(spec["data"], name)
    if len(elements) != count:
        raise BadRequest(f"input {name!r}: {len(elements)} data elements for shape {list(shape)} ({count})")
    if datatype == BYTES:
        return Tensor(name, datatype, shape, _json_bytes(elements, name), params)
    return Tensor(name, datatype, shape, _json_numbers(elements, datatype, shape, name), params)


def _outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("'outputs' must be a list")
    out = []
    for spec in value:
        spec = _object(spec, "each of 'outputs'")
        name = spec.get("name")
        if not isinstance(name, str):
            raise BadRequest("every requested output needs a string 'name'")
        binary = _object(spec.get("parameters", {}), f"output {name!r} parameters").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadRequest(f"output {name!r}: binary_data must be true or false")
        out.append(RequestedOutput(name, binary))
    return tuple(out)


def parse_request(body: bytes, header_length: str | None, *, max_elements: int) -> InferRequest:
    """An inference request from its body and ``Inference-Header-Content-Length`` (None if absent)."""
    if header_length is None:
        json_part, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        json_part, rest = body[:n], body[n:]
    try:
        doc = json.loads(json_part)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the inference header is not JSON: {e}") from None
    doc = _object(doc, "the inference request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _object(doc.get("parameters", {}), "'parameters'")
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise BadRequest("'inputs' must be a non-empty list")
    view = memoryview(rest)
    pos = 0
    inputs = []
    for spec in specs:
        spec = _object(spec, "each of 'inputs'")
        size = _object(spec.get("parameters", {}), "input parameters").get("binary_data_size")
        binary = None
        if size is not None:
            if header_length is None:
                raise BadRequest(f"binary_data_size needs the {HEADER_LENGTH} header")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(view):
                raise BadRequest(f"binary_data_size {size!r} does not fit the {len(view) - pos} bytes left")
            binary = view[pos:pos + size]
            pos += size
        inputs.append(_tensor(spec, binary, max_elements))
    if pos != len(view):
        raise BadRequest(f"{len(view) - pos} bytes after the inputs' binary data belong to no input")
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"an input name appears twice: {names}")
    return InferRequest(request_id, tuple(inputs), _outputs(doc.get("outputs")), parameters)


@dataclass(frozen=True)
class Output:
    name: str
    data: np.ndarray


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: Sequence[Output], binary: Sequence[bool]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs flagged binary go raw after the JSON header."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out, raw in zip(outputs, binary, strict=True):
        arr = np.ascontiguousarray(out.data)
        spec: dict[str, Any] = {"name": out.name, "datatype": datatype_of(arr.dtype),
                                "shape": list(arr.shape)}
        if raw:
            blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = arr.ravel().tolist()
        tensors.append(spec)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH: str(len(header))}
