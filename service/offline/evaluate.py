"""``pspnet-serve evaluate``: mIoU, per-class IoU and pixel accuracy of an ONNX artifact.

Runs the service's own engine and protocols (no torch), accumulates one
confusion matrix over all pixels of the split (service.contract.scoring), prints a
table, writes JSON and a per-class IoU bar chart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from service.codec.decode import NO_LIMITS
from service.contract.artifact import ArtifactMeta
from service.contract.folders import paired_files
from service.contract.scoring import confusion_matrix, scores
from service.engine.sessions import Engine
from service.errors import ServiceError
from service.offline.flags import add_inference_flags, load_engine
from service.offline.inputs import read_image
from service.pipeline.chain import Chain
from service.pipeline.params import InferenceParams, resolve
from service.pipeline.runner import EngineRunner


def evaluate(engine: Engine, pairs: list[tuple[Path, Path]], params: InferenceParams, *,
             max_batch: int, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    meta = engine.meta
    chain = Chain(meta, NO_LIMITS)
    runner = EngineRunner(engine, max_batch)
    n = meta.num_classes
    cm = np.zeros((n, n), np.int64)
    t0 = time.perf_counter()
    for img_path, lab_path in tqdm(pairs, desc="evaluate", unit="img", disable=not progress,
                                   dynamic_ncols=True):
        img = read_image(img_path)
        label = np.asarray(Image.open(lab_path))
        if label.ndim != 2 or label.shape != img.rgb.shape[:2]:
            raise ValueError(f"label {lab_path} ({label.shape}) does not match image {img.rgb.shape[:2]}")
        pred, _ = chain.labels_now(img.rgb, params, runner=runner)
        cm += confusion_matrix(pred, label, n)
    result = scores(cm)
    return {
        "model": meta.name, "dataset": meta.dataset, "images": len(pairs),
        "mode": params.mode, "scales": list(params.scales), "flip": params.flip,
        "miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
        "per_class_iou": dict(zip(meta.classes, result["iou"], strict=True)),  # type: ignore[call-overload]
        "seconds": round(time.perf_counter() - t0, 2), "confusion_matrix": cm.tolist(),
    }


def format_table(result: dict[str, Any]) -> str:
    width = max(len(c) for c in result["per_class_iou"]) + 2
    lines = [f"{'class':<{width}}IoU %", "-" * (width + 7)]
    for name, iou in result["per_class_iou"].items():
        lines.append(f"{name:<{width}}{'n/a' if iou != iou else f'{100 * iou:6.2f}'}")
    lines += ["-" * (width + 7), f"{'mIoU':<{width}}{100 * result['miou']:6.2f}",
              f"{'pixel acc.':<{width}}{100 * result['pixel_accuracy']:6.2f}"]
    return "\n".join(lines)


def iou_chart(result: dict[str, Any], meta: ArtifactMeta, path: Path) -> None:
    """Horizontal bars, one per class in its palette colour, drawn with Pillow (no plotting stack)."""
    names = list(result["per_class_iou"])
    row, left, right, top = 22, 150, 60, 40
    w, h = 640, top + row * len(names) + 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{result['model']}: per-class IoU, mIoU {100 * result['miou']:.1f}% "
                     f"({result['mode']}, scales {result['scales']}, flip {result['flip']})", fill="black")
    span = w - left - right
    for i, name in enumerate(names):
        iou = result["per_class_iou"][name]
        y = top + i * row
        d.text((10, y + 4), name[:22], fill="black")
        v = 0.0 if iou != iou else float(iou)
        d.rectangle([left, y + 3, left + int(span * v), y + row - 3], fill=tuple(meta.palette[i]),
                    outline="black")
        d.text((left + int(span * v) + 4, y + 4), "n/a" if iou != iou else f"{100 * v:.1f}", fill="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + int(span * frac)
        d.line([x, top - 4, x, h - 26], fill=(200, 200, 200))
        d.text((x - 8, h - 22), f"{int(frac * 100)}", fill="black")
    img.save(path)


def evaluate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pspnet-serve evaluate", description=__doc__)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--json", type=Path, help="write the figures here (default: next to --plot or none)")
    p.add_argument("--plot", type=Path, help="per-class IoU bar chart (PNG)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    add_inference_flags(p)
    args = p.parse_args(argv)
    try:
        pairs = paired_files(args.images, args.labels)
    except FileNotFoundError as e:
        print(f"pspnet-serve evaluate: {e}", file=sys.stderr)
        return 2
    if args.limit:
        pairs = pairs[:args.limit]
    engine = load_engine(args)
    try:
        params = resolve(engine.meta.protocol, mode=args.mode, flip=args.flip, scales=args.scales,
                         max_scales=32)
    except ServiceError as e:
        p.error(str(e))
    result = evaluate(engine, pairs, params, max_batch=args.max_batch)
    print(format_table(result))
    print(f"{result['images']} images in {result['seconds']} s ({engine.provider})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        iou_chart(result, engine.meta, args.plot)
    return 0
