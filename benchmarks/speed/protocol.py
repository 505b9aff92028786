"""Baseline 3: the official test procedure in PyTorch eager vs the service's engine path, big image.

    python benchmarks/speed/protocol.py --model weights/pspnet_camvid.onnx \
        --checkpoint weights/pspnet_camvid.pt --image street.png --size 1024 2048 \
        --base-size 2048 --modes slide multiscale --json benchmarks/protocol.json

Reference: the semseg ``tool/test.py`` procedure (``test`` -> ``scale_process``
-> ``net_process``) re-written here step for step, on the shipped PyTorch
checkpoint in eager mode with default torch threading: per scale a float
``cv2.resize``, mean padding with ``cv2.copyMakeBorder``, ONE window at a time
through the network (plus its mirror when flipping, as a batch of 2, as the
original does), softmax, float64 accumulation, coverage division, crop,
resize back, average over scales, argmax.

Ours: the steps of ``service.pipeline.chain.Chain.labels``
on the ONNX artifact through ``service.engine.sessions.Engine`` (tiles batched
``--max-batch`` at a time), timed as plan / run / stitch so the breakdown is
visible; once with the server's engine settings (ORT spinning off) and once
with spinning on, the better choice offline where nothing else competes.

The input is ``--image`` resized to ``--size`` (H W), so the content is a real
street scene at Cityscapes' size. ``--base-size`` defaults to the long side of
that size, so scale 1.0 processes the image at full size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.convert import load_checkpoint  # noqa: E402
from service.codec.decode import decode_image  # noqa: E402
from service.contract.artifact import MULTISCALE  # noqa: E402
from service.engine.sessions import Engine  # noqa: E402
from service.pipeline.chain import prepare  # noqa: E402
from service.pipeline.params import InferenceParams  # noqa: E402
from service.pipeline.runner import EngineRunner  # noqa: E402
from service.protocol.stitch import stitch_labels  # noqa: E402

# -- the reference procedure --------------------------------------------------------------------------

NET_SECONDS = [0.0]  # time spent in the network calls of the reference, for the breakdown


def net_process(model: torch.nn.Module, window: np.ndarray, mean: np.ndarray, std: np.ndarray,
                flip: bool) -> np.ndarray:
    """(h, w, C) float32 probabilities of one HxWx3 float window (its mirror averaged in with flip)."""
    x = torch.from_numpy(window.transpose(2, 0, 1).copy()).float()
    x = (x - torch.from_numpy(mean).view(3, 1, 1)) / torch.from_numpy(std).view(3, 1, 1)
    x = x.unsqueeze(0)
    if flip:
        x = torch.cat([x, x.flip(3)], 0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(x)["out"]
    NET_SECONDS[0] += time.perf_counter() - t0
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
    out = F.softmax(out, dim=1)
    probs = (out[0] + out[1].flip(2)) / 2 if flip else out[0]
    return np.asarray(probs.numpy().transpose(1, 2, 0))


def scale_process(model: torch.nn.Module, image: np.ndarray, classes: int, crop: tuple[int, int],
                  size: tuple[int, int], mean: np.ndarray, std: np.ndarray, stride_rate: float,
                  flip: bool) -> np.ndarray:
    """One scale: pad, slide, accumulate in float64, average by coverage, crop, resize to ``size``."""
    crop_h, crop_w = crop
    ori_h, ori_w = image.shape[:2]
    pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
    top, left = int(pad_h / 2), int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:
        image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                   value=[float(m) for m in mean])
    new_h, new_w = image.shape[:2]
    stride_h, stride_w = int(np.ceil(crop_h * stride_rate)), int(np.ceil(crop_w * stride_rate))
    grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
    acc = np.zeros((new_h, new_w, classes), dtype=float)
    count = np.zeros((new_h, new_w), dtype=float)
    for ih in range(grid_h):
        for iw in range(grid_w):
            e_h = min(ih * stride_h + crop_h, new_h)
            e_w = min(iw * stride_w + crop_w, new_w)
            s_h, s_w = e_h - crop_h, e_w - crop_w
            window = image[s_h:e_h, s_w:e_w].copy()
            count[s_h:e_h, s_w:e_w] += 1
            acc[s_h:e_h, s_w:e_w, :] += net_process(model, window, mean, std, flip)
    acc /= np.expand_dims(count, 2)
    acc = acc[top:top + ori_h, left:left + ori_w]
    h, w = size
    return np.asarray(cv2.resize(acc, (w, h), interpolation=cv2.INTER_LINEAR))


def reference_labels(model: torch.nn.Module, rgb: np.ndarray, *, classes: int, crop: tuple[int, int],
                     base_size: int, scales: tuple[float, ...], mean: np.ndarray, std: np.ndarray,
                     stride_rate: float, flip: bool) -> np.ndarray:
    image = np.float32(rgb)
    h, w = image.shape[:2]
    prediction = np.zeros((h, w, classes), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h, new_w = long_size, long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        prediction += scale_process(model, scaled, classes, crop, (h, w), mean, std, stride_rate, flip)
    prediction /= len(scales)
    return np.argmax(prediction, axis=2)


# -- the comparison -----------------------------------------------------------------------------------

def ours(engine: Engine, rgb: np.ndarray, params: InferenceParams, base_size: int,
         max_batch: int) -> tuple[np.ndarray, dict[str, float], int]:
    meta = engine.meta
    # the request's base size replaces the artifact's (480 for CamVid) so scale 1.0 is full size
    meta_big = dataclasses.replace(meta, protocol=dataclasses.replace(meta.protocol, base_size=base_size))
    t0 = time.perf_counter()
    plan = prepare(meta_big, rgb, params, ("logits",)).plan
    t1 = time.perf_counter()
    logits = EngineRunner(engine, max_batch).run(plan.tiles)
    t2 = time.perf_counter()
    labels = stitch_labels(plan, logits)
    t3 = time.perf_counter()
    return labels, {"plan_s": t1 - t0, "run_s": t2 - t1, "stitch_s": t3 - t2}, plan.num_tiles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the ONNX artifact")
    p.add_argument("--checkpoint", type=Path, required=True, help="the same weights as a native checkpoint")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    p.add_argument("--base-size", type=int, help="default: the long side of --size")
    p.add_argument("--modes", nargs="+", choices=["slide", "multiscale"], default=["slide", "multiscale"])
    p.add_argument("--flip", action="store_true", help="mirror every window too (the official default)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each, the median is reported")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = default)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    rgb0 = decode_image(args.image.read_bytes(), content_type=None, max_bytes=1 << 30, max_pixels=1 << 30).rgb
    h, w = args.size
    rgb = cv2.resize(rgb0, (w, h), interpolation=cv2.INTER_LINEAR)
    base_size = args.base_size or max(h, w)
    # the server's engine (no ORT spinning, see service.engine.sessions.session_options) and the same engine
    # with spinning, the better choice for offline work where nothing else runs beside ORT
    engines = {spin: Engine(args.model, provider="cpu", intra_op_threads=args.threads, inter_op_threads=1,
                            max_batch=args.max_batch, spin=spin) for spin in (False, True)}
    for engine in engines.values():
        engine.warmup()
    meta = engines[False].meta
    model, _ = load_checkpoint(args.checkpoint, "native")
    model.eval()
    mean = np.asarray(meta.mean, dtype=np.float32)
    std = np.asarray(meta.std, dtype=np.float32)
    with torch.no_grad():  # one eager warm-up run: allocator and oneDNN primitives
        model(torch.zeros(1, 3, *meta.tile))
    results: dict[str, Any] = {"image": args.image.name, "size": [h, w], "base_size": base_size,
                               "tile": list(meta.tile), "flip": args.flip, "max_batch": args.max_batch,
                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                               "modes": {}}
    for mode in args.modes:
        scales = (1.0,) if mode == "slide" else MULTISCALE
        params = InferenceParams(mode=mode, scales=scales, flip=args.flip)
        ref_times: list[float] = []
        ref_net: list[float] = []
        our_times: dict[bool, list[float]] = {False: [], True: []}
        parts: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        ref = None
        ours_labels: dict[bool, np.ndarray] = {}
        tiles = 0
        for _ in range(args.repeats):
            NET_SECONDS[0] = 0.0
            t0 = time.perf_counter()
            ref = reference_labels(model, rgb, classes=meta.num_classes, crop=meta.tile, base_size=base_size,
                                   scales=scales, mean=mean, std=std, stride_rate=meta.protocol.stride_rate,
                                   flip=args.flip)
            ref_times.append(time.perf_counter() - t0)
            ref_net.append(NET_SECONDS[0])
            for spin, engine in engines.items():
                t0 = time.perf_counter()
                ours_labels[spin], split, tiles = ours(engine, rgb, params, base_size, args.max_batch)
                our_times[spin].append(time.perf_counter() - t0)
                parts[spin].append(split)
        assert ref is not None
        agree = min(float(np.mean(ref == labels)) for labels in ours_labels.values())
        ref_s = statistics.median(ref_times)
        ours_s = {spin: statistics.median(t) for spin, t in our_times.items()}
        best = min(ours_s, key=lambda k: ours_s[k])
        row = {"scales": list(scales), "tiles": tiles, "reference_s": round(ref_s, 2),
               "reference_net_s": round(statistics.median(ref_net), 2),
               "ours_s": round(ours_s[best], 2), "ours_spin": best, "speedup": round(ref_s / ours_s[best], 2),
               "ours_split_s": {k: round(statistics.median(s[k] for s in parts[best]), 2)
                                for k in parts[best][0]},
               "ours_no_spin_s": round(ours_s[False], 2), "ours_spin_s": round(ours_s[True], 2),
               "speedup_no_spin": round(ref_s / ours_s[False], 2),
               "label_agreement": round(agree, 6), "reference_runs_s": [round(t, 2) for t in ref_times],
               "ours_runs_s": {("spin" if k else "no_spin"): [round(t, 2) for t in v]
                               for k, v in our_times.items()}}
        results["modes"][mode] = row
        print(f"{mode:>10}: {tiles} tiles; reference {row['reference_s']} s "
              f"(network {row['reference_net_s']} s), "
              f"ours {row['ours_no_spin_s']} s without ORT spinning, {row['ours_spin_s']} s with "
              f"({row['speedup']}x at best; plan/run/stitch {row['ours_split_s']}); labels agree {agree:.4%}",
              flush=True)
        if not math.isclose(agree, 1.0, abs_tol=1e-3):
            print(f"warning: only {agree:.4%} of labels agree with the reference", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
