"""Evaluation: metrics against a hand-computed confusion matrix; the CLI end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.codec.decode import NO_LIMITS
from service.contract.scoring import confusion_matrix, scores
from service.engine.sessions import Engine
from service.offline.inputs import read_image
from service.pipeline.chain import Chain
from service.pipeline.params import resolve
from service.pipeline.runner import EngineRunner
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact


def test_scores_match_a_hand_computed_confusion_matrix() -> None:
    label = np.array([[0, 0, 1, 1],
                      [2, 2, 2, 9]])  # 9: not a class, ignored
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 0]])
    cm = confusion_matrix(pred, label, 3)
    # rows = truth, columns = prediction, counted by hand
    assert cm.tolist() == [[1, 1, 0],
                           [0, 2, 0],
                           [1, 0, 2]]
    s = scores(cm)
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+1+1); class 1: 2/(2+1+0); class 2: 2/(2+0+1)
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert s["miou"] == pytest.approx(5 / 9)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["pixels"] == 7


def test_absent_class_is_left_out_of_the_mean() -> None:
    s = scores(confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3))
    assert math.isnan(s["iou"][2]) and s["miou"] == 1.0


def test_evaluate_cli_writes_table_json_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx", tile=(32, 48), num_classes=5)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        (images / f"im{i}.png").write_bytes(png_bytes(40, 60, seed=i))
        Image.fromarray(rng.integers(0, 6, (40, 60), dtype=np.uint8)).save(labels / f"im{i}.png")
    out_json, out_png = tmp_path / "eval.json", tmp_path / "iou.png"
    code = main(["evaluate", "--model", str(model), "--images", str(images), "--labels", str(labels),
                 "--mode", "slide", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    result = json.loads(out_json.read_text())
    # the same predictions, scored independently with a plain loop
    engine = Engine(model, provider="cpu", max_batch=4)
    params = resolve(engine.meta.protocol, mode="slide", flip=None, scales=None, max_scales=8)
    hits = np.zeros(5)
    unions = np.zeros(5)
    for i in range(3):
        pred = Chain(engine.meta, NO_LIMITS).labels_now(read_image(images / f"im{i}.png").rgb, params,
                                                        runner=EngineRunner(engine, 4))[0]
        truth = np.asarray(Image.open(labels / f"im{i}.png"))
        valid = truth < 5
        for c in range(5):
            hits[c] += np.sum((pred == c) & (truth == c) & valid)
            unions[c] += np.sum(((pred == c) | (truth == c)) & valid)
    expected = [h / u if u else float("nan") for h, u in zip(hits, unions, strict=True)]
    got = list(result["per_class_iou"].values())
    assert np.allclose(got, expected, equal_nan=True)
    assert result["miou"] == pytest.approx(np.nanmean(expected))
    assert Image.open(out_png).format == "PNG"
    assert "mIoU" in capsys.readouterr().out
