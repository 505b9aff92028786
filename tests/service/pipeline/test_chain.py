"""The request chain: each step alone, then the synchronous and the batched chain against each other."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.codec.decode import NO_LIMITS, DecodeLimits, decode
from service.codec.outputs import OUTPUTS, OutputOptions
from service.engine.sessions import Engine
from service.errors import BadRequest, PayloadTooLarge
from service.pipeline.chain import (
    Chain,
    Segmentation,
    labels_offline,
    labels_runner,
    make_plan,
    run_chunked,
    stitch,
)
from service.pipeline.params import InferenceParams
from service.pipeline.timings import Timings
from service.protocol.stitch import stitch_labels
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact

SLIDE = InferenceParams(mode="slide", scales=(1.0,), flip=False)
MULTI_FLIP = InferenceParams(mode="multiscale", scales=(0.75, 1.25), flip=True)


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


def test_make_plan_refuses_geometry_it_cannot_plan_as_a_400(engine: Engine) -> None:
    plan = make_plan(engine.meta, np.zeros((40, 60, 3), np.uint8), MULTI_FLIP)
    assert plan.num_tiles > 2 and plan.flip
    thin = np.zeros((1, 4000, 3), np.uint8)  # scale 0.75 of base 48 shrinks its height to nothing
    with pytest.raises(BadRequest, match="cannot segment a 4000x1"):
        make_plan(engine.meta, thin, MULTI_FLIP)


def test_run_chunked_runs_at_most_max_batch_tiles_at_a_time_in_order() -> None:
    seen: list[int] = []

    def run(tiles: np.ndarray) -> np.ndarray:
        seen.append(len(tiles))
        return tiles[:, :1] * 2

    tiles = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    out = run_chunked(run, tiles, 3)
    assert seen == [3, 3, 1]
    np.testing.assert_array_equal(out, tiles[:, :1] * 2)


def test_stitch_is_the_tiling_label_stitcher(engine: Engine) -> None:
    plan = make_plan(engine.meta, np.asarray(decode(png_bytes(50, 70), None, NO_LIMITS).rgb), SLIDE)
    logits = run_chunked(engine.run, plan.tiles, 3)
    np.testing.assert_array_equal(stitch(plan, logits), stitch_labels(plan, logits))


def test_timings_add_up_per_stage_and_format_as_server_timing() -> None:
    t = Timings()
    t.add("decode", 0.001)
    t.add("decode", 0.002)
    with t.stage("encode"):
        pass
    assert t.stages["decode"] == pytest.approx(0.003)
    assert t.header().startswith("decode;dur=3.0, encode;dur=")


# --- the chain -----------------------------------------------------------------------------------------

class ChunkingBatcher:
    """A stand-in for the batcher: runs the tiles on the engine, in batches of its own size."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine, self.size, self.calls = engine, size, 0

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.engine.outputs

    async def submit(self, tiles: np.ndarray, *, deadline: float, output: str = "logits") -> np.ndarray:
        self.calls += 1
        return run_chunked(lambda t: self.engine.run_outputs(t, (output,))[output], tiles, self.size)


@pytest.mark.parametrize("params", [SLIDE, MULTI_FLIP], ids=["slide", "multiscale-flip"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_the_batched_chain_answers_what_the_synchronous_one_does(engine: Engine, params: InferenceParams,
                                                                 output: str) -> None:
    chain = Chain(engine.meta, NO_LIMITS)
    data = png_bytes(50, 70, seed=3)
    options = OutputOptions(overlay_alpha=0.3, jpeg_quality=70, include_mask=True)
    sync = chain.segment(data, params, output, options, run=engine.run, max_batch=3)
    batcher = ChunkingBatcher(engine, 2)

    async def batched() -> Segmentation:
        with ThreadPoolExecutor(2) as pool:
            return await chain.segment_batched(data, params, output, options, batcher=batcher,
                                               executor=pool, deadline=asyncio.get_running_loop().time() + 30)

    result = asyncio.run(batched())
    assert result.encoded == sync.encoded
    np.testing.assert_array_equal(result.labels, sync.labels)
    assert batcher.calls == 1 and sync.tiles == result.tiles
    assert set(sync.timings.stages) == {"decode", "plan", "run", "stitch", "encode"}
    assert set(result.timings.stages) == {"decode", "plan", "batch", "stitch", "encode"}


def test_labels_offline_is_the_chain_without_decode_and_encode(engine: Engine) -> None:
    rgb = decode(png_bytes(45, 66, seed=5), None, NO_LIMITS).rgb
    labels, tiles = Chain(engine.meta, NO_LIMITS).labels(rgb, MULTI_FLIP, run=engine.run, max_batch=3)
    plan = make_plan(engine.meta, rgb, MULTI_FLIP)
    assert tiles == plan.num_tiles
    np.testing.assert_array_equal(labels, stitch_labels(plan, run_chunked(engine.run, plan.tiles, 3)))
    np.testing.assert_array_equal(labels_offline(engine.meta, engine.run, rgb, MULTI_FLIP, max_batch=2),
                                  labels)


def test_the_chain_refuses_what_its_limits_refuse(engine: Engine) -> None:
    chain = Chain(engine.meta, DecodeLimits(max_bytes=1 << 20, max_pixels=100))
    with pytest.raises(PayloadTooLarge):
        chain.segment(png_bytes(20, 20), SLIDE, "color", OutputOptions(), run=engine.run, max_batch=3)


@pytest.fixture(scope="module")
def labels_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = build_tiny_artifact(tmp_path_factory.mktemp("chain") / "tl.onnx", tile=(32, 48), num_classes=5,
                               with_labels=True)
    return Engine(path, provider="cpu", intra_op_threads=1, max_batch=3)


def test_one_tile_plans_fetch_the_in_graph_labels_and_others_the_logits(labels_engine: Engine) -> None:
    """Only where one window is the image unmirrored; same labels as the logits path, both chains."""
    chain = Chain(labels_engine.meta, NO_LIMITS)
    fetched: list[tuple[str, ...]] = []

    def spy(tiles: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        fetched.append(tuple(names))
        return labels_engine.run_outputs(tiles, names)

    assert labels_runner(labels_engine) is not None
    for size, params, graph in [((32, 48), InferenceParams("whole", (1.0,), False), True),
                                ((24, 48), SLIDE, True),  # base 48 keeps it, padded into one tile
                                ((32, 48), InferenceParams("whole", (1.0,), True), False),  # mirrored
                                ((50, 70), SLIDE, False), ((50, 70), MULTI_FLIP, False)]:
        rgb = decode(png_bytes(*size, seed=7), None, NO_LIMITS).rgb
        fetched.clear()
        via_graph, _ = chain.labels(rgb, params, run=labels_engine.run, max_batch=3,
                                    run_labels=lambda t: spy(t, ("labels",))["labels"])
        assert (fetched == [("labels",)]) == graph, (size, params)
        via_logits, _ = chain.labels(rgb, params, run=labels_engine.run, max_batch=3)
        np.testing.assert_array_equal(via_graph, via_logits)
        batcher = ChunkingBatcher(labels_engine, 3)

        async def batched(rgb: np.ndarray = rgb, params: InferenceParams = params,
                          batcher: ChunkingBatcher = batcher) -> np.ndarray:
            with ThreadPoolExecutor(1) as pool:
                labels, _ = await chain.labels_batched(
                    rgb, params, batcher=batcher, executor=pool,
                    deadline=asyncio.get_running_loop().time() + 30, timings=Timings())
            return labels

        np.testing.assert_array_equal(asyncio.run(batched()), via_logits)
