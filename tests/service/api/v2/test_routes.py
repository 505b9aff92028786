"""The Open Inference Protocol routes (/v2) in-process: metadata, health, config, stats, infer with
encoded images and with pixels, JSON and binary, errors in the protocol's shape, /v1's limits."""

from __future__ import annotations

import base64
import io
import json
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api.v2.codec import HEADER_LENGTH
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

pytestmark = pytest.mark.anyio


def _labels_v1(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def _binary_bytes_request(files: list[bytes], **params: Any) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    doc: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}
    if params:
        doc["parameters"] = params
    head = json.dumps(doc).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}


def _binary_labels(resp: httpx.Response) -> tuple[dict[str, Any], np.ndarray]:
    assert resp.status_code == 200, resp.text
    n = int(resp.headers[HEADER_LENGTH])
    doc = json.loads(resp.content[:n])
    (out,) = doc["outputs"]
    assert out["datatype"] == "UINT8" and out["parameters"]["binary_data_size"] == len(resp.content) - n
    return doc, np.frombuffer(resp.content[n:], dtype=np.uint8).reshape(out["shape"])


async def test_server_and_model_metadata(model: Path) -> None:
    async with serving(model) as c:
        server = (await c.get("/v2")).json()
        live, ready = await c.get("/v2/health/live"), await c.get("/v2/health/ready")
        meta = (await c.get("/v2/models/tiny")).json()
        versioned = (await c.get("/v2/models/tiny/versions/1")).json()
        other = await c.get("/v2/models/tiny/versions/2")
        unknown = await c.get("/v2/models/nope")
        ready_model = await c.get("/v2/models/tiny/ready")
        config = (await c.get("/v2/models/tiny/config")).json()
    assert server["name"] == "pspnet-serving" and "binary_tensor_data" in server["extensions"]
    assert server["version"] == distribution_version("pspnet-serving")  # the package's, no "(not installed)"
    assert live.status_code == 200 and ready.status_code == 200 and ready_model.status_code == 200
    assert meta == versioned and meta["versions"] == ["1"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "image": ("BYTES", [-1]), "pixels": ("UINT8", [-1, -1, -1, 3])}
    assert meta["outputs"] == [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]},
                               {"name": "probabilities", "datatype": "FP16", "shape": [-1, 5, -1, -1]}]
    for missing in (other, unknown):
        assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert config["max_batch_size"] == 0 and config["output"][0]["data_type"] == "TYPE_UINT8"
    assert config["parameters"]["classes"]["string_value"] == "class0,class1,class2,class3,class4"


async def test_infer_bytes_binary_equals_v1(model: Path) -> None:
    images = [png_bytes(40, 60, seed=s) for s in (1, 2)]
    async with serving(model) as c:
        body, headers = _binary_bytes_request(images, mode="slide")
        resp = await c.post("/v2/models/tiny/infer", content=body, headers=headers)
        v1 = [_labels_v1(await c.post("/v1/segment?output=label&mode=slide", content=img,
                                      headers={"content-type": "image/png"})) for img in images]
    doc, labels = _binary_labels(resp)
    assert doc["model_name"] == "tiny" and doc["model_version"] == "1"
    assert labels.shape == (2, 40, 60)
    np.testing.assert_array_equal(labels, np.stack(v1))


async def test_infer_pixels_json_equals_v1_and_keeps_the_unbatched_shape(model: Path) -> None:
    img = png_bytes(30, 50, seed=3)
    rgb = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))
    doc = {"id": "req-7", "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(rgb.shape),
                                      "data": rgb.ravel().tolist()}],
           "parameters": {"mode": "slide", "flip": True, "scales": [0.75, 1.0]}}
    async with serving(model) as c:
        resp = await c.post("/v2/models/tiny/infer", json=doc)
        v1 = _labels_v1(await c.post("/v1/segment?output=label&mode=slide&flip=true&scales=0.75,1.0",
                                     content=img, headers={"content-type": "image/png"}))
        stats = (await c.get("/v2/models/tiny/stats")).json()
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["id"] == "req-7" and out["outputs"][0]["shape"] == [30, 50]
    np.testing.assert_array_equal(np.array(out["outputs"][0]["data"], dtype=np.uint8).reshape(30, 50), v1)
    (s,) = stats["model_stats"]
    # the v2 request and the v1 one: two images, two successes, at least one batch
    assert s["inference_count"] == 2 and s["inference_stats"]["success"]["count"] == 2
    assert s["execution_count"] >= 1 and s["inference_stats"]["compute_infer"]["ns"] > 0


async def test_bytes_in_json_are_base64(model: Path) -> None:
    img = png_bytes(20, 30, seed=4)
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(img).decode()]}]}
    async with serving(model) as c:
        resp = await c.post("/v2/models/tiny/infer", json=doc)
        v1 = _labels_v1(await c.post("/v1/segment?output=label", content=img,
                                     headers={"content-type": "image/png"}))
    assert resp.status_code == 200, resp.text
    data = np.array(resp.json()["outputs"][0]["data"], dtype=np.uint8).reshape(1, 20, 30)
    np.testing.assert_array_equal(data[0], v1)


async def test_errors_have_the_protocol_shape_and_v1_statuses(model: Path) -> None:
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [2, 2, 3], "data": [0] * 12}
    async with serving(model, max_pixels=10_000, max_body_bytes=64 * 1024) as c:
        sizes, sizes_h = _binary_bytes_request([png_bytes(20, 30), png_bytes(30, 20)])
        infer = "/v2/models/tiny/infer"
        cases = {
            "sizes": await c.post(infer, content=sizes, headers=sizes_h),
            "param": await c.post(infer, json={"inputs": [pixels], "parameters": {"modee": 1}}),
            "two": await c.post(infer, json={"inputs": [pixels, {**pixels, "name": "image"}]}),
            "output": await c.post(infer, json={"inputs": [pixels], "outputs": [{"name": "x"}]}),
            "mode": await c.post(infer, json={"inputs": [pixels], "parameters": {"mode": "z"}}),
            "big": await c.post(infer, json={"inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": [200, 200, 3],
                 "parameters": {}, "data": [0] * 120_000}]}),
            "body": await c.post(infer, content=b"x" * 70_000),
            "garbage": await c.post(infer, json={"inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [1],
                "data": [base64.b64encode(b"not an image at all").decode()]}]}),
        }
    expected = {"sizes": 400, "param": 400, "two": 400, "output": 400, "mode": 400, "big": 413, "body": 413,
                "garbage": 415}
    assert {k: r.status_code for k, r in cases.items()} == expected
    for r in cases.values():
        assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}
    assert "30x20" in cases["sizes"].json()["error"] and "20x30" in cases["sizes"].json()["error"]
    assert "modee" in cases["param"].json()["error"]


async def test_auth_guards_the_model_routes_not_the_probes(model: Path) -> None:
    async with serving(model, auth_token="s3cret") as c:
        live = await c.get("/v2/health/live")
        meta = await c.get("/v2/models/tiny")
        ok = await c.get("/v2/models/tiny", headers={"authorization": "Bearer s3cret"})
        index = await c.post("/v2/repository/index")
        wrong = await c.post("/v2/repository/index", headers={"authorization": "Bearer s3cre"},
                             content=b"not even JSON")  # the token first: no 400 for the body
        index_ok = await c.post("/v2/repository/index", headers={"authorization": "Bearer s3cret"})
    assert live.status_code == 200 and ok.status_code == 200
    assert meta.status_code == 401 and meta.headers["www-authenticate"] == "Bearer"
    assert set(meta.json()) == {"error"}
    for refused in (index, wrong):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert set(refused.json()) == {"error"}
    assert index_ok.status_code == 200
    assert index_ok.json() == [{"name": "tiny", "version": "1", "state": "READY"}]


async def test_repository_index_lists_every_model_with_its_state(tmp_path: Path) -> None:
    """Triton's shape: a list of name, version, state (and the reason when not READY), by name;
    a file that is not served is UNAVAILABLE under its stem; {"ready": true} keeps the READY ones."""
    build_tiny_artifact(tmp_path / "b.onnx", name="beta", num_classes=3)
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=5)
    build_tiny_artifact(tmp_path / "g.onnx", name="gamma", num_classes=4)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    async with serving(tmp_path, max_consecutive_failures=1, probe_interval_s=600) as c:
        everything = await c.post("/v2/repository/index")  # tritonclient sends no body
        same = await c.post("/v2/repository/index", json={"ready": False})
        empty_object = await c.post("/v2/repository/index", json={})
        models = c._transport.app.state.service.models  # type: ignore[attr-defined]
        models["beta"].health.failed(RuntimeError("CUDA error: an illegal memory access"))
        models["gamma"].warmed = False  # as while it warms up
        states = await c.post("/v2/repository/index")
        ready = await c.post("/v2/repository/index", json={"ready": True})
        models["gamma"].warmed = True
    assert everything.status_code == 200 and everything.headers["content-type"] == "application/json"
    listed = everything.json()
    assert [e["name"] for e in listed] == ["alpha", "beta", "broken", "gamma"]
    broken = listed.pop(2)
    assert listed == [{"name": n, "version": "1", "state": "READY"} for n in ("alpha", "beta", "gamma")]
    assert broken["state"] == "UNAVAILABLE" and "version" not in broken
    assert "not a readable ONNX" in broken["reason"]
    listed.insert(2, broken)
    assert same.json() == listed and empty_object.json() == listed
    by_name = {e["name"]: e for e in states.json()}
    assert by_name["alpha"] == {"name": "alpha", "version": "1", "state": "READY"}
    assert by_name["beta"]["state"] == "UNAVAILABLE" and "CUDA error" in by_name["beta"]["reason"]
    assert by_name["gamma"]["state"] == "LOADING" and "warming up" in by_name["gamma"]["reason"]
    assert ready.json() == [{"name": "alpha", "version": "1", "state": "READY"}]


async def test_repository_index_refuses_what_is_not_an_index_request(model: Path) -> None:
    index = "/v2/repository/index"
    async with serving(model) as c:
        cases = {
            "not json": await c.post(index, content=b"{ready: true}"),
            "not an object": await c.post(index, json=[{"ready": True}]),
            "ready not a boolean": await c.post(index, json={"ready": "true"}),
            "unknown member": await c.post(index, json={"ready": True, "repository_name": "x"}),
            "too big": await c.post(index, content=b" " * 5000),
            "GET": await c.get(index),
        }
    assert {k: r.status_code for k, r in cases.items()} == {
        "not json": 400, "not an object": 400, "ready not a boolean": 400, "unknown member": 400,
        "too big": 413, "GET": 405}
    for r in cases.values():
        assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}
    assert "repository_name" in cases["unknown member"].json()["error"]


async def test_metrics_carry_the_model_label_for_v2(model: Path) -> None:
    async with serving(model) as c:
        body, headers = _binary_bytes_request([png_bytes(seed=5)])
        assert (await c.post("/v2/models/tiny/infer", content=body, headers=headers)).status_code == 200
        text = (await c.get("/metrics")).text
    assert ('pspnet_requests_total{method="POST",model="tiny",route="/v2/models/{name}/infer",status="200"}'
            in text)


async def test_labels_are_uint16_beyond_256_classes(tmp_path: Path) -> None:
    big = build_tiny_artifact(tmp_path / "big.onnx", tile=(16, 16), num_classes=300, name="big")
    rgb = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    doc = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 16, 16, 3],
                       "data": rgb.ravel().tolist()}],
           "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}
    async with serving(big) as c:
        meta = (await c.get("/v2/models/big")).json()
        resp = await c.post("/v2/models/big/infer", json=doc)
    assert meta["outputs"][0]["datatype"] == "UINT16"
    n = int(resp.headers[HEADER_LENGTH])
    (out,) = json.loads(resp.content[:n])["outputs"]
    labels = np.frombuffer(resp.content[n:], dtype="<u2").reshape(out["shape"])
    assert out["datatype"] == "UINT16" and out["shape"] == [1, 16, 16]
    assert labels.max() < 300 and labels.max() > 255  # ids past uint8 survive the trip


async def test_hostile_files_get_v1s_statuses_through_v2(model: Path) -> None:
    """Every upload of test_hostile_http.py as a BYTES input: the same status as on /v1 (the same
    decoder and limits), the protocol's error shape, and labels of the oriented image's size."""
    from tests.service.api.test_hostile_http import bomb_uploads, broken_uploads, odd_but_valid_uploads

    uploads = {k: u for k, u in (bomb_uploads() | broken_uploads() | odd_but_valid_uploads()).items()
               if not u.multipart}
    wrong = []
    async with serving(model) as c:
        for name, up in uploads.items():
            body, headers = _binary_bytes_request([up.body], mode="whole")
            r = await c.post("/v2/models/tiny/infer", content=body, headers=headers)
            if r.status_code != up.status:
                wrong.append(f"{name}: {r.status_code} instead of {up.status}: {r.text[:200]}")
            elif up.status != 200 and set(r.json()) != {"error"}:
                wrong.append(f"{name}: not the protocol's error shape: {r.text[:200]}")
            elif up.status == 200 and up.size is not None:
                _, labels = _binary_labels(r)
                if labels.shape != (1, up.size[1], up.size[0]):
                    wrong.append(f"{name}: labels {labels.shape} for an image of {up.size}")
    assert len(uploads) > 40 and not wrong, "\n".join(wrong)
