"""Training: a few steps on a tiny synthetic set make the loss fall; resume continues exactly;
the holdout split, class weightings, OHEM and the scale range do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model.train as train_module
from model.augment import AugmentConfig, augment
from model.cli import main
from model.train import TrainConfig, class_weights, ohem_cross_entropy, poly_lr, split_holdout, train
from tests.model.tiny import TINY_MODEL


def _synthetic_folder(root: Path, n: int = 8, h: int = 48, w: int = 64,
                      names: list[str] | None = None) -> tuple[Path, Path]:
    """Three classes that colour alone separates: sky-ish top, a red box, grey elsewhere; 7 = ignore."""
    images, labels = root / "img", root / "lab"
    images.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(0)
    names = names or [f"{i:03d}" for i in range(n)]
    for name in names:
        lab = np.zeros((h, w), np.uint8)
        lab[: h // 3] = 1
        y, x = rng.integers(h // 3, h - 12), rng.integers(0, w - 16)
        lab[y:y + 12, x:x + 16] = 2
        lab[-2:, :] = 7  # unlabelled rows: ids >= num_classes are ignored
        colours = np.array([[120, 120, 120], [90, 160, 230], [220, 30, 30]], np.float64)
        img = colours[np.minimum(lab, 2)] + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(images / f"{name}.png")
        Image.fromarray(lab).save(labels / f"{name}.png")
    return images, labels


def _config(tmp: Path, images: Path, labels: Path, out: str, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        train_images=str(images), train_labels=str(labels), val_images=str(images), val_labels=str(labels),
        out=str(tmp / out), dataset="synthetic", model=dict(TINY_MODEL), epochs=6, batch_size=4,
        crop=(40, 40), lr=0.05, val_every=3, checkpoint_every=1000, seed=0, threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _synthetic_folder(tmp_path_factory.mktemp("synthetic"))


def test_a_few_steps_make_the_loss_fall(tmp_path: Path, data: tuple[Path, Path]) -> None:
    best = train(_config(tmp_path, *data, "run"), num_classes=3)
    ck = torch.load(best, weights_only=False)
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["state"]["history"]
    losses = [h["loss"] for h in history]
    # measured: 1.5 -> about 0.5 over 6 epochs of 2 steps; a broken step barely moves it
    assert losses[-1] < 0.7 * losses[0], losses
    assert ck["format"] == "pspnet-serving" and ck["config"]["num_classes"] == 3
    assert "optimizer" not in ck, "the shipped best.pt holds weights only"
    assert any("val_miou" in h for h in history)


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path, data: tuple[Path, Path]) -> None:
    straight = train(_config(tmp_path, *data, "straight", epochs=2, val_every=100), num_classes=3)
    # the same run, interrupted mid-epoch and resumed from last.pt
    cfg = _config(tmp_path, *data, "resumed", epochs=2, val_every=100, stop_after=3)
    train(cfg, num_classes=3)
    mid = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert mid["state"]["iteration"] == 3 and mid["state"]["epoch"] == 1
    cfg.stop_after = None
    train(cfg, num_classes=3)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert a["state"]["iteration"] == b["state"]["iteration"] == 4
    assert straight.exists()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_poly_schedule_and_warmup() -> None:
    cfg = TrainConfig(train_images="", train_labels="", val_images=None, val_labels=None, out="", dataset="",
                      lr=0.1, power=0.9, warmup_iters=10)
    assert poly_lr(cfg, 0, 100) == pytest.approx(0.1 / 10)
    assert poly_lr(cfg, 50, 100) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert poly_lr(cfg, 99, 100) == pytest.approx(0.1 * 0.01 ** 0.9)


def test_sqrt_median_class_weights() -> None:
    labels = [np.array([[0, 0, 0, 0], [0, 0, 1, 1], [2, 255, 255, 255]], np.uint8)]
    w = class_weights(labels, 3, "sqrt-median").numpy()
    # frequencies 6/9, 2/9, 1/9; median 2/9
    assert w == pytest.approx(np.sqrt([2 / 6, 1.0, 2.0]), rel=1e-6)
    assert class_weights(labels, 3, "none") is None


# two "sequences" of six frames, named as CamVid names them
SEQUENCE_NAMES = [f"{seq}_{frame:05d}" for seq in ("0001TP", "0006R0") for frame in range(30, 210, 30)]


def test_holdout_takes_the_last_block_of_every_sequence() -> None:
    names = ["B_003", "A_001", "C_001", "A_003", "B_001", "A_002", "B_002", "A_004", "C_002", "A_005"]
    train_idx, held = split_holdout(names, 0.4)
    # A: 5 frames -> last 2; B: 3 -> round(1.2) = 1; C: 2 -> round(0.8) = 1 (the last one)
    assert sorted(names[i] for i in held) == ["A_004", "A_005", "B_003", "C_002"]
    assert sorted(train_idx + held) == list(range(len(names)))
    assert split_holdout(names, 0.4) == (train_idx, held)  # deterministic
    # at least one frame of every sequence, however small the fraction
    assert sorted(names[i] for i in split_holdout(names, 0.01)[1]) == ["A_005", "B_003", "C_002"]
    # whole sequences, alone or with a fraction of the others
    assert sorted(names[i] for i in split_holdout(names, 0.0, ["B"])[1]) == ["B_001", "B_002", "B_003"]
    assert sorted(names[i] for i in split_holdout(names, 0.4, ["C"])[1]) == [
        "A_004", "A_005", "B_003", "C_001", "C_002"]
    assert split_holdout(names, 0.0)[1] == []
    with pytest.raises(ValueError, match="sequence"):
        split_holdout(names, 0.1, ["Seq05VD"])
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(names, 1.0)
    with pytest.raises(ValueError, match="no training images"):
        split_holdout(names, 0.0, ["A", "B", "C"])


def test_holdout_selects_instead_of_val_and_is_recorded(tmp_path: Path) -> None:
    images, labels = _synthetic_folder(tmp_path / "d", names=SEQUENCE_NAMES)
    cfg = _config(tmp_path, images, labels, "run", val_images=None, val_labels=None, epochs=2, val_every=1,
                  holdout_fraction=0.34, batch_size=2)
    train(cfg, num_classes=3)
    record = json.loads((tmp_path / "run" / "holdout.json").read_text())
    assert record["files"] == ["0001TP_00150", "0001TP_00180", "0006R0_00150", "0006R0_00180"]
    assert record["frames_by_sequence"] == {"0001TP": 2, "0006R0": 2}
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    # 8 of the 12 frames train: 4 steps of 2 per epoch
    assert last["state"]["iteration"] == 8
    history = last["state"]["history"]
    assert all("holdout_miou" in h and "val_miou" not in h for h in history)
    assert len(history[-1]["holdout_iou"]) == 3
    # resuming with another holdout would select on other images: refused
    cfg.holdout_fraction = 0.5
    with pytest.raises(ValueError, match="other frames"):
        train(cfg, num_classes=3)
    # and a holdout with val folders is refused: val must stay unread
    with pytest.raises(ValueError, match="give no val"):
        train(_config(tmp_path, images, labels, "both", holdout_fraction=0.34), num_classes=3)


def test_cli_holdout_never_reads_val(tmp_path: Path) -> None:
    """``--data`` with a holdout: train/ is split and val/ is left alone (here it would not even load)."""
    images, labels = _synthetic_folder(tmp_path / "src", names=SEQUENCE_NAMES)
    data = tmp_path / "camvid"
    data.mkdir()
    images.rename(data / "train")
    labels.rename(data / "trainannot")
    (data / "val").mkdir()
    (data / "valannot").mkdir()
    (data / "val" / "0016E5_07959.png").write_bytes(b"not a png")
    (data / "valannot" / "0016E5_07959.png").write_bytes(b"not a png")
    tiny = ["--depth", "18", "--base-width", "8", "--stem", "8", "8", "16", "--head-channels", "16",
            "--aux-channels", "8"]
    args = ["train", "--data", str(data), "--dataset", "camvid", "--out", str(tmp_path / "run"), *tiny,
            "--epochs", "1", "--batch-size", "4", "--crop", "40", "40", "--threads", "1",
            "--holdout-sequences", "0006R0", "--class-weighting", "enet", "--ohem", "0.7",
            "--ohem-min-kept", "100", "--scale-range", "0.75", "1.25"]
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "holdout.json").read_text())
    assert record["frames_by_sequence"] == {"0006R0": 6} and record["sequences"] == ["0006R0"]
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    tc = ck["train_config"]
    assert tc["val_images"] is None and tc["class_weighting"] == "enet"
    assert tc["ohem_thresh"] == 0.7 and tc["ohem_min_kept"] == 100 and tuple(tc["scale"]) == (0.75, 1.25)
    assert "holdout_miou" in ck["state"]["history"][-1]
    # a holdout with explicit val folders is an error, not a silent choice
    assert main([*args, "--val-images", str(data / "val"), "--val-labels", str(data / "valannot")]) == 2


def test_median_frequency_and_enet_class_weights() -> None:
    # image 1: classes 0 (6 px) and 1 (2 px); image 2: classes 0 (2 px) and 2 (2 px); 255 ignored
    labels = [np.array([[0, 0, 0, 0], [0, 0, 1, 1], [255, 255, 255, 255]], np.uint8),
              np.array([[0, 0, 2, 2]], np.uint8)]
    # SegNet: f(c) = pixels of c / pixels of the images containing c
    f = np.array([8 / 12, 2 / 8, 2 / 4])
    w = class_weights(labels, 4, "median-freq").numpy()
    assert w[:3] == pytest.approx(np.median(f) / f, rel=1e-6)
    assert w[3] == 0.0, "a class absent from train is never a target"
    # ENet: p(c) over all 12 labelled pixels
    p = np.array([8, 2, 2]) / 12
    w = class_weights(labels, 3, "enet").numpy()
    assert w == pytest.approx(1 / np.log(1.02 + p), rel=1e-6)
    # rarer class, larger weight, bounded by 1/ln(1.02)
    assert w[0] < w[1] == w[2] < 1 / np.log(1.02)
    with pytest.raises(ValueError, match="unknown"):
        class_weights(labels, 3, "inverse")


def test_ohem_keeps_the_hard_pixels() -> None:
    # one image, 1x4 pixels, 2 classes; true-class probabilities 0.9, 0.6, 0.3 and an ignored pixel
    p_true = torch.tensor([0.9, 0.6, 0.3, 0.5])
    logit1 = torch.log(p_true / (1 - p_true))  # softmax([0, l]) gives class 1 probability p
    logits = torch.stack([torch.zeros(4), logit1]).view(1, 2, 1, 4)
    target = torch.tensor([[[1, 1, 1, 255]]])
    nll = -torch.log(p_true[:3])
    # threshold 0.7: pixels 2 and 3 (0.6, 0.3); the easy one and the ignored one are out
    loss = ohem_cross_entropy(logits, target, None, 255, 0.7, 0)
    assert loss.item() == pytest.approx(nll[1:].mean().item(), rel=1e-5)
    # too few hard pixels: the min_kept least probable are kept instead
    loss = ohem_cross_entropy(logits, target, None, 255, 0.5, 2)
    assert loss.item() == pytest.approx(nll[1:].mean().item(), rel=1e-5)
    # min_kept beyond the labelled pixels keeps them all: plain cross-entropy
    loss = ohem_cross_entropy(logits, target, None, 255, 0.1, 10)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-5)
    # weighted: like F.cross_entropy's weighted mean over the kept pixels
    target2 = torch.tensor([[[0, 1, 1, 0]]])
    weight = torch.tensor([2.0, 0.5])
    full = ohem_cross_entropy(logits, target2, weight, 255, 1.01, 0)
    assert full.item() == pytest.approx(F.cross_entropy(logits, target2, weight=weight).item(), rel=1e-5)
    # the gradient flows through the kept pixels only
    x = logits.clone().requires_grad_(True)
    ohem_cross_entropy(x, target, None, 255, 0.7, 0).backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[0, :, 0, 0]) == 0 and torch.count_nonzero(x.grad[0, :, 0, 2]) == 2


def test_scale_range_reaches_the_augmentation(tmp_path: Path, data: tuple[Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.full((48, 64, 3), 100, np.uint8)
    lab = np.zeros((48, 64), np.uint8)
    rng = np.random.default_rng(0)
    # scale 0.5 makes 24x32: the 40x40 crop needs padding, which carries the ignore label
    _, small = augment(img, lab, rng, AugmentConfig(crop=(40, 40), scale=(0.5, 0.5), rotate_p=0.0))
    assert (small == 255).sum() == 40 * 40 - 24 * 32
    _, same = augment(img, lab, rng, AugmentConfig(crop=(40, 40), scale=(1.0, 1.0), rotate_p=0.0))
    assert (same == 255).sum() == 0
    seen: list[AugmentConfig] = []

    def spy(image: np.ndarray, label: np.ndarray, r: np.random.Generator, cfg: AugmentConfig
            ) -> tuple[np.ndarray, np.ndarray]:
        seen.append(cfg)
        return augment(image, label, r, cfg)

    monkeypatch.setattr(train_module, "augment", spy)
    train(_config(tmp_path, *data, "run", epochs=1, val_every=100, scale=(0.8, 1.1)), num_classes=3)
    assert seen and all(c.scale == (0.8, 1.1) for c in seen)
