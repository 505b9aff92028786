"""Training with the paper's recipe: SGD, poly LR, auxiliary loss, augmentation.

Resumable: ``last.pt`` in the output folder is written after every epoch (and
every ``checkpoint_every`` iterations) and picked up on the next start;
``best.pt`` keeps the weights with the best validation mIoU.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.augment import AugmentConfig, augment
from model.folder import load_pair, paired_files
from model.pspnet import PSPNet, PSPNetConfig
from service.scoring import confusion_matrix, scores

log = logging.getLogger("pspnet.train")
IGNORE = 255


@dataclass
class TrainConfig:
    train_images: str
    train_labels: str
    val_images: str | None
    val_labels: str | None
    out: str
    dataset: str
    model: dict[str, object] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 8
    crop: tuple[int, int] = (288, 288)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    aux_weight: float = 0.4
    class_weighting: str = "none"  # none | sqrt-median
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    val_every: int = 5
    checkpoint_every: int = 50
    stop_after: int | None = None  # iterations in this run, then checkpoint and return (resume later)
    seed: int = 0
    threads: int = 0
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)


def poly_lr(cfg: TrainConfig, it: int, total: int) -> float:
    lr = cfg.lr * (1 - it / total) ** cfg.power
    if it < cfg.warmup_iters:
        lr *= (it + 1) / cfg.warmup_iters
    return lr


def class_weights(labels: Sequence[np.ndarray], num_classes: int, mode: str) -> torch.Tensor | None:
    """``sqrt-median``: square root of median-frequency balancing (milder than
    the full inverse, which overweights classes of a few hundred pixels)."""
    if mode == "none":
        return None
    if mode != "sqrt-median":
        raise ValueError(f"unknown class weighting {mode!r}")
    counts = np.zeros(num_classes, np.float64)
    for lab in labels:
        counts += np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)[:num_classes]
    freq = counts / counts.sum()
    w = np.sqrt(np.median(freq[freq > 0]) / np.maximum(freq, 1e-12))
    return torch.tensor(w, dtype=torch.float32)


def normalise(batch_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 -> NCHW float, mean/std normalised (the same as the exported graph)."""
    x = batch_uint8.permute(0, 3, 1, 2).float()
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@torch.no_grad()
def validate(model: PSPNet, pairs: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
             mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> dict[str, object]:
    """Whole-image single-scale validation in float32 (no flip)."""
    model.eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    for img, lab in tqdm(pairs, desc="val", leave=False, dynamic_ncols=True):
        x = normalise(torch.from_numpy(img)[None].to(device), mean, std)
        pred = model(x)["out"].argmax(1)[0].cpu().numpy()
        cm += confusion_matrix(pred, lab, num_classes)
    model.train()
    return scores(cm)


def _rng_state() -> dict[str, object]:
    return {"torch": torch.get_rng_state()}


def train(cfg: TrainConfig, num_classes: int) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mean = torch.tensor(cfg.mean, device=device)
    std = torch.tensor(cfg.std, device=device)

    train_pairs = [load_pair(i, lab, num_classes, IGNORE)
                   for i, lab in paired_files(Path(cfg.train_images), Path(cfg.train_labels))]
    val_pairs = []
    if cfg.val_images and cfg.val_labels:
        val_pairs = [load_pair(i, lab, num_classes, IGNORE)
                     for i, lab in paired_files(Path(cfg.val_images), Path(cfg.val_labels))]
    log.info("data: %d train, %d val images", len(train_pairs), len(val_pairs))

    model = PSPNet(PSPNetConfig(num_classes=num_classes, **cfg.model)).to(device)  # type: ignore[arg-type]
    model.train()
    weights = class_weights([lab for _, lab in train_pairs], num_classes, cfg.class_weighting)
    if weights is not None:
        log.info("class weights: %s", np.round(weights.numpy(), 3).tolist())
        weights = weights.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    iters_per_epoch = len(train_pairs) // cfg.batch_size
    total = iters_per_epoch * cfg.epochs
    aug = AugmentConfig(crop=cfg.crop, ignore_index=IGNORE, mean=cfg.mean)

    state = {"epoch": 0, "iteration": 0, "best_miou": -1.0, "history": []}
    last = out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        state = ck["state"]
        log.info("resumed from %s at epoch %d iteration %d", last, state["epoch"], state["iteration"])

    def save(path: Path, *, full: bool) -> None:
        ck: dict[str, object] = {
            "format": "pspnet-serving", "dataset": cfg.dataset, "config": model.config.to_dict(),
            "state_dict": model.state_dict(), "train_config": asdict(cfg), "state": state,
        }
        if full:
            ck["optimizer"] = opt.state_dict()
            ck["rng"] = _rng_state()
        tmp = path.with_suffix(".tmp")
        torch.save(ck, tmp)
        tmp.replace(path)  # atomic: a killed run never leaves a torn checkpoint

    autocast = cfg.precision == "bf16"
    start = time.time()
    ran = 0
    while state["epoch"] < cfg.epochs:
        epoch = int(state["epoch"])  # type: ignore[call-overload]
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train_pairs))
        done_in_epoch = int(state["iteration"]) - epoch * iters_per_epoch  # type: ignore[call-overload]
        bar = tqdm(range(done_in_epoch, iters_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   dynamic_ncols=True, mininterval=5)
        losses = []
        for b in bar:
            # per-iteration generator: a resumed run draws the same augmentations
            brng = np.random.default_rng([cfg.seed, epoch, b])
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            samples = [augment(*train_pairs[i], brng, aug) for i in idx]
            x = normalise(torch.from_numpy(np.stack([s[0] for s in samples])).to(device), mean, std)
            y = torch.from_numpy(np.stack([s[1] for s in samples])).long().to(device)
            it = int(state["iteration"])  # type: ignore[call-overload]
            lr = poly_lr(cfg, it, total)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                outs = model(x)
            loss = F.cross_entropy(outs["out"].float(), y, weight=weights, ignore_index=IGNORE)
            if "aux" in outs:
                loss = loss + cfg.aux_weight * F.cross_entropy(outs["aux"].float(), y, weight=weights,
                                                               ignore_index=IGNORE)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            state["iteration"] = it + 1
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.4f}")
            ran += 1
            if cfg.stop_after is not None and ran >= cfg.stop_after:
                save(last, full=True)
                bar.close()
                log.info("stopped after %d iterations at iteration %d; run again to resume", ran, it + 1)
                return last
            if (it + 1) % cfg.checkpoint_every == 0:
                save(last, full=True)
        bar.close()
        state["epoch"] = epoch + 1
        entry: dict[str, object] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                                    "elapsed_s": round(time.time() - start, 1)}
        if val_pairs and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            s = validate(model, val_pairs, num_classes, mean, std, device)
            entry.update(val_miou=s["miou"], val_pixel_accuracy=s["pixel_accuracy"])
            if float(s["miou"]) > float(state["best_miou"]):  # type: ignore[arg-type]
                state["best_miou"] = s["miou"]
                save(out / "best.pt", full=False)
                entry["best"] = True
        state["history"].append(entry)  # type: ignore[union-attr]
        log.info("%s", json.dumps(entry))
        save(last, full=True)
    if not val_pairs:
        save(out / "best.pt", full=False)
    log.info("done: best val mIoU %s", state["best_miou"])
    return out / "best.pt"
