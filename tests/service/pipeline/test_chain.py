"""The request chain: each step alone, then its faces (async, sync) against each other."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.codec.decode import NO_LIMITS, DecodeLimits, decode
from service.codec.outputs import OUTPUTS, Encoded, OutputOptions, encode_output
from service.engine.sessions import Engine
from service.errors import BadRequest, PayloadTooLarge
from service.pipeline.chain import Chain, Segmented, Upload, prepare, run_now
from service.pipeline.params import InferenceParams
from service.pipeline.runner import EngineRunner
from service.pipeline.timings import Timings
from service.protocol import peak_bytes
from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.stitch import stitch_labels
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact

SLIDE = InferenceParams(mode="slide", scales=(1.0,), flip=False)
MULTI_FLIP = InferenceParams(mode="multiscale", scales=(0.75, 1.25), flip=True)
LOGITS = ("logits",)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = build_tiny_artifact(tmp_path_factory.mktemp("chain") / "tiny.onnx", tile=(32, 48), num_classes=5)
    return Engine(path, provider="cpu", intra_op_threads=1, max_batch=3)


# --- the steps ---------------------------------------------------------------------------------------

def test_decode_applies_the_limits_it_is_given() -> None:
    data = png_bytes(40, 60)
    assert decode(data, "image/png", NO_LIMITS).rgb.shape == (40, 60, 3)
    with pytest.raises(PayloadTooLarge):
        decode(data, "image/png", DecodeLimits(max_bytes=1 << 20, max_pixels=40 * 60 - 1))


def test_prepare_refuses_geometry_it_cannot_plan_as_a_400(engine: Engine) -> None:
    work = prepare(engine.meta, np.zeros((40, 60, 3), np.uint8), MULTI_FLIP, LOGITS)
    assert work.num_tiles > 2 and work.geometry[0].flip and work.output == "logits" and work.window is None
    thin = np.zeros((1, 4000, 3), np.uint8)  # scale 0.75 of base 48 shrinks its height to nothing
    with pytest.raises(BadRequest, match=r"cannot segment a 4000x1.*mode=whole serves"):
        prepare(engine.meta, thin, MULTI_FLIP, LOGITS)


class SpyEngine:
    def __init__(self) -> None:
        self.seen: list[int] = []

    @property
    def outputs(self) -> tuple[str, ...]:
        return LOGITS

    def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.seen.append(len(tiles))
        return {"logits": tiles[:, :1] * 2}


def test_the_engine_runner_runs_at_most_max_batch_tiles_at_a_time_in_order() -> None:
    spy = SpyEngine()
    tiles = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    out = EngineRunner(spy, 3).run(tiles)
    assert spy.seen == [3, 3, 1]
    np.testing.assert_array_equal(out, tiles[:, :1] * 2)
    with pytest.raises(ValueError, match="max_batch"):
        EngineRunner(spy, 0)


def _whole_plan(engine: Engine, rgb: np.ndarray, params: InferenceParams) -> TilePlan:
    p = engine.meta.protocol
    return plan_tiles(rgb, tile=engine.meta.tile, mode=params.mode, scales=params.scales, flip=params.flip,
                      base_size=p.base_size, stride_rate=p.stride_rate, mean=engine.meta.mean)


class RecordingRunner(EngineRunner):
    """Runs each submission at once and records its size and what admission was asked to weigh."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, 3)
        self.submitted: list[tuple[int, int | None]] = []

    async def submit(self, tiles: np.ndarray, *, deadline: float = float("inf"), output: str = "logits",
                     admit_tiles: int | None = None) -> np.ndarray:
        self.submitted.append((len(tiles), admit_tiles))
        return self.run(tiles, output)


def test_a_stitched_request_streams_whole_windows_and_equals_the_whole_plans_stitch(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one window's logits a chunk, every window (and its mirror) is one submission; the
    first asks admission for the whole request, the others for nothing; the labels are those of
    the stitcher given every tile at once."""
    rgb = decode(png_bytes(50, 70, seed=4), None, NO_LIMITS).rgb
    work = prepare(engine.meta, rgb, MULTI_FLIP, LOGITS)
    assert work.chunk > 2  # a tiny model's windows: many to a chunk
    monkeypatch.setattr(peak_bytes, "STREAM_BYTES", 1)
    runner = RecordingRunner(engine)
    labels, tiles = Chain(engine.meta, NO_LIMITS).labels_now(rgb, MULTI_FLIP, runner=runner)
    plan = _whole_plan(engine, rgb, MULTI_FLIP)
    assert tiles == plan.num_tiles == 2 * len(runner.submitted)
    assert runner.submitted == [(2, plan.num_tiles)] + [(2, 0)] * (len(runner.submitted) - 1)
    np.testing.assert_array_equal(labels, stitch_labels(plan, EngineRunner(engine, 3).run(plan.tiles)))


def test_timings_add_up_per_stage_and_format_as_server_timing() -> None:
    t = Timings()
    t.add("decode", 0.001)
    t.add("decode", 0.002)
    with t.stage("encode"):
        pass
    assert t.stages["decode"] == pytest.approx(0.003)
    assert t.header().startswith("decode;dur=3.0, encode;dur=")
    # a stage timed again right after itself extends its interval; after another stage it adds one
    for name in ("plan", "plan", "batch", "plan"):
        with t.stage(name):
            pass
    assert [i[0] for i in t.intervals] == ["encode", "plan", "batch", "plan"]
    assert t.intervals[1][1] <= t.intervals[1][2] <= t.intervals[2][1]


def test_run_now_refuses_a_coroutine_that_waits() -> None:
    async def waits() -> int:
        await asyncio.sleep(0)
        return 1

    async def answers() -> int:
        return 2

    assert run_now(answers()) == 2
    with pytest.raises(RuntimeError, match="event loop"):
        run_now(waits())


# --- the chain -----------------------------------------------------------------------------------------

class ChunkingBatcher:
    """A stand-in for the batcher: runs the tiles on the engine, in batches of its own size, after
    yielding to the event loop (as the batcher's queue does)."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine, self.size, self.calls = engine, size, 0

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.engine.outputs

    async def submit(self, tiles: np.ndarray, *, deadline: float, output: str = "logits",
                     admit_tiles: int | None = None) -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(0)
        return EngineRunner(self.engine, self.size).run(tiles, output)


def _batched(chain: Chain, images: Sequence[Upload] | np.ndarray, params: InferenceParams,
             encode: object, batcher: ChunkingBatcher) -> Segmented[object]:
    async def body() -> Segmented[object]:
        with ThreadPoolExecutor(2) as pool:
            return await chain.segment(images, params, encode, runner=batcher, cpu=pool,  # type: ignore[arg-type]
                                       deadline=asyncio.get_running_loop().time() + 30)
    return asyncio.run(body())


@pytest.mark.parametrize("params", [SLIDE, MULTI_FLIP], ids=["slide", "multiscale-flip"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_the_batched_chain_answers_what_the_synchronous_one_does(engine: Engine, params: InferenceParams,
                                                                 output: str) -> None:
    chain = Chain(engine.meta, NO_LIMITS)
    data = png_bytes(50, 70, seed=3)
    options = OutputOptions(overlay_alpha=0.3, jpeg_quality=70, include_mask=True)
    rgb = decode(data, None, NO_LIMITS).rgb
    labels, tiles = chain.labels_now(rgb, params, runner=EngineRunner(engine, 3))
    want = encode_output(output, engine.meta, rgb, labels, options)

    def encode(rgbs: Sequence[np.ndarray], labels: Sequence[np.ndarray], softs: object) -> Encoded:
        return encode_output(output, engine.meta, rgbs[0], labels[0], options)

    batcher = ChunkingBatcher(engine, 2)
    result = _batched(chain, [Upload(data)], params, encode, batcher)
    assert result.encoded == want
    np.testing.assert_array_equal(result.labels[0], labels)
    # one submission per scale: a tiny model's windows all fit one chunk
    assert batcher.calls == len(prepare(engine.meta, rgb, params, LOGITS).geometry) and result.tiles == tiles
    assert set(result.timings.stages) == {"decode", "plan", "batch", "stitch", "encode"}
    assert [d.rgb.shape for d in result.images] == [rgb.shape]


def test_several_images_share_one_pass_and_one_size(engine: Engine) -> None:
    chain = Chain(engine.meta, NO_LIMITS)
    uploads = [Upload(png_bytes(40, 60, seed=s)) for s in (1, 2)]
    batcher = ChunkingBatcher(engine, 3)
    result = _batched(chain, uploads, SLIDE, lambda rgbs, labels, softs: len(labels), batcher)
    assert result.encoded == 2 and batcher.calls == 2 and len(result.labels) == 2
    pixels = np.stack([decode(u.data, None, NO_LIMITS).rgb for u in uploads])
    from_pixels = _batched(chain, pixels, SLIDE, lambda rgbs, labels, softs: labels, batcher)
    assert from_pixels.images == () and from_pixels.tiles == result.tiles
    for a, b in zip(from_pixels.labels, result.labels, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BadRequest, match="share one size; got 60x40, 61x40"):
        _batched(chain, [uploads[0], Upload(png_bytes(40, 61))], SLIDE, lambda rgbs, labels, softs: 0,
                 batcher)


def test_labels_now_is_the_chain_without_decode_and_encode(engine: Engine) -> None:
    rgb = decode(png_bytes(45, 66, seed=5), None, NO_LIMITS).rgb
    labels, tiles = Chain(engine.meta, NO_LIMITS).labels_now(rgb, MULTI_FLIP, runner=EngineRunner(engine, 3))
    plan = _whole_plan(engine, rgb, MULTI_FLIP)
    assert tiles == plan.num_tiles
    np.testing.assert_array_equal(labels, stitch_labels(plan, EngineRunner(engine, 2).run(plan.tiles)))


def test_the_chain_refuses_what_its_limits_refuse(engine: Engine) -> None:
    chain = Chain(engine.meta, DecodeLimits(max_bytes=1 << 20, max_pixels=100))
    with pytest.raises(PayloadTooLarge):
        _batched(chain, [Upload(png_bytes(20, 20))], SLIDE, lambda rgbs, labels, softs: 0,
                 ChunkingBatcher(engine, 3))


@pytest.fixture(scope="module")
def labels_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = build_tiny_artifact(tmp_path_factory.mktemp("chain") / "tl.onnx", tile=(32, 48), num_classes=5,
                               with_labels=True)
    return Engine(path, provider="cpu", intra_op_threads=1, max_batch=3)


class LogitsOnly:
    """The labels engine seen as an artifact without in-graph labels."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def outputs(self) -> tuple[str, ...]:
        return LOGITS

    def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        return self.engine.run_outputs(tiles, names)


def test_one_tile_plans_fetch_the_in_graph_labels_and_others_the_logits(labels_engine: Engine) -> None:
    """Only where one window is the image unmirrored; same labels as the logits path, every face."""
    chain = Chain(labels_engine.meta, NO_LIMITS)
    fetched: list[tuple[str, ...]] = []

    class Spy(LogitsOnly):
        @property
        def outputs(self) -> tuple[str, ...]:
            return self.engine.outputs

        def run_outputs(self, tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
            fetched.append(tuple(names))
            return self.engine.run_outputs(tiles, names)

    for size, params, graph in [((32, 48), InferenceParams("whole", (1.0,), False), True),
                                ((24, 48), SLIDE, True),  # base 48 keeps it, padded into one tile
                                ((32, 48), InferenceParams("whole", (1.0,), True), False),  # mirrored
                                ((50, 70), SLIDE, False), ((50, 70), MULTI_FLIP, False)]:
        rgb = decode(png_bytes(*size, seed=7), None, NO_LIMITS).rgb
        fetched.clear()
        via_graph, _ = chain.labels_now(rgb, params, runner=EngineRunner(Spy(labels_engine), 3))
        assert (set(fetched) == {("labels",)}) == graph, (size, params)
        via_logits, _ = chain.labels_now(rgb, params, runner=EngineRunner(LogitsOnly(labels_engine), 3))
        np.testing.assert_array_equal(via_graph, via_logits)
        batched = _batched(chain, rgb[None], params, lambda rgbs, labels, softs: None,
                           ChunkingBatcher(labels_engine, 3))
        np.testing.assert_array_equal(batched.labels[0], via_logits)


def test_a_labels_only_model_needs_one_window_the_image(engine: Engine) -> None:
    """A model that gives labels only (a described graph, service/engine/adapt.py) cannot be stitched:
    a 400 that says which requests it serves, and the one-window ones still go through."""
    rgb = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(BadRequest, match=r"labels only.*mode=whole"):
        prepare(engine.meta, rgb, MULTI_FLIP, ("labels",))
    whole = prepare(engine.meta, rgb, InferenceParams(mode="whole", scales=(1.0,), flip=False), ("labels",))
    assert whole.output == "labels" and whole.window == (0, 0, 32, 48)
