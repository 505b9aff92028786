"""service.offline.work: tiles of successive images pooled into batches; results as the chain's, per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.codec.decode import NO_LIMITS
from service.codec.outputs import OutputOptions
from service.engine.sessions import Engine
from service.offline.work import BulkConfig, Decoded, Job, Segmenter, TilePool, decode_input, output_suffix
from service.pipeline.chain import Chain, labels_runner
from service.pipeline.params import resolve
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact


def tiles_of(key: int, n: int) -> np.ndarray:
    """n distinct one-value tiles of image ``key``: value key * 100 + i."""
    return (key * 100 + np.arange(n, dtype=np.float32)).reshape(n, 1, 1, 1)


def test_tiles_of_successive_images_fill_batches_in_order() -> None:
    batches: list[int] = []

    def run(tiles: np.ndarray) -> np.ndarray:
        batches.append(len(tiles))
        return tiles * 2

    pool = TilePool(run, max_batch=4)
    done = []
    for key, n in enumerate([1, 3, 2, 5, 2]):
        done += pool.add(key, tiles_of(key, n))
    # 13 tiles: three full batches ran as soon as they filled; the last image waits with one tile run
    assert batches == [4, 4, 4] and pool.queued == 1 and [r.key for r in done] == [0, 1, 2, 3]
    done += pool.finish()
    assert batches == [4, 4, 4, 1]
    assert [r.key for r in done] == [0, 1, 2, 3, 4]
    for r, n in zip(done, [1, 3, 2, 5, 2], strict=True):
        assert r.rows is not None
        np.testing.assert_array_equal(r.rows, tiles_of(r.key, n) * 2)
        assert r.seconds >= 0 and r.error is None


def test_a_failing_batch_fails_its_images_only() -> None:
    calls = 0

    def run(tiles: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("device lost")
        return tiles

    pool = TilePool(run, max_batch=2)
    done = pool.add(0, tiles_of(0, 1)) + pool.add(1, tiles_of(1, 2))  # batch 1: [0, 1a]
    done += pool.add(2, tiles_of(2, 3))  # batch 2: [1b, 2a] fails: 1 and 2 dropped with their queued tiles
    done += pool.add(3, tiles_of(3, 1)) + pool.finish()
    assert [(r.key, r.error) for r in done] == [(0, None), (1, "inference failed: device lost"),
                                                (2, "inference failed: device lost"), (3, None)]
    assert pool.queued == 0 and calls == 3


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize(("flip", "scales"), [(None, None), (True, "0.75,1.0")])
def test_pooled_results_are_the_chains_per_image(tmp_path: Path, with_labels: bool, flip: bool | None,
                                                 scales: str | None) -> None:
    # images of one tile (the in-graph labels where the model has them) and of several, batched
    # across images three tiles at a time: every file holds the bytes the chain gives that image alone
    model = build_tiny_artifact(tmp_path / "m.onnx", tile=(32, 48), num_classes=5, with_labels=with_labels)
    engine = Engine(model, provider="cpu", max_batch=3)
    params = resolve(engine.meta.protocol, mode=None, flip=flip, scales=scales, max_scales=8)
    config = BulkConfig(model=model, params=params, output="color", options=OutputOptions(),
                        out=tmp_path / "out", max_pixels=10**6, max_batch=3)
    sizes = [(30, 40), (32, 48), (50, 70), (20, 20), (24, 48), (90, 60), (16, 48)]  # 3 of one tile
    segmenter = Segmenter(config, engine)
    records = []
    for i, (h, w) in enumerate(sizes):
        job = Job(f"in/{i}.png", f"in/{i}.png", f"{i}.png")
        records += segmenter.feed(decode_input(job, png_bytes(h, w, seed=i), config.limits))
    records += segmenter.flush()
    assert sorted(r.input for r in records) == [f"in/{i}.png" for i in range(len(sizes))]
    assert all(r.status == "ok" for r in records)
    chain = Chain(engine.meta, NO_LIMITS)
    for i, (h, w) in enumerate(sizes):
        alone = chain.segment(png_bytes(h, w, seed=i), params, "color", OutputOptions(), run=engine.run,
                              run_labels=labels_runner(engine), max_batch=3)
        assert (config.out / f"{i}.png").read_bytes() == alone.encoded.body


def test_an_image_that_cannot_be_planned_fails_alone(tmp_path: Path, model: Path) -> None:
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode="slide", flip=None, scales="0.1", max_scales=8)
    config = BulkConfig(model=model, params=params, output="label", options=OutputOptions(),
                        out=tmp_path / "out", max_pixels=10**6)
    segmenter = Segmenter(config, engine)
    thin = decode_input(Job("thin", "thin", "thin.png"), png_bytes(1, 400), config.limits)
    wide = decode_input(Job("wide", "wide", "wide.png"), png_bytes(300, 400), config.limits)
    records = segmenter.feed(thin) + segmenter.feed(wide) + segmenter.flush()
    assert [(r.input, r.status) for r in records] == [("thin", "error"), ("wide", "ok")]
    assert "cannot segment a 400x1 image" in (records[0].error or "")


def test_decoding_failures_are_the_inputs_errors(tmp_path: Path) -> None:
    job = Job("x", str(tmp_path / "missing.png"), "x.png")
    missing = decode_input(job, None, NO_LIMITS)
    assert missing.rgb is None and "missing.png" in (missing.error or "")
    refused = decode_input(job, png_bytes(50, 70), NO_LIMITS.__class__(max_bytes=1 << 20, max_pixels=100))
    assert (refused.width, refused.height) == (70, 50) and refused.failed().status == "error"
    assert isinstance(decode_input(job, png_bytes(5, 6), NO_LIMITS), Decoded)


def test_the_suffix_is_the_encoders(model: Path) -> None:
    meta = Engine(model, provider="cpu").meta
    assert [output_suffix(meta, o, OutputOptions()) for o in ("color", "label", "overlay", "json")] == [
        ".png", ".png", ".jpg", ".json"]
    assert output_suffix(meta, "overlay", OutputOptions(overlay_format="png")) == ".png"
