"""Soft outputs over HTTP: /v1 ``output=confidence`` and ``output=probability&class=NAME`` (8-bit
PNGs of the probability x 255), /v2 ``probabilities`` (FP16 [N, C, H, W], binary data only), the
output-size limit (413 before decoding, naming what fits) and the memory they are admitted with.

The expected values are the official float64 probabilities computed here from the engine's logits
(tests/service/stitch_oracle.py), rounded as each output rounds them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.api.v2.codec import HEADER_LENGTH
from service.codec.decode import NO_LIMITS, decode
from service.contract.soft import Soft
from service.engine.sessions import Engine
from service.pipeline.cost import pixels_cost
from service.pipeline.params import InferenceParams, resolve
from service.pipeline.runner import EngineRunner
from service.protocol.plan import plan_tiles
from tests.service.api_client import png_bytes, serving
from tests.service.stitch_oracle import stitch_float64

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


def _oracle(model: Path, data: bytes, query: dict[str, Any]) -> np.ndarray:
    """The official (H, W, C) float64 probabilities of ``data`` for these parameters."""
    engine = Engine(model, provider="cpu", max_batch=4)
    meta, p = engine.meta, engine.meta.protocol
    params = resolve(p, mode=query.get("mode"), flip=query.get("flip") == "true", scales=None, max_scales=8)
    plan = plan_tiles(decode(data, None, NO_LIMITS).rgb, tile=meta.tile, mode=params.mode,
                      scales=params.scales, flip=params.flip, base_size=p.base_size,
                      stride_rate=p.stride_rate, mean=meta.mean)
    return stitch_float64(plan, EngineRunner(engine, 4).run(plan.tiles))


def _png(resp: Any) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


@pytest.mark.parametrize("query", [{"mode": "slide"}, {"mode": "multiscale", "flip": "true"},
                                   {"mode": "whole"}], ids=["slide", "multiscale-flip", "whole"])
async def test_confidence_and_one_class_are_the_official_probabilities(model: Path,
                                                                       query: dict[str, str]) -> None:
    data = png_bytes(70, 90, seed=3)
    async with serving(model) as c:
        top = await c.post("/v1/segment", params={**query, "output": "confidence"}, content=data, headers=PNG)
        one = await c.post("/v1/segment", params={**query, "output": "probability", "class": "class2"},
                           content=data, headers=PNG)
    oracle = _oracle(model, data, query)
    levels = lambda p: np.rint(p.astype(np.float32) * np.float32(255)).astype(np.uint8)  # noqa: E731
    np.testing.assert_array_equal(_png(top), levels(oracle.max(axis=2)))
    np.testing.assert_array_equal(_png(one), levels(oracle[:, :, 2]))


async def test_probability_needs_a_class_of_the_model(model: Path) -> None:
    async with serving(model) as c:
        none = await c.post("/v1/segment?output=probability", content=png_bytes(), headers=PNG)
        wrong = await c.post("/v1/segment?output=probability&class=car", content=png_bytes(), headers=PNG)
        elsewhere = await c.post("/v1/segment?output=color&class=class1", content=png_bytes(), headers=PNG)
    assert none.status_code == 400 and "class=NAME" in none.json()["detail"]
    assert wrong.status_code == 400 and "'car' is not one of the model's 5" in wrong.json()["detail"]
    assert elsewhere.status_code == 400 and "output=probability" in elsewhere.json()["detail"]


def _v2_request(data: bytes, outputs: list[dict[str, Any]], **params: Any) -> tuple[bytes, dict[str, str]]:
    raw = len(data).to_bytes(4, "little") + data
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "parameters": {"binary_data_size": len(raw)}}],
           "outputs": outputs, "parameters": params}
    head = json.dumps(doc).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}


async def test_v2_probabilities_are_fp16_official_values_beside_the_labels(model: Path) -> None:
    data = png_bytes(50, 70, seed=4)
    binary = {"binary_data": True}
    async with serving(model) as c:
        body, headers = _v2_request(data, [{"name": "labels", "parameters": binary},
                                           {"name": "probabilities", "parameters": binary}],
                                    mode="multiscale", flip=True)
        r = await c.post("/v2/models/tiny/infer", content=body, headers=headers)
        as_json, json_headers = _v2_request(data, [{"name": "probabilities"}])
        refused = await c.post("/v2/models/tiny/infer", content=as_json, headers=json_headers)
        plain, plain_headers = _v2_request(data, [])
        default = await c.post("/v2/models/tiny/infer", content=plain, headers=plain_headers)
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER_LENGTH])
    doc = json.loads(r.content[:n])
    labels_spec, probs_spec = doc["outputs"]
    assert probs_spec["name"] == "probabilities" and probs_spec["datatype"] == "FP16"
    assert probs_spec["shape"] == [1, 5, 50, 70]
    start = n + labels_spec["parameters"]["binary_data_size"]
    probs = np.frombuffer(r.content[start:], dtype="<f2").reshape(probs_spec["shape"])
    oracle = _oracle(model, data, {"mode": "multiscale", "flip": "true"})
    np.testing.assert_array_equal(probs[0], oracle.transpose(2, 0, 1).astype(np.float16))
    labels = np.frombuffer(r.content[n:start], dtype=np.uint8).reshape(labels_spec["shape"])
    np.testing.assert_array_equal(labels[0], oracle.argmax(axis=2))
    assert refused.status_code == 400 and "binary" in refused.json()["error"]
    assert default.status_code == 200
    assert [o["name"] for o in json.loads(default.content)["outputs"]] == ["labels"]  # not asked: not sent


async def test_a_soft_output_over_the_limit_is_a_413_saying_what_fits(model: Path) -> None:
    big = png_bytes(600, 800, seed=1)  # 5 classes x 480,000 pixels x 2 bytes: 4.6 MB of FP16
    async with serving(model, max_output_mb=2) as c:
        body, headers = _v2_request(big, [{"name": "probabilities", "parameters": {"binary_data": True}}])
        over = await c.post("/v2/models/tiny/infer", content=body, headers=headers)
        fits = await c.post("/v1/segment?output=confidence", content=big, headers=PNG)  # 1.8 MB
        too_wide = await c.post("/v1/segment?output=confidence", content=png_bytes(800, 1000), headers=PNG)
    assert over.status_code == 413
    assert "PSPNET_MAX_OUTPUT_MB" in over.json()["error"] and "output=confidence" in over.json()["error"]
    assert "209,715 pixels fit" in over.json()["error"]  # 2 MiB / 10 bytes a pixel
    assert fits.status_code == 200
    assert too_wide.status_code == 413 and "524,288 pixels fit" in too_wide.json()["detail"]


def test_memory_admission_counts_the_soft_output(model: Path) -> None:
    meta = Engine(model, provider="cpu").meta
    params = InferenceParams("slide", (1.0,), False)
    plain = pixels_cost(meta, 1000, 1500, params, "color")
    assert plain is not None
    for soft, at_least in ((Soft("confidence"), 3 * 4), (Soft("probabilities"), 2 * 2 * 5)):
        cost = pixels_cost(meta, 1000, 1500, params, "color", soft=soft)
        assert cost is not None and cost >= 1.25 * at_least * 1000 * 1500 > 0 and cost > plain
