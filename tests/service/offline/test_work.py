"""service.offline.work: the chain over the tile pool, image after image; results as the chain's, per image.

The pool itself: test_pool.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.codec.decode import NO_LIMITS, decode
from service.codec.outputs import OutputOptions, encode_output
from service.engine.sessions import Engine
from service.offline.work import BulkConfig, Decoded, Job, Segmenter, decode_input, output_suffix
from service.pipeline.chain import Chain
from service.pipeline.params import InferenceParams, resolve
from service.pipeline.runner import EngineRunner
from service.protocol import peak_bytes
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact


def decoded(sizes: list[tuple[int, int]], config: BulkConfig) -> Iterator[Decoded]:
    for i, (h, w) in enumerate(sizes):
        job = Job(f"in/{i}.png", f"in/{i}.png", f"{i}.png")
        yield decode_input(job, png_bytes(h, w, seed=i), config.limits)


def assert_each_as_alone(config: BulkConfig, engine: Engine, sizes: list[tuple[int, int]],
                         params: InferenceParams, output: str, *, max_batch: int) -> None:
    """Each image's written result is what the chain makes of it alone (``max_batch`` tiles a run)."""
    chain = Chain(engine.meta, NO_LIMITS)
    for i, (h, w) in enumerate(sizes):
        rgb = decode(png_bytes(h, w, seed=i), None, NO_LIMITS).rgb
        alone, _ = chain.labels_now(rgb, params, runner=EngineRunner(engine, max_batch))
        assert (config.out / f"{i}.png").read_bytes() == encode_output(output, engine.meta, rgb, alone,
                                                                       OutputOptions()).body


def count_batches(engine: Engine, fail: Sequence[int] = ()) -> dict[str, list[int]]:
    """The size of each batch the engine runs, per output, from now on; the calls in ``fail`` raise."""
    batches: dict[str, list[int]] = {}
    real = engine.run_outputs
    calls = 0

    def run_outputs(tiles: np.ndarray, names: Sequence[str], **kwargs: Any) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls in fail:
            raise RuntimeError("device lost")
        batches.setdefault(names[0], []).append(len(tiles))
        return real(tiles, names, **kwargs)

    engine.run_outputs = run_outputs  # type: ignore[method-assign]
    return batches


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
    batches = count_batches(engine)
    records = list(segmenter.records(decoded(sizes, config)))
    assert sorted(r.input for r in records) == [f"in/{i}.png" for i in range(len(sizes))]
    assert all(r.status == "ok" for r in records)
    # tiles of successive images shared batches: every batch of an output full but its last
    assert all(n == 3 for batch in batches.values() for n in batch[:-1])
    assert_each_as_alone(config, engine, sizes, params, "color", max_batch=3)


def test_an_image_that_cannot_be_planned_fails_alone(tmp_path: Path, model: Path) -> None:
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode="slide", flip=None, scales="0.1", max_scales=8)
    config = BulkConfig(model=model, params=params, output="label", options=OutputOptions(),
                        out=tmp_path / "out", max_pixels=10**6)
    segmenter = Segmenter(config, engine)
    thin = decode_input(Job("thin", "thin", "thin.png"), png_bytes(1, 400), config.limits)
    wide = decode_input(Job("wide", "wide", "wide.png"), png_bytes(300, 400), config.limits)
    records = list(segmenter.records([thin, wide]))
    assert [(r.input, r.status) for r in records] == [("thin", "error"), ("wide", "ok")]
    assert "cannot segment a 400x1 image" in (records[0].error or "")


def test_a_failing_batch_fails_its_images_and_the_rest_go_on(tmp_path: Path, model: Path) -> None:
    engine = Engine(model, provider="cpu", max_batch=2)
    params = resolve(engine.meta.protocol, mode="whole", flip=None, scales=None, max_scales=8)
    config = BulkConfig(model=model, params=params, output="label", options=OutputOptions(),
                        out=tmp_path / "out", max_pixels=10**6, max_batch=2)
    count_batches(engine, fail=[2])
    # one tile each: batches [0, 1], [2, 3] (fails), [4]
    records = list(Segmenter(config, engine).records(decoded([(30, 40)] * 5, config)))
    assert [(r.input, r.status, r.error) for r in records] == [
        ("in/0.png", "ok", None), ("in/1.png", "ok", None),
        ("in/2.png", "error", "inference failed: device lost"),
        ("in/3.png", "error", "inference failed: device lost"), ("in/4.png", "ok", None)]
    assert all(r.seconds is not None and r.seconds > 0 for r in records)
    assert records[2].output is None and (records[2].width, records[2].height) == (40, 30)
    assert sorted(p.name for p in config.out.iterdir()) == ["0.png", "1.png", "4.png"]


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


def test_streamed_images_finish_and_equal_the_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one window a submission, an image queues its next window only after its last one ran,
    after the pool's final flush too: the driver flushes until every image is written."""
    monkeypatch.setattr(peak_bytes, "STREAM_BYTES", 1)
    model = build_tiny_artifact(tmp_path / "m.onnx", tile=(32, 48), num_classes=5)
    engine = Engine(model, provider="cpu", max_batch=4)
    params = resolve(engine.meta.protocol, mode="multiscale", flip=True, scales="0.75,1.5", max_scales=8)
    config = BulkConfig(model=model, params=params, output="label", options=OutputOptions(),
                        out=tmp_path / "out", max_pixels=10**6, max_batch=4)
    sizes = [(50, 70), (30, 40), (90, 60)]
    records = list(Segmenter(config, engine).records(decoded(sizes, config)))
    assert sorted(r.status for r in records) == ["ok"] * len(sizes)
    assert_each_as_alone(config, engine, sizes, params, "label", max_batch=4)
