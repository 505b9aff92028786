"""The engine feeds a described graph what its description says and hands the chain its logits.

The graphs of tests/service/described_graphs.py return what they were fed, so each conversion
(normalisation, colour order, layout, dtype, stride, labels, a fixed batch of 1) is seen exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.engine.adapt import resize_bilinear
from service.engine.sessions import Engine
from tests.bounds import within
from tests.service.described_graphs import build_graph, description, write

MEAN = np.array([10.0, 20.0, 30.0], np.float32).reshape(1, 3, 1, 1)
STD = np.array([2.0, 4.0, 8.0], np.float32).reshape(1, 3, 1, 1)


def _tiles(n: int = 3, tile: tuple[int, int] = (16, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, *tile)).astype(np.float32)


def _engine(tmp_path: Path, *, graph: dict[str, object], desc: dict[str, object]) -> Engine:
    path = build_graph(tmp_path / "m.onnx", **graph)  # type: ignore[arg-type]
    return Engine(write(path, desc), provider="cpu", max_batch=4)


def test_normalisation_colour_and_layout_are_applied(tmp_path: Path) -> None:
    tiles = _tiles()
    normalised = (tiles - MEAN) / STD
    plain = _engine(tmp_path, graph={}, desc=description())
    assert plain.outputs == ("logits",)
    np.testing.assert_array_equal(plain.run(tiles), normalised)
    bgr = _engine(tmp_path, graph={"layout": "NHWC"}, desc=description(layout="NHWC", colour="BGR"))
    np.testing.assert_array_equal(bgr.run(tiles), normalised[:, ::-1])
    raw = _engine(tmp_path, graph={}, desc=description(normalised_in_graph=True))
    np.testing.assert_array_equal(raw.run(tiles), tiles)


def test_float16_and_uint8_inputs(tmp_path: Path) -> None:
    tiles = _tiles()
    half = _engine(tmp_path, graph={"dtype": "float16"}, desc=description(dtype="float16"))
    np.testing.assert_array_equal(
        half.run(tiles), ((tiles - MEAN) / STD).astype(np.float16).astype(np.float32)
    )
    u8 = _engine(
        tmp_path, graph={"dtype": "uint8"}, desc=description(dtype="uint8", normalised_in_graph=True)
    )
    np.testing.assert_array_equal(u8.run(tiles), np.rint(tiles))


@pytest.mark.parametrize("align_corners", [False, True])
def test_strided_logits_are_resized_to_the_tile_as_torch_does(tmp_path: Path, align_corners: bool) -> None:
    tiles = _tiles()
    engine = _engine(
        tmp_path,
        graph={"kind": "strided_logits"},
        desc=description(kind="strided_logits", align_corners=align_corners),
    )
    pooled = F.avg_pool2d(torch.from_numpy((tiles - MEAN) / STD), 2)
    want = F.interpolate(pooled, size=(16, 24), mode="bilinear", align_corners=align_corners).numpy()
    # measured 1.53e-5 both ways: 2 ulps at values up to 122 (ORT's pooling and our float32 resize
    # against torch's)
    within(
        f"strided logits vs torch, align_corners={align_corners}",
        np.abs(engine.run(tiles) - want).max(),
        2e-5,
    )


def test_labels_only_graph_offers_labels(tmp_path: Path) -> None:
    tiles = _tiles()
    engine = _engine(tmp_path, graph={"kind": "labels"}, desc=description(kind="labels"))
    assert engine.outputs == ("labels",)
    labels = engine.run_outputs(tiles, ("labels",))["labels"]
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, ((tiles - MEAN) / STD).argmax(axis=1))
    with pytest.raises(ValueError, match="no output 'logits'"):
        engine.run(tiles)


def test_a_fixed_batch_of_one_runs_tile_by_tile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiles = _tiles(4)
    with caplog.at_level(logging.INFO, logger="service.engine"):
        engine = _engine(tmp_path, graph={"batch": 1}, desc=description(batch=1))
    assert any("fixed batch of 1: its tiles run one at a time" in r.getMessage() for r in caplog.records)
    calls = []
    session = engine._sessions[0].session
    real = session.run

    def counting(names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(next(iter(feed.values())).shape[0])
        return list(real(names, feed))

    engine._sessions[0].session = type("S", (), {"run": staticmethod(counting)})()
    np.testing.assert_array_equal(engine.run(tiles), (tiles - MEAN) / STD)
    assert calls == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((16, 16), (64, 64)),
        ((8, 8), (64, 64)),
        ((23, 17), (90, 67)),
        ((90, 120), (360, 480)),
        ((7, 9), (7, 9)),
    ],
)
def test_resize_bilinear_is_torchs_interpolate(src: tuple[int, int], dst: tuple[int, int]) -> None:
    """Against ``F.interpolate(mode="bilinear")`` both ways, and OpenCV's INTER_LINEAR, which equals
    ``align_corners=False`` (OpenCV's float path computes the same taps). Measured on this host
    (values ~N(0, 1)): 4.8e-7 for torch at the integer ratios, 3.5e-6 at 23x17 -> 90x67 (the
    source coordinates rounded in another order): bound 4e-6; OpenCV 2.4e-7, 9.1e-6 at
    23x17 -> 90x67: bound 1e-5. Both far below the ONNX Runtime vs torch noise of a model's logits."""
    x = np.random.default_rng(1).normal(size=(2, 5, *src)).astype(np.float32)
    for align_corners in (False, True):
        want = F.interpolate(
            torch.from_numpy(x), size=dst, mode="bilinear", align_corners=align_corners
        ).numpy()
        within(
            f"resize {src}->{dst} align_corners={align_corners} vs torch",
            np.abs(resize_bilinear(x, dst, align_corners) - want).max(),
            4e-6,
        )
    cv = np.stack(
        [
            cv2.resize(t.transpose(1, 2, 0), dst[::-1], interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            for t in x
        ]
    )
    within(
        f"resize {src}->{dst} vs OpenCV INTER_LINEAR", np.abs(resize_bilinear(x, dst, False) - cv).max(), 1e-5
    )
