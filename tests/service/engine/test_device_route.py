"""Logits left on the device, end to end: the engine's device output, the batcher's rows of it, the
chain's choice of stitcher, and the server with ``device_stitch`` on (PSPNET_DEVICE_STITCH).

ONNX Runtime's CPU provider stands in for CUDA (``device_stitch="on"``): the values stay in ORT's own
memory, the same code and graphs run. Labels keep to the rule measured in test_device_stitch.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from service.api.v2.codec import HEADER_LENGTH
from service.codec.decode import NO_LIMITS, decode
from service.contract.artifact import LABELS_NAME, OUTPUT_NAME
from service.contract.soft import Soft
from service.engine import device_kit
from service.engine.adapt import resize_bilinear
from service.engine.batcher import TileBatcher
from service.engine.device_kit import DEVICE_LOGITS, DeviceBatch, DeviceBudget, DeviceKit
from service.engine.device_stitch import DeviceStitching
from service.engine.sessions import Engine
from service.pipeline.chain import Chain, prepare
from service.pipeline.params import InferenceParams, resolve
from service.pipeline.runner import EngineRunner
from service.protocol.plan import plan_tiles
from tests.service.api_client import metric_samples, png_bytes, serving
from tests.service.described_graphs import build_graph, description, write
from tests.service.engine.test_device_stitch import MARGIN, top_two_margin
from tests.service.stitch_oracle import stitch_float64
from tests.service.tiny_model import build_tiny_artifact

CPU = "CPUExecutionProvider"
MULTISCALE_FLIP = InferenceParams(mode="multiscale", scales=(0.5, 1.0, 1.5), flip=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("d") / "tiny.onnx", num_classes=5, with_labels=True)


def test_the_kit_is_made_on_cuda_by_default_and_anywhere_when_asked(tiny: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    assert Engine(tiny, provider="cpu").device_kit is None  # off unless asked
    assert Engine(tiny, provider="cpu", device_stitch="auto").device_kit is None  # auto: CUDA only
    on = Engine(tiny, provider="cpu", device_stitch="on")
    assert on.device_kit is not None and on.device_kit.device == "cpu"
    assert on.run_names == ("logits", "labels", DEVICE_LOGITS)
    assert on.runners()[0].outputs == on.run_names
    assert on.outputs == ("logits", "labels")  # what users see of the artifact is unchanged
    with pytest.raises(ValueError, match="auto, on or off"):
        Engine(tiny, provider="cpu", device_stitch="yes")  # type: ignore[arg-type]
    labels_only = write(build_graph(tmp_path / "ids.onnx", kind="labels"), description(kind="labels"))
    one_by_one = write(build_graph(tmp_path / "one.onnx", batch=1), description(batch=1))
    with caplog.at_level(logging.INFO, logger="service.engine"):
        assert Engine(tiny, provider="cpu", device_stitch="on").device_kit is not None
        assert Engine(labels_only, provider="cpu", device_stitch="on").device_kit is None
        assert Engine(one_by_one, provider="cpu", device_stitch="on").device_kit is None
    assert "stitched on the host: it gives labels only" in caplog.text
    assert "stitched on the host: it takes a fixed batch of 1" in caplog.text
    assert "device stitch on CPUExecutionProvider is slower than the exact host stitch" in caplog.text


def test_stitch_graphs_that_do_not_load_leave_the_host_stitch(tiny: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(device_kit, "DeviceKit", broken)
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(tiny, provider="cpu", device_stitch="on")
    assert engine.device_kit is None and engine.run_names == ("logits", "labels")
    assert "the stitch graphs did not load on CPUExecutionProvider: no kernel image" in caplog.text


def test_a_batch_leaves_its_logits_on_the_device_and_fetches_the_rest(tiny: Path) -> None:
    engine = Engine(tiny, provider="cpu", max_batch=3, device_stitch="on")
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 3, 32, 48)).astype(np.float32)
    host = engine.run_outputs(tiles, (OUTPUT_NAME, LABELS_NAME))
    out = engine.run_outputs(tiles, (OUTPUT_NAME, LABELS_NAME, DEVICE_LOGITS))
    batch = out[DEVICE_LOGITS]
    assert isinstance(batch, DeviceBatch) and len(batch) == 3
    np.testing.assert_array_equal(batch.value.numpy(), host[OUTPUT_NAME])
    np.testing.assert_array_equal(out[OUTPUT_NAME], host[OUTPUT_NAME])
    np.testing.assert_array_equal(out[LABELS_NAME], host[LABELS_NAME])
    alone = engine.run_outputs(tiles[:2], (DEVICE_LOGITS,))
    assert list(alone) == [DEVICE_LOGITS]
    np.testing.assert_array_equal(alone[DEVICE_LOGITS].value.numpy(), host[OUTPUT_NAME][:2])
    assert engine.warmup() > 0  # every fetch set, the device one and the kit's graphs included


@pytest.mark.parametrize("align_corners", [False, True])
def test_a_described_models_strided_logits_reach_the_tile_on_the_device(tmp_path: Path,
                                                                        align_corners: bool) -> None:
    model = write(build_graph(tmp_path / "strided.onnx", kind="strided_logits"),
                  description(kind="strided_logits", align_corners=align_corners))
    engine = Engine(model, provider="cpu", max_batch=2, device_stitch="on")
    tiles = np.random.default_rng(1).uniform(0, 255, (2, 3, 16, 24)).astype(np.float32)
    on_host = engine.run_outputs(tiles, (OUTPUT_NAME,))[OUTPUT_NAME]
    on_device = engine.run_outputs(tiles, (DEVICE_LOGITS,))[DEVICE_LOGITS].value.numpy()
    assert on_device.shape == on_host.shape == (2, 3, 16, 24)
    # ONNX Resize and the adapter's torch-rule resize differ in float32 rounding only: at most 1.5e-5
    # (half-pixel) and 6.1e-5 (align corners) over 20 seeds, on logits up to 122 (a few float32 steps)
    np.testing.assert_allclose(on_device, on_host, rtol=0, atol=7e-5)


@pytest.mark.parametrize("dtype", ["float", "float16"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tile_logits_resize_as_torch_does(dtype: str, align_corners: bool) -> None:
    import onnxruntime as ort

    kit = DeviceKit(CPU)
    raw = np.random.default_rng(2).normal(0, 4, (2, 5, 7, 9)).astype(
        np.float16 if dtype == "float16" else np.float32)
    value = ort.OrtValue.ortvalue_from_numpy(raw)
    out = kit.tile_logits(value, dtype, align_corners, (2, 5, 28, 36)).numpy()
    expected = resize_bilinear(raw.astype(np.float32), (28, 36), align_corners)
    assert out.dtype == np.float32
    # float32 roundings of the interpolation weights: 4.1e-6 at most on logits of about +-12 (measured)
    np.testing.assert_allclose(out, expected, rtol=0, atol=8e-6)


def _official(engine: Engine, rgb: np.ndarray, params: InferenceParams) -> np.ndarray:
    p = engine.meta.protocol
    plan = plan_tiles(rgb, tile=engine.meta.tile, mode=params.mode, scales=params.scales, flip=params.flip,
                      base_size=p.base_size, stride_rate=p.stride_rate, mean=engine.meta.mean)
    return stitch_float64(plan, EngineRunner(engine, engine.max_batch).run(plan.tiles))


def _keeps_the_rule(labels: np.ndarray, official: np.ndarray) -> None:
    differ = labels != official.argmax(axis=2)
    assert differ.mean() <= 0.0005
    assert not differ.any() or top_two_margin(official)[differ].max() <= MARGIN


@pytest.mark.anyio
async def test_requests_split_over_batches_are_stitched_on_the_device(tiny: Path) -> None:
    """Several requests at once through the batcher, batches of 3 tiles: a request's rows (and a window's
    mirror) land in different batches; each request is stitched on the device and gives its budget back."""
    engine = Engine(tiny, provider="cpu", max_batch=3, device_stitch="on")
    assert engine.device_kit is not None
    stitching = DeviceStitching(engine.device_kit, DeviceBudget(1 << 30))
    batcher = TileBatcher(engine.runners(), max_batch=3, max_wait_ms=5, max_queue_tiles=4096)
    await batcher.start()
    chain = Chain(engine.meta, NO_LIMITS, device=stitching)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (50 + 7 * i, 80 - 5 * i, 3), dtype=np.uint8) for i in range(4)]
    try:
        results = await asyncio.gather(*(
            chain.stitched(rgb, MULTISCALE_FLIP, runner=batcher, soft=Soft("confidence")) for rgb in images))
    finally:
        await batcher.stop()
    assert batcher.stats.batches > 4 and stitching.budget.held == 0 and stitching.budget.declined == 0
    for rgb, (labels, confidence, _) in zip(images, results, strict=True):
        official = _official(engine, rgb, MULTISCALE_FLIP)
        _keeps_the_rule(labels, official)
        assert confidence is not None
        np.testing.assert_allclose(confidence, official.max(axis=2), rtol=0, atol=5e-6)


@pytest.mark.anyio
async def test_a_request_the_device_cannot_hold_now_is_stitched_exactly_on_the_host(tiny: Path) -> None:
    engine = Engine(tiny, provider="cpu", max_batch=4, device_stitch="on")
    assert engine.device_kit is not None
    stitching = DeviceStitching(engine.device_kit, DeviceBudget(0))
    chain = Chain(engine.meta, NO_LIMITS, device=stitching)
    rgb = np.random.default_rng(6).integers(0, 256, (61, 83, 3), dtype=np.uint8)

    class Runner(EngineRunner):  # the offline runner, offering the device output as the batcher does
        @property
        def outputs(self) -> tuple[str, ...]:
            return engine.run_names

    labels, _, _ = await chain.stitched(rgb, MULTISCALE_FLIP, runner=Runner(engine, 4))
    assert stitching.budget.declined == 1
    np.testing.assert_array_equal(labels, _official(engine, rgb, MULTISCALE_FLIP).argmax(axis=2))


def _v2(data: bytes) -> tuple[bytes, dict[str, str]]:
    raw = len(data).to_bytes(4, "little") + data
    binary = {"binary_data": True}
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "parameters": {"binary_data_size": len(raw)}}],
           "outputs": [{"name": "labels", "parameters": binary},
                       {"name": "probabilities", "parameters": binary}],
           "parameters": {"mode": "multiscale", "flip": True}}
    head = json.dumps(doc).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}


def _labels_and_probs(resp: Any) -> tuple[np.ndarray, np.ndarray]:
    assert resp.status_code == 200, resp.text
    n = int(resp.headers[HEADER_LENGTH])
    labels_spec, probs_spec = json.loads(resp.content[:n])["outputs"]
    start = n + labels_spec["parameters"]["binary_data_size"]
    labels = np.frombuffer(resp.content[n:start], np.uint8).reshape(labels_spec["shape"])[0]
    return labels, np.frombuffer(resp.content[start:], "<f2").reshape(probs_spec["shape"])[0]


@pytest.mark.anyio
async def test_the_server_stitches_on_the_device_when_told(model: Path) -> None:
    data = png_bytes(57, 83, seed=7)
    body, headers = _v2(data)
    async with serving(model, device_stitch="on") as c:
        on = _labels_and_probs(await c.post("/v2/models/tiny/infer", content=body, headers=headers))
        routes = metric_samples((await c.get("/metrics")).text, "pspnet_stitches_total")
        assert (await c.get("/v1/models/tiny")).json()["stitch"] == "cpu"
        assert (await c.get("/readyz")).json()["models"][0]["stitch"] == "cpu"
    assert routes == {'{model="tiny",route="device"}': 1.0}
    async with serving(model, device_stitch="on", device_stitch_mb=0) as c:  # nothing fits: the host road
        host = _labels_and_probs(await c.post("/v2/models/tiny/infer", content=body, headers=headers))
        routes = metric_samples((await c.get("/metrics")).text, "pspnet_stitches_total")
    assert routes == {'{model="tiny",route="host"}': 1.0}
    engine = Engine(model, provider="cpu", max_batch=4)
    params = resolve(engine.meta.protocol, mode="multiscale", flip=True, scales=None, max_scales=8)
    official = _official(engine, decode(data, None, NO_LIMITS).rgb, params)
    np.testing.assert_array_equal(host[0], official.argmax(axis=2))  # the exact stitch, to the bit
    np.testing.assert_array_equal(host[1], official.transpose(2, 0, 1).astype(np.float16))
    _keeps_the_rule(on[0], official)
    assert np.abs(on[1].astype(np.float64) - official.transpose(2, 0, 1)).max() <= 2.0**-11


class CudaStandIn:
    """ONNX Runtime as the CUDA build looks to the code: sessions asked for CUDA say they run on it, and
    every value bound to or made on ``cuda`` is recorded (and kept in host memory underneath)."""

    places: ClassVar[list[tuple[str, str, int]]] = []  # (what, device type, device id) of each placement
    providers: ClassVar[list[Any]] = []  # the provider lists sessions were made with

    def __init__(self, real: Any) -> None:
        self.real = real

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        import onnxruntime as ort

        real_session, real_value = ort.InferenceSession, ort.OrtValue.ortvalue_from_numpy
        cls.places, cls.providers = [], []

        class Session:
            def __init__(self, path: Any, sess_options: Any = None, providers: Any = None) -> None:
                cls.providers.append(providers)
                self._s = real_session(path, sess_options=sess_options, providers=[CPU])
                self._cuda = any(p[0] == "CUDAExecutionProvider" for p in providers if isinstance(p, tuple))

            def get_providers(self) -> list[str]:
                return ["CUDAExecutionProvider", CPU] if self._cuda else [CPU]

            def io_binding(self) -> Binding:
                return Binding(self._s.io_binding())

            def run_with_iobinding(self, binding: Binding, *args: Any) -> None:
                self._s.run_with_iobinding(binding.real, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._s, name)

        class Binding(cls):  # type: ignore[valid-type,misc]
            def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0,
                            *rest: Any) -> None:
                if device_type != "cpu":
                    cls.places.append((f"output {name}", device_type, device_id))
                self.real.bind_output(name, "cpu", 0, *rest)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.real, name)

        def value(array: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> Any:
            if device_type != "cpu":
                cls.places.append(("value", device_type, device_id))
            return real_value(array)

        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
        monkeypatch.setattr(ort, "InferenceSession", Session)
        monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(value))


@pytest.mark.anyio
async def test_on_cuda_auto_stitches_on_the_device_and_keeps_every_value_there(
        tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CudaStandIn.install(monkeypatch)
    engine = Engine(tiny, provider="auto", max_batch=3, device_id=1, device_stitch="auto")
    kit = engine.device_kit
    assert engine.provider == "CUDAExecutionProvider" and kit is not None and kit.device == "cuda"
    graphs = CudaStandIn.providers[1:]  # the model's session, then one per graph
    assert len(graphs) == 12 and all(p[0][0] == "CUDAExecutionProvider" for p in graphs)
    assert all(p[0][1]["device_id"] == "1" and p[0][1]["arena_extend_strategy"] == "kSameAsRequested"
               for p in graphs)
    CudaStandIn.places.clear()
    outputs = engine.run_names

    class Runner(EngineRunner):  # as the batcher offers them: the device output too
        @property
        def outputs(self) -> tuple[str, ...]:
            return outputs

    chain = Chain(engine.meta, NO_LIMITS, device=DeviceStitching(kit, DeviceBudget(1 << 30)))
    rgb = np.random.default_rng(8).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    labels, _, _ = await chain.stitched(rgb, MULTISCALE_FLIP, runner=Runner(engine, 3))
    # every batch's logits and every running sum were placed on device 1, and nothing anywhere else
    assert {(device, i) for _, device, i in CudaStandIn.places} == {("cuda", 1)}
    work = prepare(engine.meta, rgb, MULTISCALE_FLIP, outputs)
    runs = sum(-(-min(work.chunk, g.num_tiles - a) // 3) for g in work.geometry
               for a in range(0, g.num_tiles, work.chunk))
    assert sum(1 for what, _, _ in CudaStandIn.places if what == "output logits") == runs
    assert sum(1 for what, _, _ in CudaStandIn.places if what == "output total_out") > len(work.geometry)
    _keeps_the_rule(labels, _official(engine, rgb, MULTISCALE_FLIP))
