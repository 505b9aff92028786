"""The HTTP API with its lifespan running, against a tiny real ONNX model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import service.codec.decode
from service.engine.sessions import Engine
from tests.service.api_client import metric_samples, png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact, tiny_palette

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"


def _raw(body: bytes, ctype: str = "image/png") -> dict[str, object]:
    return {"content": body, "headers": {"content-type": ctype}}


async def test_every_output_has_the_input_size_and_the_model_palette(model: Path) -> None:
    body = png_bytes(40, 60)
    palette = tiny_palette(5)
    async with serving(model) as c:
        color = await c.post("/v1/segment?output=color", **_raw(body))
        label = await c.post("/v1/segment?output=label", **_raw(body))
        overlay = await c.post("/v1/segment?output=overlay", **_raw(body))
        overlay_png = await c.post("/v1/segment?output=overlay&format=png", **_raw(body))
        js = await c.post("/v1/segment?output=json&include_mask=true", **_raw(body))
    assert [r.status_code for r in (color, label, overlay, overlay_png, js)] == [200] * 5
    cimg = Image.open(io.BytesIO(color.content))
    assert color.headers["content-type"] == "image/png" and cimg.mode == "P" and cimg.size == (60, 40)
    labels = np.asarray(Image.open(io.BytesIO(label.content)))
    assert labels.shape == (40, 60) and labels.dtype == np.uint8 and labels.max() < 5
    assert len(np.unique(labels)) > 1, "a random image should not be one class"
    # the colour mask's indices are the labels, its palette the model's
    assert np.array_equal(np.asarray(cimg), labels)
    pal = np.array(cimg.getpalette()[: 3 * 5]).reshape(5, 3)
    assert [tuple(p) for p in pal] == list(palette)
    assert overlay.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(overlay.content)).size == (60, 40)
    assert Image.open(io.BytesIO(overlay_png.content)).format == "PNG"
    doc = js.json()
    assert (doc["model"], doc["width"], doc["height"]) == ("tiny", 60, 40)
    assert sum(c["pixels"] for c in doc["classes"]) == 40 * 60
    assert abs(sum(c["fraction"] for c in doc["classes"]) - 1) < 1e-9
    for entry in doc["classes"]:
        assert entry["pixels"] == int((labels == entry["id"]).sum())
        assert tuple(entry["color"]) == palette[entry["id"]]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["mask"]))))
    assert np.array_equal(mask, labels)


async def test_modes_flip_and_multipart(model: Path) -> None:
    body = png_bytes(40, 60)
    async with serving(model) as c:
        whole = await c.post("/v1/segment?mode=whole&output=label", **_raw(body))
        whole_flip = await c.post("/v1/segment?mode=whole&flip=true&output=label", **_raw(body))
        slide = await c.post("/v1/segment?mode=slide&scales=1.0,1.5", **_raw(body))
        multi = await c.post("/v1/segment?mode=multiscale&flip=true", **_raw(body))
        form = await c.post("/v1/segment?output=label&mode=whole",
                            files={"image": ("x.png", body, "image/png")})
    assert whole.headers["x-pspnet-tiles"] == "1" and whole_flip.headers["x-pspnet-tiles"] == "2"
    assert int(multi.headers["x-pspnet-tiles"]) > int(slide.headers["x-pspnet-tiles"]) > 1
    assert form.status_code == 200 and form.content == whole.content
    for r in (whole, whole_flip, slide, multi):
        assert r.status_code == 200
        assert "stitch;dur=" in r.headers["server-timing"]


@pytest.mark.parametrize(("query", "body", "ctype", "status"), [
    ("?mode=sideways", None, "image/png", 400),
    ("?mode=whole&scales=1.0", None, "image/png", 400),
    ("?scales=0.5,abc", None, "image/png", 400),
    ("?scales=9", None, "image/png", 400),
    ("?scales=" + ",".join(["1"] * 9), None, "image/png", 400),
    ("?output=svg", None, "image/png", 400),
    ("?flip=maybe", None, "image/png", 400),
    ("", b"", "image/png", 400),
    ("", b"plain text, not an image", "image/png", 415),
    ("", None, "text/plain", 415),
    ("", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "image/png", 422),
    ("", png_bytes(200, 200), "image/png", 413),  # 40,000 pixels over max_pixels
])
async def test_errors_are_problem_json(model: Path, query: str, body: bytes | None, ctype: str,
                                       status: int) -> None:
    async with serving(model, max_pixels=30_000) as c:
        r = await c.post("/v1/segment" + query, **_raw(png_bytes() if body is None else body, ctype))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    doc = r.json()
    assert doc["status"] == status and doc["detail"] and doc["request_id"] == r.headers["x-request-id"]


async def test_body_over_the_byte_limit_is_413_before_decoding(model: Path) -> None:
    async with serving(model, max_body_bytes=2048) as c:
        r = await c.post("/v1/segment", **_raw(png_bytes(60, 60)))
        m = await c.post("/v1/segment", files={"image": ("x.png", png_bytes(60, 60), "image/png")})
    assert r.status_code == 413 and m.status_code == 413


async def test_unknown_route_and_method(model: Path) -> None:
    async with serving(model) as c:
        missing = await c.get("/v3/nothing")
        wrong = await c.get("/v1/segment")
        oip_missing = await c.get("/v2/nothing")
        metrics = (await c.get("/metrics")).text
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert wrong.status_code == 405 and wrong.headers["content-type"] == PROBLEM
    # under /v2 errors take the Open Inference Protocol's shape
    assert oip_missing.status_code == 404 and set(oip_missing.json()) == {"error"}
    # raw paths never become label values; a 405 is labelled with the route it reached
    assert "/v3/nothing" not in metrics and "/v2/nothing" not in metrics and 'route="unmatched"' in metrics
    assert 'method="GET",model="",route="/v1/segment",status="405"' in metrics


async def test_request_id_is_echoed_or_made(model: Path) -> None:
    async with serving(model) as c:
        given = await c.get("/healthz", headers={"x-request-id": "abc-123"})
        bogus = await c.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "abc-123"
    assert bogus.headers["x-request-id"] != "bad id\twith spaces" and len(bogus.headers["x-request-id"]) == 32


async def test_models_and_readiness(model: Path) -> None:
    async with serving(model) as c:
        ready = (await c.get("/readyz")).json()
        models = (await c.get("/v1/models")).json()["models"][0]
    assert ready["ready"] is True and ready["provider"] == "CPUExecutionProvider"
    assert [m["stitch"] for m in ready["models"]] == ["host"]  # PSPNET_DEVICE_STITCH=auto: host on the CPU
    assert models["tile"] == [32, 48] and len(models["classes"]) == 5
    assert models["classes"][2]["color"] == list(tiny_palette(5)[2])
    assert models["protocol"]["mode"] == "slide"


async def test_not_ready_until_warm(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = threading.Event()
    original = Engine.warmup

    def slow_warmup(self: Engine, batch_sizes: object = None) -> float:
        warm.wait(10)
        return original(self, batch_sizes)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "warmup", slow_warmup)
    async with serving(model, wait_ready=False) as c:
        r = await c.get("/readyz")
        seg = await c.post("/v1/segment", **_raw(png_bytes()))
        assert (await c.get("/healthz")).status_code == 200
        warm.set()
        for _ in range(200):
            if (await c.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        after = await c.post("/v1/segment", **_raw(png_bytes()))
    assert r.status_code == 503 and r.json()["ready"] is False and r.headers["retry-after"]
    assert r.json()["provider"] == "CPUExecutionProvider"
    assert seg.status_code == 503 and seg.headers["content-type"] == PROBLEM
    assert after.status_code == 200


async def test_auth_guards_inference_only(model: Path) -> None:
    async with serving(model, auth_token="s3cret") as c:
        none = await c.post("/v1/segment", **_raw(png_bytes()))
        wrong = await c.post("/v1/segment", content=png_bytes(),
                             headers={"content-type": "image/png", "authorization": "Bearer nope"})
        good = await c.post("/v1/segment", content=png_bytes(),
                            headers={"content-type": "image/png", "authorization": "Bearer s3cret"})
        models = await c.get("/v1/models")
        open_ = [(await c.get(p)).status_code for p in ("/healthz", "/readyz", "/metrics")]
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and good.status_code == 200 and models.status_code == 401
    assert open_ == [200, 200, 200]


async def test_request_bigger_than_the_queue_is_413(model: Path) -> None:
    async with serving(model, max_queue_tiles=2) as c:
        r = await c.post("/v1/segment?mode=multiscale", **_raw(png_bytes()))
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


async def test_full_queue_sheds_with_503_at_once(model: Path, slow_engine: threading.Event,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[int] = []
    real_decode = service.codec.decode.decode_image

    def counting_decode(*args: object, **kwargs: object) -> object:
        decodes.append(1)
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.codec.decode, "decode_image", counting_decode)
    running = threading.Event()
    blocked = Engine.run_outputs  # slow_engine's: waits for the gate

    def run(self: Engine, *args: Any, **kwargs: Any) -> Any:
        running.set()
        return blocked(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "run_outputs", run)

    async def until(done: Callable[[], bool]) -> None:  # polled, not slept: CI's cores may be busy
        for _ in range(150):
            if done():
                return
            await asyncio.sleep(0.02)

    async with serving(model, max_queue_tiles=4, max_batch=1, warmup=False) as c:
        # the first request's tile is taken by the blocked runner, then four more fill the queue
        first = [asyncio.create_task(c.post("/v1/segment?mode=whole", **_raw(png_bytes())))]
        await until(running.is_set)
        first += [asyncio.create_task(c.post("/v1/segment?mode=whole", **_raw(png_bytes())))
                  for _ in range(4)]
        batcher = c._transport.app.state.service.models["tiny"].batcher  # type: ignore[attr-defined]
        await until(lambda: batcher.queue_depth == 4)
        decoded_before = len(decodes)
        t0 = time.perf_counter()
        shed = await c.post("/v1/segment?mode=whole", **_raw(png_bytes()))
        elapsed = time.perf_counter() - t0
        assert len(decodes) == decoded_before == 5, "a request refused for a full queue is not decoded"
        slow_engine.set()
        done = await asyncio.gather(*first)
        text = (await c.get("/metrics")).text
    assert shed.status_code == 503 and int(shed.headers["retry-after"]) >= 1
    assert elapsed < 2.0, "shedding must not wait for the queue"
    assert [r.status_code for r in done] == [200] * 5
    assert metric_samples(text, "pspnet_rejections_total")


async def test_deadline_gives_504_and_drops_queued_tiles(model: Path, slow_engine: threading.Event) -> None:
    async with serving(model, request_timeout_s=0.3, max_batch=1, warmup=False) as c:
        blocked = asyncio.create_task(c.post("/v1/segment?mode=whole", **_raw(png_bytes())))
        await asyncio.sleep(0.05)
        late = await c.post("/v1/segment?mode=multiscale", **_raw(png_bytes()))
        slow_engine.set()
        await blocked
        text = (await c.get("/metrics")).text
    assert late.status_code == 504 and late.headers["content-type"] == PROBLEM
    dropped = metric_samples(text, "pspnet_dropped_tiles_total")
    assert sum(dropped.values()) > 0, "the late request's queued tiles must be dropped"


async def test_concurrent_requests_share_batches(model: Path) -> None:
    async with serving(model, max_batch=8, max_wait_ms=50) as c:
        results = await asyncio.gather(*[
            c.post("/v1/segment?mode=whole&output=json", **_raw(png_bytes(seed=i))) for i in range(20)])
        text = (await c.get("/metrics")).text
    assert [r.status_code for r in results] == [200] * 20
    count = metric_samples(text, "pspnet_batch_size_tiles_count")['{model="tiny"}']
    total = metric_samples(text, "pspnet_batch_size_tiles_sum")['{model="tiny"}']
    assert total == 20 and count < 20, f"{count} batches for 20 tiles: nothing was batched"
    requests = metric_samples(text, "pspnet_requests_total")
    assert requests['{method="POST",model="tiny",route="/v1/segment",status="200"}'] == 20


async def test_sixteen_bit_labels_beyond_256_classes(tmp_path: Path) -> None:
    big = build_tiny_artifact(tmp_path / "big.onnx", tile=(16, 16), num_classes=300)
    async with serving(big) as c:
        r = await c.post("/v1/segment?output=label&mode=whole", **_raw(png_bytes(20, 20)))
        js = await c.post("/v1/segment?output=json&mode=whole", **_raw(png_bytes(20, 20)))
    img = Image.open(io.BytesIO(r.content))
    assert r.status_code == 200 and img.mode.startswith("I")
    labels = np.asarray(img)
    assert labels.max() < 300
    assert {c["id"] for c in json.loads(js.content)["classes"]} == set(np.unique(labels).tolist())


async def test_image_too_thin_for_its_scale_is_400(model: Path) -> None:
    async with serving(model) as c:
        r = await c.post("/v1/segment?mode=slide&scales=0.5", **_raw(png_bytes(1, 400)))
    assert r.status_code == 400 and "1" in r.json()["detail"]
