"""service.api.v2.codec against Triton's own HTTP client: the bodies it builds parse, and the
responses we build are what it reads back. No server: tritonclient's request builder
and InferResult parser are used directly."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from service.api.v2.codec import HEADER_LENGTH, Output, encode_response, parse_request
from service.errors import BadRequest

LIMIT = 10_000_000


def _body(inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None,
          **params: object) -> tuple[bytes, str | None]:
    body, json_size = _get_inference_request(inputs=inputs, request_id="r1", outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0,
                                             timeout=None, custom_parameters=params or None)
    return body, None if json_size is None else str(json_size)


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_pixels_from_triton(binary: bool) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    body, header = _body([tensor], mode="slide", flip=True)
    assert (header is not None) == binary
    req = parse_request(body, header, max_elements=LIMIT)
    # no outputs named: tritonclient asks for all of them in binary
    assert req.id == "r1" and req.parameters == {"mode": "slide", "flip": True, "binary_data_output": True}
    (t,) = req.inputs
    assert (t.name, t.datatype, t.shape) == ("pixels", "UINT8", (2, 5, 7, 3))
    np.testing.assert_array_equal(t.data, pixels)


def test_bytes_images_from_triton_binary() -> None:
    files = np.array([b"\x89PNG\r\n\x1a\nfirst", b"\xff\xd8\xff second \x00 with nul"], dtype=np.object_)
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(files, binary_data=True)
    body, header = _body([tensor], [triton.InferRequestedOutput("labels", binary_data=True)])
    req = parse_request(body, header, max_elements=LIMIT)
    assert req.inputs[0].data == list(files)
    assert req.binary_output("labels") is True


def test_bytes_in_json_are_base64() -> None:
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(b"\x89PNG...").decode()]}]}
    req = parse_request(json.dumps(doc).encode(), None, max_elements=LIMIT)
    assert req.inputs[0].data == [b"\x89PNG..."]
    doc["inputs"][0]["data"] = ["not base64!"]
    with pytest.raises(BadRequest, match="base64"):
        parse_request(json.dumps(doc).encode(), None, max_elements=LIMIT)


def test_nested_json_data_is_row_major() -> None:
    doc = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    req = parse_request(json.dumps(doc).encode(), None, max_elements=LIMIT)
    np.testing.assert_array_equal(req.inputs[0].data, [[1, 2], [3, 4]])


@pytest.mark.parametrize("binary", [True, False])
def test_response_reads_back_in_triton(binary: bool) -> None:
    labels = np.random.default_rng(1).integers(0, 11, (1, 4, 6), dtype=np.uint8)
    body, headers = encode_response("camvid", "1", "r1", [Output("labels", labels)], [binary])
    assert (HEADER_LENGTH in headers) == binary
    length = int(headers[HEADER_LENGTH]) if binary else None
    result = triton.InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    assert result.get_response()["model_name"] == "camvid" and result.get_response()["id"] == "r1"


def test_uint16_response_is_little_endian() -> None:
    labels = np.array([[[0, 300], [65535, 1]]], dtype=np.uint16)
    body, headers = encode_response("ade", "1", None, [Output("labels", labels)], [True])
    result = triton.InferResult.from_response_body(body, header_length=int(headers[HEADER_LENGTH]))
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    assert result.get_output("labels")["datatype"] == "UINT16"


def test_binary_output_default_comes_from_request_parameters() -> None:
    doc = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}],
           "parameters": {"binary_data_output": True}}
    req = parse_request(json.dumps(doc).encode(), None, max_elements=LIMIT)
    assert req.binary_output("labels") is True
    doc["outputs"] = [{"name": "labels", "parameters": {"binary_data": False}}]
    assert parse_request(json.dumps(doc).encode(), None, max_elements=LIMIT).binary_output("labels") is False


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


GOOD = {"name": "pixels", "datatype": "UINT8", "shape": [1, 2], "data": [1, 2]}
SHORT = {"name": "p", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 2}}


@pytest.mark.parametrize(("body", "header", "match"), [
    (b"{", None, "not JSON"),
    (_json([]), None, "JSON object"),
    (_json({"inputs": []}), None, "non-empty list"),
    (_json({"inputs": [{**GOOD, "datatype": "FP8"}]}), None, "unknown datatype"),
    (_json({"inputs": [{**GOOD, "shape": [1, -2]}]}), None, "non-negative"),
    (_json({"inputs": [{**GOOD, "shape": [3]}]}), None, "2 data elements for shape"),
    (_json({"inputs": [{**GOOD, "data": [1, 256]}]}), None, r"integers in \[0, 255\]"),
    (_json({"inputs": [{**GOOD, "data": [1, 2.5]}]}), None, "integers"),
    (_json({"inputs": [{**GOOD, "data": [True, 1]}]}), None, "numbers"),
    (_json({"inputs": [GOOD, GOOD]}), None, "appears twice"),
    (_json({"inputs": [{**GOOD, "shape": [100_000, 1000]}]}), None, "more than this server takes"),
    (_json({"inputs": [{k: v for k, v in GOOD.items() if k != "data"}]}), None, "neither"),
    (_json({"inputs": [GOOD], "outputs": [{"name": "labels", "parameters": {"binary_data": 1}}]}), None,
     "true or false"),
    (_json({"inputs": [GOOD]}), "x", "must be an integer"),
    (_json({"inputs": [GOOD]}), "100000", "outside the body"),
    (_json({"inputs": [GOOD]}) + b"tail", str(len(_json({"inputs": [GOOD]}))), "belong to no input"),
    (_json({"inputs": [{**GOOD, "parameters": {"binary_data_size": 2}}]}), None, "needs the"),
    (_json({"inputs": [SHORT]}) + b"\x01\x02", str(len(_json({"inputs": [SHORT]}))),
     "is not 3 x 1 bytes"),
    (b"[" * 100_000 + b"]" * 100_000, None, "JSON"),
])
def test_malformed_requests_are_400_naming_the_problem(body: bytes, header: str | None, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        parse_request(body, header, max_elements=LIMIT)


def test_bytes_elements_must_fill_binary_data_exactly() -> None:
    # one element of 5 bytes, then a stray byte inside binary_data_size; a length beyond the data
    for raw, match in [(b"\x05\x00\x00\x00abcdex", "more than"), (b"\x09\x00\x00\x00abcde", "runs past"),
                       (b"\x05\x00", "ends inside")]:
        spec = {"name": "image", "datatype": "BYTES", "shape": [1],
                "parameters": {"binary_data_size": len(raw)}}
        head = _json({"inputs": [spec]})
        with pytest.raises(BadRequest, match=match):
            parse_request(head + raw, str(len(head)), max_elements=LIMIT)
