"""``pspnet-serve segment``: segment image files through the serving chain, no HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from service.artifact import MODES, ArtifactError
from service.chain import NO_LIMITS, Chain, decode, labels_runner
from service.cli import add_settings_flags, settings_from
from service.decode import DecodedImage
from service.engine import Engine
from service.errors import ServiceError
from service.outputs import FORMATS, OutputOptions
from service.params import resolve
from service.settings import DEFAULT_MODEL, Settings

#: the settings that shape outputs, as flags of ``segment`` (env PSPNET_* as for the server)
OUTPUT_SETTINGS = ("overlay_alpha", "jpeg_quality")


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
    return decode(path.read_bytes(), None, NO_LIMITS)


def load_engine(args: argparse.Namespace) -> Engine:
    try:
        return Engine(args.model, provider=args.provider, intra_op_threads=args.threads,
                      inter_op_threads=1, max_batch=args.max_batch)
    except ArtifactError as e:
        print(f"pspnet-serve: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def output_options(args: argparse.Namespace) -> OutputOptions:
    """The server's settings (env, then flags) and the command's own choices, as for a request."""
    args.setting_model = str(args.model)
    settings: Settings = settings_from(args)
    return OutputOptions.from_settings(settings, overlay_format=args.overlay_format,
                                       include_mask=args.include_mask)


def segment_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pspnet-serve segment", description=__doc__)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--output", choices=list(FORMATS), default="color")
    p.add_argument("--overlay-format", choices=("jpeg", "png"), default="jpeg",
                   help="file format of --output overlay")
    p.add_argument("--include-mask", action="store_true", help="--output json: add the label PNG, base64")
    add_settings_flags(p, only=OUTPUT_SETTINGS)
    add_inference_flags(p)
    args = p.parse_args(argv)
    options = output_options(args)
    engine = load_engine(args)
    chain = Chain(engine.meta, NO_LIMITS)
    try:
        params = resolve(engine.meta.protocol, mode=args.mode, flip=args.flip, scales=args.scales,
                         max_scales=32)
    except ServiceError as e:
        p.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(args.images, desc="segment", unit="img", dynamic_ncols=True):
        try:
            result = chain.segment(path.read_bytes(), params, args.output, options, run=engine.run,
                                   run_labels=labels_runner(engine), max_batch=args.max_batch)
        except (OSError, ServiceError) as e:
            tqdm.write(f"skipped {path}: {e}")
            failed += 1
            continue
        (args.out / (path.stem + result.encoded.suffix)).write_bytes(result.encoded.body)
    print(f"{len(args.images) - failed} segmented into {args.out}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
