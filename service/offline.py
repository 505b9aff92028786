"""``pspnet-serve segment``: segment image files through the serving engine, no HTTP."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from service.artifact import MODES, ArtifactError
from service.codecs import (
    DecodedImage,
    class_summary,
    decode_image,
    encode_color_png,
    encode_label_png,
    encode_overlay,
)
from service.engine import Engine
from service.errors import ServiceError
from service.params import OUTPUTS, resolve
from service.pipeline import labels_offline
from service.settings import DEFAULT_MODEL

SUFFIX = {"color": ".png", "label": ".png", "overlay": ".jpg", "json": ".json"}


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX artifact (default: shipped model)")
    p.add_argument("--mode", choices=MODES, help="default: the model's protocol")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--scales", help="comma-separated scales, e.g. 0.75,1.0,1.25")
    p.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--max-batch", type=int, default=4)


def read_image(path: Path) -> DecodedImage:
    """A local file through the service's own decoder (EXIF, modes, first frame), no size limits."""
    return decode_image(path.read_bytes(), content_type=None, max_bytes=1 << 31, max_pixels=1 << 31)


def load_engine(args: argparse.Namespace) -> Engine:
    try:
        return Engine(args.model, provider=args.provider, intra_op_threads=args.threads,
                      inter_op_threads=1, max_batch=args.max_batch)
    except ArtifactError as e:
        print(f"pspnet-serve: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def segment_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pspnet-serve segment", description=__doc__)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--output", choices=OUTPUTS, default="color")
    add_inference_flags(p)
    args = p.parse_args(argv)
    engine = load_engine(args)
    meta = engine.meta
    try:
        params = resolve(meta.protocol, mode=args.mode, flip=args.flip, scales=args.scales, max_scales=32)
    except ServiceError as e:
        p.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(args.images, desc="segment", unit="img", dynamic_ncols=True):
        try:
            img = read_image(path)
        except (OSError, ServiceError) as e:
            tqdm.write(f"skipped {path}: {e}")
            failed += 1
            continue
        labels = labels_offline(meta, engine.run, img.rgb, params, max_batch=args.max_batch)
        target = args.out / (path.stem + SUFFIX[args.output])
        if args.output == "color":
            target.write_bytes(encode_color_png(labels, meta.palette))
        elif args.output == "label":
            target.write_bytes(encode_label_png(labels, meta.num_classes))
        elif args.output == "overlay":
            target.write_bytes(encode_overlay(img.rgb, labels, meta.palette, alpha=0.5, fmt="jpeg",
                                              quality=90))
        else:
            target.write_text(json.dumps({"model": meta.name, "width": int(labels.shape[1]),
                                          "height": int(labels.shape[0]),
                                          "classes": class_summary(labels, meta.classes, meta.palette)}))
    print(f"{len(args.images) - failed} segmented into {args.out}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
