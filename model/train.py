"""Training with the paper's recipe: SGD, poly LR, auxiliary loss, augmentation.

Resumable: ``last.pt`` in the output folder is written after every epoch (and
every ``checkpoint_every`` iterations) and picked up on the next start;
``best.pt`` keeps the weights with the best validation mIoU.

Model selection can use a held-out part of the training set instead of val
(``holdout_fraction`` / ``holdout_sequences``): val is then never read, so it
stays an unbiased figure to report once for the final model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
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
from service.contract.scoring import confusion_matrix, scores

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
    class_weighting: str = "none"  # none | sqrt-median | median-freq | enet
    ohem_thresh: float = 0.0  # 0: plain cross-entropy; else OHEM on the main loss (see ohem_cross_entropy)
    ohem_min_kept: int = 0  # OHEM keeps at least this many pixels per image
    scale: tuple[float, float] = (0.5, 2.0)  # random scale range of the augmentation
    holdout_fraction: float = 0.0  # the last F of every sequence's frames select the epoch instead of val
    holdout_sequences: tuple[str, ...] = ()  # whole sequences (name prefixes) held out likewise
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


CLASS_WEIGHTINGS = ("none", "sqrt-median", "median-freq", "enet")


def class_weights(labels: Sequence[np.ndarray], num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class loss weights from the training labels (ids >= num_classes ignored).

    ``sqrt-median``: square root of median-frequency balancing over all pixels
    (milder than the full inverse, which overweights classes of a few hundred pixels).
    ``median-freq``: SegNet's median frequency balancing, median(f) / f(c), where
    f(c) is class c's pixels over the pixels of the images that contain c.
    ``enet``: ENet's 1 / ln(1.02 + p(c)), p(c) the class's share of all labelled
    pixels: bounded (at most 1/ln 1.02, about 50) however rare the class.
    A class absent from the labels gets weight 0 in the last two: it is never a target.
    """
    if mode == "none":
        return None
    if mode not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown class weighting {mode!r}")
    counts = np.zeros(num_classes, np.float64)
    # pixels of the images in which each class appears (SegNet's denominator)
    present_pixels = np.zeros(num_classes, np.float64)
    for lab in labels:
        c = np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)[:num_classes]
        counts += c
        present_pixels[c > 0] += c.sum()
    if mode == "sqrt-median":
        freq = counts / counts.sum()
        w = np.sqrt(np.median(freq[freq > 0]) / np.maximum(freq, 1e-12))
    elif mode == "median-freq":
        seen = counts > 0
        freq = np.zeros(num_classes)
        freq[seen] = counts[seen] / present_pixels[seen]
        w = np.zeros(num_classes)
        w[seen] = np.median(freq[seen]) / freq[seen]
    else:  # enet
        p = counts / counts.sum()
        w = np.where(counts > 0, 1.0 / np.log(1.02 + p), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       ignore_index: int, thresh: float, min_kept: int) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining).

    A pixel is hard when the predicted probability of its true class is below
    ``thresh``. Late in training most pixels are easy (large, well-learnt sky and
    road), and averaging over them dilutes the gradient of the thin and rare
    ones; this keeps the loss on what is still wrong. So that a nearly solved
    batch still gives a gradient, at least ``min_kept`` pixels per image (the
    least probable ones) are kept. Weighted like ``F.cross_entropy``: the sum of
    the kept pixels' weighted losses over the sum of their weights.
    """
    valid = target != ignore_index
    safe = target.masked_fill(~valid, 0)
    with torch.no_grad():
        prob = logits.detach().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
        keep = valid & (prob < thresh)
        n_valid = int(valid.sum())
        k = min(min_kept * target.shape[0], n_valid)
        if int(keep.sum()) < k:
            # the k-th smallest true-class probability becomes the threshold
            kth = prob[valid].kthvalue(k).values
            keep = valid & (prob <= kth)
    pixel = F.cross_entropy(logits, safe, weight=weight, reduction="none")
    denom = weight[safe][keep].sum() if weight is not None else keep.sum()
    if int(keep.sum()) == 0:
        return pixel.sum() * 0.0  # nothing labelled: a zero that still has a graph
    return pixel[keep].sum() / denom


def sequence_of(name: str) -> str:
    """CamVid names a frame ``<sequence>_<frame>`` (0001TP_006690, 0006R0_f00930)."""
    return name.split("_", 1)[0]


def split_holdout(names: Sequence[str], fraction: float, sequences: Sequence[str] = ()
                  ) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index lists over frame names.

    ``sequences``: every frame of those sequences is held out. ``fraction``: of each
    remaining sequence, its last ``round(fraction * frames)`` frames in name (= time)
    order, at least one. Consecutive frames of a video are near duplicates, so a
    random sample of frames would select on images the network has all but seen;
    one contiguous block per sequence leaks only across its single boundary, and
    taking it from every sequence keeps all lighting conditions (CamVid train has
    three sequences, one of them at dusk) in both parts.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction {fraction} is not in [0, 1)")
    by_seq: dict[str, list[int]] = {}
    for i in sorted(range(len(names)), key=lambda i: names[i]):
        by_seq.setdefault(sequence_of(names[i]), []).append(i)
    unknown = set(sequences) - set(by_seq)
    if unknown:
        raise ValueError(f"no frames of sequence(s) {sorted(unknown)} (have {sorted(by_seq)})")
    held: list[int] = []
    for seq, idx in by_seq.items():
        if seq in sequences:
            held += idx
        elif fraction > 0:
            held += idx[len(idx) - max(1, round(fraction * len(idx))):]
    held_set = set(held)
    train_idx = [i for i in range(len(names)) if i not in held_set]
    if not train_idx:
        raise ValueError("the holdout leaves no training images")
    return train_idx, sorted(held)


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


def _record_holdout(path: Path, cfg: TrainConfig, held: list[str]) -> None:
    """Write which frames were held out; a resumed run must hold out the same ones."""
    if path.exists():
        if json.loads(path.read_text())["files"] != held:
            raise ValueError(f"{path} holds out other frames than this configuration: "
                             "a resumed run must select on the same images")
        return
    record = {"fraction": cfg.holdout_fraction, "sequences": list(cfg.holdout_sequences),
              "frames_by_sequence": dict(Counter(sequence_of(n) for n in held)), "files": held}
    path.write_text(json.dumps(record, indent=1) + "\n")


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

    files = paired_files(Path(cfg.train_images), Path(cfg.train_labels))
    val_pairs = []
    select = "val"  # the split that picks best.pt, and the prefix of its figures in the history
    if cfg.holdout_fraction or cfg.holdout_sequences:
        if cfg.val_images or cfg.val_labels:
            # the point of the holdout is that val stays unseen until the final model is reported
            raise ValueError("a holdout replaces val for selection: give no val folders with it")
        train_idx, held_idx = split_holdout([img.stem for img, _ in files], cfg.holdout_fraction,
                                            cfg.holdout_sequences)
        _record_holdout(out / "holdout.json", cfg, [files[i][0].stem for i in held_idx])
        val_pairs = [load_pair(files[i][0], files[i][1], num_classes, IGNORE) for i in held_idx]
        files = [files[i] for i in train_idx]
        select = "holdout"
    elif cfg.val_images and cfg.val_labels:
        val_pairs = [load_pair(i, lab, num_classes, IGNORE)
                     for i, lab in paired_files(Path(cfg.val_images), Path(cfg.val_labels))]
    train_pairs = [load_pair(i, lab, num_classes, IGNORE) for i, lab in files]
    log.info("data: %d train, %d %s images", len(train_pairs), len(val_pairs), select)

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
    aug = AugmentConfig(crop=cfg.crop, scale=cfg.scale, ignore_index=IGNORE, mean=cfg.mean)

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
        epoch_start = time.time()
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
            if cfg.ohem_thresh > 0:
                # the main head only: the auxiliary loss is a regulariser of layer3, kept dense
                loss = ohem_cross_entropy(outs["out"].float(), y, weights, IGNORE, cfg.ohem_thresh,
                                          cfg.ohem_min_kept)
            else:
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
                                    "elapsed_s": round(time.time() - start, 1),
                                    "epoch_s": round(time.time() - epoch_start, 1)}
        if val_pairs and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            s = validate(model, val_pairs, num_classes, mean, std, device)
            iou: list[float] = s["iou"]  # type: ignore[assignment]
            entry.update({f"{select}_miou": s["miou"], f"{select}_pixel_accuracy": s["pixel_accuracy"],
                          f"{select}_iou": [round(v, 5) for v in iou]})
            if float(s["miou"]) > float(state["best_miou"]):  # type: ignore[arg-type]
                state["best_miou"] = s["miou"]
                save(out / "best.pt", full=False)
                entry["best"] = True
        state["history"].append(entry)  # type: ignore[union-attr]
        log.info("%s", json.dumps(entry))
        save(last, full=True)
    if not val_pairs:
        save(out / "best.pt", full=False)
    log.info("done: best %s mIoU %s", select, state["best_miou"])
    return out / "best.pt"
