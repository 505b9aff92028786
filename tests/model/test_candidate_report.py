"""scripts/candidate_report.py end to end on tiny networks and a synthetic CamVid-shaped folder:
its figures against an independent scoring, its files against their hashes, and the verdict rules."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from model.cli import main as model_cli
from model.quantize import pick_images, quantize_artifact
from service.contract.artifact import INPUT_NAME, OUTPUT_NAME, read_meta, read_outputs
from tests.deploy.helpers import load_module
from tests.model.tiny import build_tiny

report_script = load_module("scripts/candidate_report.py")

H, W = 360, 480  # CamVid's tile: slide mode then runs each image as exactly one window
CLASSES = 11  # label 11 is CamVid's unlabelled id, ignored
VAL, LIMIT, RUNS = 3, 2, 3


def _checkpoint(path: Path, seed: int) -> torch.nn.Module:
    """A tiny network saved as model/train.py saves best.pt, selected on a holdout."""
    model = build_tiny(seed=seed)
    torch.save({"format": "pspnet-serving", "dataset": "camvid", "config": model.config.to_dict(),
                "state_dict": model.state_dict(),
                "train_config": {"epochs": 9, "holdout_fraction": 0.1, "val_images": None},
                "state": {"epoch": 7, "iteration": 70, "best_miou": 0.25, "history": []}}, path)
    return model


def _image(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour gradients plus noise: something like a photo for calibration."""
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 / W, y * 255 / H, (x + y) * 255 / (W + H)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("candidate")
    rng = np.random.default_rng(0)
    data = d / "camvid"
    for sub in ("train", "val", "valannot"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_image(rng)).save(data / "train" / f"t{i}.png")
    for i in range(VAL):
        Image.fromarray(_image(rng)).save(data / "val" / f"v{i}.png")
        labels = rng.integers(0, CLASSES + 1, (H, W), dtype=np.uint8)
        Image.fromarray(labels).save(data / "valannot" / f"v{i}.png")
    # the "shipped" pair: another tiny network, converted and quantised as the card's were
    _checkpoint(d / "old.pt", seed=5)
    shipped, shipped_int8 = d / "old.onnx", d / "old_int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        assert model_cli(["convert", "--format", "native", "--checkpoint", str(d / "old.pt"), "--dataset",
                          "camvid", "--output", str(shipped), "--name", "tiny-old"]) == 0
    quantize_artifact(shipped, shipped_int8, pick_images(data / "train", 3))
    checkpoint = d / "best.pt"
    _checkpoint(checkpoint, seed=0)
    out = d / "report"
    assert report_script.main(["--checkpoint", str(checkpoint), "--out", str(out), "--data", str(data),
                               "--runs", str(RUNS), "--limit", str(LIMIT), "--baseline", str(shipped),
                               "--baseline-int8", str(shipped_int8)]) == 0
    return {"data": data, "out": out, "checkpoint": checkpoint, "shipped": shipped,
            "shipped_int8": shipped_int8, "report": json.loads((out / "report.json").read_text()),
            "markdown": (out / "report.md").read_text()}


def _iou_percent(model: Path, data: Path) -> dict[str, float | None]:
    """Per-class IoU of the first LIMIT val images, scored here with plain numpy: one ORT run per
    image (a 360x480 image is one tile) and an intersection-over-union count per class."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inter, union = np.zeros(CLASSES), np.zeros(CLASSES)
    for img in sorted((data / "val").glob("*.png"))[:LIMIT]:
        rgb = np.asarray(Image.open(img).convert("RGB"), np.float32).transpose(2, 0, 1)[None]
        pred = session.run([OUTPUT_NAME], {INPUT_NAME: rgb})[0].argmax(axis=1)[0]
        truth = np.asarray(Image.open(data / "valannot" / img.name))
        valid = truth < CLASSES
        for c in range(CLASSES):
            inter[c] += np.sum((pred == c) & (truth == c) & valid)
            union[c] += np.sum(((pred == c) | (truth == c)) & valid)
    names = read_meta(model).classes
    return {n: (100 * i / u if u else None) for n, i, u in zip(names, inter, union, strict=True)}


def _close(got: dict[str, float | None], want: dict[str, float | None]) -> bool:
    return got.keys() == want.keys() and all(
        (g is None and w is None) or (g is not None and w is not None and abs(g - w) < 1e-9)
        for g, w in zip(got.values(), want.values(), strict=True))


def test_figures_match_an_independent_scoring(run: dict[str, Any]) -> None:
    r, out, data = run["report"], run["out"], run["data"]
    cases = [(r["candidate"]["float32"], out / "pspnet_camvid.onnx"),
             (r["candidate"]["int8"], out / "pspnet_camvid_int8.onnx"),
             (r["baseline"]["float32"], run["shipped"]), (r["baseline"]["int8"], run["shipped_int8"])]
    for figures, model in cases:
        want = _iou_percent(model, data)
        assert figures["images"] == LIMIT
        assert _close(figures["per_class_iou"], want), (model.name, figures["per_class_iou"], want)
        present = [v for v in want.values() if v is not None]
        assert figures["miou"] == pytest.approx(sum(present) / len(present), abs=1e-9)
    # the two networks differ, so a report that scored one model twice would fail above or here
    assert r["candidate"]["float32"]["per_class_iou"] != r["baseline"]["float32"]["per_class_iou"]
    for side in ("candidate", "baseline"):
        assert r[side]["int8_diff"] == pytest.approx(r[side]["int8"]["miou"] - r[side]["float32"]["miou"])


def test_artifacts_are_the_checkpoint_staged_under_the_shipped_names(run: dict[str, Any]) -> None:
    out, files = run["out"], run["report"]["files"]
    sha = hashlib.sha256(run["checkpoint"].read_bytes()).hexdigest()
    assert hashlib.sha256((out / "pspnet_camvid.pt").read_bytes()).hexdigest() == sha
    meta = read_meta(out / "pspnet_camvid.onnx")
    assert meta.source["checkpoint_sha256"] == sha  # exported from this checkpoint, not another
    assert meta.name == "tiny-old"  # the shipped artifact's name by default: a drop-in
    assert meta.source["checkpoint"] == "pspnet_camvid.pt"  # converted from the staged copy, as the card does
    assert read_outputs(out / "pspnet_camvid.onnx").has_labels
    assert read_outputs(out / "pspnet_camvid_int8.onnx").has_labels
    staged = {"candidate_checkpoint": out / "pspnet_camvid.pt",
              "candidate_float32": out / "pspnet_camvid.onnx",
              "candidate_int8": out / "pspnet_camvid_int8.onnx", "shipped_float32": run["shipped"],
              "shipped_int8": run["shipped_int8"]}
    for key, path in staged.items():
        blob = path.read_bytes()
        assert files[key]["bytes"] == len(blob), key
        assert files[key]["sha256"] == hashlib.sha256(blob).hexdigest(), key
    ck = run["report"]["checkpoint"]
    assert (ck["epoch"], ck["epochs"], ck["selected_on"]) == (7, 9, "holdout")


def test_latency_is_interleaved_and_the_ratio_is_of_medians(run: dict[str, Any]) -> None:
    lat = run["report"]["latency"]
    assert set(lat["models"]) == {"shipped_float32", "candidate_float32", "shipped_int8", "candidate_int8"}
    for m in lat["models"].values():
        assert m["runs"] == len(m["runs_ms"]) == RUNS
        assert m["median_ms"] == pytest.approx(float(np.median(m["runs_ms"])), abs=1e-3)
    ratio = lat["models"]["candidate_float32"]["median_ms"] / lat["models"]["shipped_float32"]["median_ms"]
    assert lat["float32_ratio"] == pytest.approx(ratio)
    assert run["report"]["verdict"]["criteria"]["latency_ratio"]["value"] == pytest.approx(ratio)
    assert lat["tile"] == [H, W]


def test_a_limited_run_says_so_and_judges_nothing(run: dict[str, Any]) -> None:
    r, md = run["report"], run["markdown"]
    assert r["limit"] == LIMIT and r["val_images_total"] == VAL
    assert r["verdict"]["overall"].startswith("NOT A VERDICT")
    assert "SMOKE TEST ONLY" in md.splitlines()[2]  # right under the title
    # the table carries this run's figures
    pole_old = r["baseline"]["float32"]["per_class_iou"]["pole"]
    pole_new = r["candidate"]["float32"]["per_class_iou"]["pole"]
    assert f"| pole | {pole_old:.2f} | {pole_new:.2f} | {pole_new - pole_old:+.2f} |" in md
    assert not r["card_checks"]  # a partial val is never held against the card's full-val figures
    assert any(c.startswith("pspnet-serve evaluate") and "--limit 2" in c for c in r["commands"])


@pytest.mark.parametrize(("miou", "ratio", "int8", "limit", "overall", "passes"), [
    (67.0, 1.5, -0.5, None, "MEETS", [True, True, True]),  # every bound is inclusive
    (66.99, 1.0, 0.0, None, "FAILS", [False, True, True]),
    (70.0, 1.51, 0.0, None, "FAILS", [True, False, True]),
    (70.0, 1.0, -0.51, None, "FAILS", [True, True, False]),
    (70.0, 1.0, 0.6, None, "FAILS", [True, True, False]),  # "within": either direction
    (70.0, 1.0, None, None, "INCOMPLETE", [True, True, None]),  # --skip-int8
    (60.0, 1.0, None, None, "FAILS", [False, True, None]),  # a failure outweighs a gap
    (70.0, 1.0, 0.0, 5, "NOT A VERDICT", [True, True, True]),  # --limit: never a verdict
])
def test_verdict_rules(miou: float, ratio: float, int8: float | None, limit: int | None, overall: str,
                       passes: list[bool | None]) -> None:
    v = report_script.verdict(miou, ratio, int8, limit)
    assert v["overall"].startswith(overall)
    assert [c["pass"] for c in v["criteria"].values()] == passes


def test_card_check_compares_confusion_matrices(tmp_path: Path) -> None:
    card = tmp_path / "val_single_scale.json"
    card.write_text(json.dumps({"miou": 0.5, "images": 101, "confusion_matrix": [[3, 1], [0, 2]]}))
    same = report_script.card_check({"confusion_matrix": [[3, 1], [0, 2]]}, card)
    other = report_script.card_check({"confusion_matrix": [[3, 0], [1, 2]]}, card)
    assert (same["same_confusion_matrix"], other["same_confusion_matrix"]) == (True, False)
    assert same["card_miou"] == 50.0
    assert report_script.card_check({}, tmp_path / "absent.json")["same_confusion_matrix"] is None
