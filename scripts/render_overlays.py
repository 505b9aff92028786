"""Render segmentations with a class legend, for people to look at.

    python scripts/render_overlays.py IMAGES... --out DIR [--model X.onnx] [--style overlay|mask|side]
        [--mode slide] [--flip] [--grid FILE.png --columns 3]

``overlay`` blends the mask over the photo; ``mask`` draws only the model's
colour mask (our output alone: use it for anything published from a dataset
whose pixels are not ours); ``side`` puts photo and mask side by side. Each
picture gets a legend of the classes present in it. ``--grid`` also writes one
contact sheet of every picture, with a legend of all classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from service.codec.decode import NO_LIMITS
from service.contract.artifact import ArtifactMeta
from service.engine.sessions import Engine
from service.offline.inputs import read_image
from service.pipeline.chain import Chain
from service.pipeline.params import resolve
from service.pipeline.runner import EngineRunner
from service.settings import DEFAULT_MODEL

SWATCH, ROW, PAD = 14, 20, 6


def legend(meta: ArtifactMeta, ids: list[int], width: int) -> Image.Image:
    """Swatch + name for each class id, wrapped into rows that fit ``width``."""
    items = [(meta.palette[i], meta.classes[i]) for i in ids]
    cell = max(SWATCH + 8 + 7 * len(name) + 14 for _, name in items) if items else 80
    per_row = max(1, width // cell)
    rows = (len(items) + per_row - 1) // per_row
    img = Image.new("RGB", (width, rows * ROW + PAD), "white")
    d = ImageDraw.Draw(img)
    for k, (colour, name) in enumerate(items):
        x, y = (k % per_row) * cell + PAD, (k // per_row) * ROW + PAD
        d.rectangle([x, y, x + SWATCH, y + SWATCH], fill=tuple(colour), outline="black")
        d.text((x + SWATCH + 5, y + 1), name, fill="black")
    return img


def picture(meta: ArtifactMeta, rgb: np.ndarray, labels: np.ndarray, style: str,
            scale: float = 1.0) -> Image.Image:
    colours = np.asarray(meta.palette, dtype=np.uint8)[labels]
    if style == "mask":
        body = Image.fromarray(colours)
    elif style == "overlay":
        body = Image.fromarray((0.5 * rgb + 0.5 * colours).round().astype(np.uint8))
    else:
        body = Image.fromarray(np.concatenate([rgb, colours], axis=1))
    if scale != 1.0:  # before the legend, so its text stays readable
        body = body.resize((round(body.width * scale), round(body.height * scale)), Image.LANCZOS)
    present = sorted(int(i) for i in np.unique(labels))
    leg = legend(meta, present, body.width)
    out = Image.new("RGB", (body.width, body.height + leg.height), "white")
    out.paste(body, (0, 0))
    out.paste(leg, (0, body.height))
    return out


def contact_sheet(meta: ArtifactMeta, pictures: list[Image.Image], columns: int) -> Image.Image:
    w = max(p.width for p in pictures)
    h = max(p.height for p in pictures)
    rows = (len(pictures) + columns - 1) // columns
    leg = legend(meta, list(range(meta.num_classes)), columns * w)
    sheet = Image.new("RGB", (columns * w, rows * h + leg.height), "white")
    for k, p in enumerate(pictures):
        sheet.paste(p, ((k % columns) * w, (k // columns) * h))
    sheet.paste(leg, (0, rows * h))
    return sheet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--style", choices=["overlay", "mask", "side"], default="overlay")
    p.add_argument("--mode", choices=["whole", "slide", "multiscale"])
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--grid", type=Path, help="also write a contact sheet here")
    p.add_argument("--columns", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="resize each picture (e.g. 0.5 for thumbnails)")
    args = p.parse_args(argv)
    engine = Engine(args.model, provider="auto", intra_op_threads=0, inter_op_threads=1, max_batch=4)
    meta = engine.meta
    params = resolve(meta.protocol, mode=args.mode, flip=args.flip, scales=None, max_scales=32)
    args.out.mkdir(parents=True, exist_ok=True)
    chain, runner = Chain(meta, NO_LIMITS), EngineRunner(engine, 4)
    pictures = []
    for path in tqdm(args.images, desc="render", unit="img"):
        rgb = read_image(path).rgb
        labels, _ = chain.labels_now(rgb, params, runner=runner)
        pic = picture(meta, rgb, labels, args.style, args.scale)
        pic.save(args.out / f"{path.stem}.png")
        pictures.append(pic)
    if args.grid:
        contact_sheet(meta, pictures, args.columns).save(args.grid)
    print(f"{len(pictures)} pictures in {args.out}" + (f", contact sheet {args.grid}" if args.grid else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
