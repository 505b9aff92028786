"""``pspnet-model``: train, convert and export PSPNet checkpoints; quantise artifacts to int8;
add the ``labels`` output to artifacts exported before it existed.

Tested by tests/model/test_train.py, tests/model/test_convert_cli.py, tests/model/test_export.py,
tests/model/test_quantize.py and tests/model/test_cli_version.py (each command through main).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from model.datasets import dataset_info, dataset_names
from service.contract.version import VersionAction

if TYPE_CHECKING:
    from model.export import ExportReport


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train PSPNet on an image/label folder pair")
    p.add_argument("--data", type=Path, help="folder with train/ trainannot/ val/ valannot/ (CamVid layout)")
    p.add_argument("--train-images", type=Path)
    p.add_argument("--train-labels", type=Path)
    p.add_argument("--val-images", type=Path)
    p.add_argument("--val-labels", type=Path)
    p.add_argument("--dataset", default="camvid", choices=dataset_names())
    p.add_argument("--out", type=Path, required=True, help="run folder: last.pt, best.pt, train.log")
    p.add_argument("--depth", type=int, default=18, choices=[18, 34, 50, 101])
    p.add_argument("--base-width", type=int, default=64, help="channels of layer1 (64 = standard ResNet)")
    p.add_argument("--stem", type=int, nargs=3, default=[32, 32, 64], metavar=("C1", "C2", "C3"))
    p.add_argument("--dilation-scheme", choices=["all", "contract"], default="contract")
    p.add_argument("--head-channels", type=int, default=512)
    p.add_argument("--aux-channels", type=int, default=256, help="0: no auxiliary head")
    p.add_argument("--align-corners", action="store_true")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, nargs=2, default=[288, 288], metavar=("H", "W"))
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--class-weighting", choices=["none", "sqrt-median", "median-freq", "enet"],
                   default="none",
                   help="per-class loss weights: sqrt-median (square root of median frequency), "
                   "median-freq (SegNet), enet (1/ln(1.02 + p), ENet)")
    p.add_argument("--ohem", type=float, default=0.0, metavar="THRESH",
                   help="online hard example mining on the main loss: keep the pixels whose true-class "
                   "probability is below THRESH (e.g. 0.7); 0: off")
    p.add_argument("--ohem-min-kept", type=int, default=16384, metavar="PIXELS",
                   help="with --ohem: keep at least this many (the hardest) pixels per image")
    p.add_argument("--scale-range", type=float, nargs=2, default=[0.5, 2.0], metavar=("LO", "HI"),
                   help="random rescale of each training image before the crop (multi-scale crops)")
    p.add_argument("--holdout-fraction", type=float, default=0.0, metavar="F",
                   help="select the best epoch on the last F of each train sequence's frames (whole "
                   "contiguous blocks, e.g. 0.1) instead of val; val is then not read")
    p.add_argument("--holdout-sequences", nargs="+", default=[], metavar="SEQ",
                   help="select on these whole train sequences (name prefixes, e.g. 0001TP) instead of val")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast: about 2.5x faster on CPUs with AMX/AVX512-BF16")
    p.add_argument("--val-every", type=int, default=5, help="epochs between validations")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="ITERS",
                   help="write last.pt every ITERS iterations (and after every epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--stop-after", type=int, default=None, metavar="ITERS",
                   help="checkpoint and stop after this many iterations (run again to resume)")


def _run_train(args: argparse.Namespace) -> int:
    from model.train import TrainConfig, train

    holdout = bool(args.holdout_fraction or args.holdout_sequences)
    if holdout and (args.val_images or args.val_labels):
        print("error: a holdout replaces val for selection: give no --val-images/--val-labels with it",
              file=sys.stderr)
        return 2
    if args.data:
        args.train_images = args.train_images or args.data / "train"
        args.train_labels = args.train_labels or args.data / "trainannot"
        # with a holdout, val is left alone: it is the figure reported once for the final model
        if not holdout and (args.data / "val").is_dir():
            args.val_images = args.val_images or args.data / "val"
            args.val_labels = args.val_labels or args.data / "valannot"
    if not (args.train_images and args.train_labels):
        print("error: give --data or --train-images and --train-labels", file=sys.stderr)
        return 2
    info = dataset_info(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger().addHandler(logging.FileHandler(args.out / "train.log"))
    cfg = TrainConfig(
        train_images=str(args.train_images), train_labels=str(args.train_labels),
        val_images=str(args.val_images) if args.val_images else None,
        val_labels=str(args.val_labels) if args.val_labels else None,
        out=str(args.out), dataset=args.dataset,
        model={"depth": args.depth, "base_width": args.base_width, "stem": tuple(args.stem),
               "dilation_scheme": args.dilation_scheme, "head_channels": args.head_channels,
               "aux_channels": args.aux_channels or None, "align_corners": args.align_corners},
        epochs=args.epochs, batch_size=args.batch_size, crop=tuple(args.crop), lr=args.lr,
        warmup_iters=args.warmup_iters, weight_decay=args.weight_decay, aux_weight=args.aux_weight,
        class_weighting=args.class_weighting, precision=args.precision, val_every=args.val_every,
        seed=args.seed, threads=args.threads, stop_after=args.stop_after,
        ohem_thresh=args.ohem, ohem_min_kept=args.ohem_min_kept, scale=tuple(args.scale_range),
        holdout_fraction=args.holdout_fraction, holdout_sequences=tuple(args.holdout_sequences),
        checkpoint_every=args.checkpoint_every,
    )
    best = train(cfg, info.num_classes)
    print(f"best checkpoint: {best}")
    return 0


def _add_convert(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint into a self-describing ONNX artifact")
    p.add_argument("--format", required=True, choices=["semseg", "mmseg", "native"],
                   help="semseg: official hszhao/semseg; mmseg: MMSegmentation; native: pspnet-model train")
    p.add_argument("--checkpoint", type=Path, required=True, help="the .pth file")
    p.add_argument("--dataset", choices=dataset_names(),
                   help="classes, palette and defaults (native checkpoints name their own)")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"),
                   help="fixed input tile (default: the dataset's for this source)")
    p.add_argument("--name", help="model name in the metadata (default: pspnet<depth>-<dataset>-<format>)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="torch.onnx path; both are checked against PyTorch the same way")


def _convert(args: argparse.Namespace, stage: Callable[[str], None],
             say: Callable[[str], None]) -> ExportReport:
    """Load, describe, export; raises CheckpointError / ExportError / KeyError."""
    from model.convert import CheckpointError, load_checkpoint
    from model.export import artifact_meta, export_onnx

    model, report = load_checkpoint(args.checkpoint, args.format)
    dataset = args.dataset or report.dataset
    if dataset is None:
        raise CheckpointError("the checkpoint names no dataset: give --dataset")
    info = dataset_info(dataset, args.format)
    if report.config.num_classes != info.num_classes:
        raise CheckpointError(f"the checkpoint has {report.config.num_classes} classes, "
                              f"{dataset} has {info.num_classes}")
    stage("building metadata")
    tile = (args.tile[0], args.tile[1]) if args.tile else info.tile
    say("\n".join(["detected:", *(f"  {line}" for line in report.summary()),
                   f"dataset: {dataset} ({info.num_classes} classes), tile {tile[0]}x{tile[1]}, "
                   f"base size {info.base_size}"]))
    name = args.name or f"pspnet{report.config.depth}-{dataset}-{args.format}"
    meta = artifact_meta(model, info, name=name, tile=tile, source={
        "format": args.format, "checkpoint": args.checkpoint.name,
        "checkpoint_sha256": report.checkpoint_sha256})
    return export_onnx(model, meta, args.output, exporter=args.exporter, progress=stage)


def _run_convert(args: argparse.Namespace) -> int:
    # torch is imported only here: `pspnet-model --help` stays fast
    from tqdm import tqdm

    from model.convert import CheckpointError
    from model.export import ExportError

    if args.tile and min(args.tile) < 8:
        print(f"error: --tile {args.tile[0]} {args.tile[1]} is too small (at least 8x8)", file=sys.stderr)
        return 2
    # one tick per stage: reading, metadata, export, graph check, parity, writing
    bar = tqdm(total=6, desc="reading checkpoint", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc:<24} {bar:20} {n}/{total} [{elapsed}]")

    def stage(name: str) -> None:
        bar.update(1)
        bar.set_description_str(name)

    def say(text: str) -> None:
        bar.write(text, file=sys.stdout)

    with bar:
        try:
            result = _convert(args, stage, say)
            stage("done")
        except (CheckpointError, KeyError) as e:
            bar.write(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            return 2
        except ExportError as e:
            bar.write(f"error: export refused: {e}", file=sys.stderr)
            return 1
    h, w = result.tile
    print(f"parity: ONNX Runtime vs PyTorch on 2 random {h}x{w} tiles: max |diff| {result.max_abs_error:.2e} "
          f"(logits up to {result.reference_max:.3g}, tolerance {result.tolerance:.1e})")
    near_ties = (f"; the other {result.label_flips} are near-ties (two best logits within 2x that diff)"
                 if result.label_flips else "")
    print(f"labels: the graph's equal PyTorch's argmax on {result.label_pixels - result.label_flips} of "
          f"{result.label_pixels} pixels{near_ties}")
    print(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB; export {result.export_seconds:.1f} s, "
          f"check {result.check_seconds:.1f} s)")
    return 0


def _add_quantize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("quantize", help="int8 version of an ONNX artifact, calibrated on real images (CPU)")
    p.add_argument("--model", type=Path, required=True, help="the float32 .onnx artifact")
    p.add_argument("--calibration", type=Path, required=True,
                   help="folder of images like the ones served (e.g. the training images)")
    p.add_argument("--images", type=int, default=None,
                   help="calibration images, spread evenly over the folder (default: 32)")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")


def _run_quantize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.quantize import DEFAULT_IMAGES, QuantizeError, pick_images, quantize_artifact
    from service.contract.artifact import ArtifactError

    count = DEFAULT_IMAGES if args.images is None else args.images
    if count < 1:
        print(f"error: --images {count}: need at least one calibration image", file=sys.stderr)
        return 2
    if not args.calibration.is_dir():
        print(f"error: --calibration {args.calibration} is not a folder", file=sys.stderr)
        return 2
    try:
        images = pick_images(args.calibration, count)
        with tqdm(total=len(images), desc="calibrating", unit="img", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            report = quantize_artifact(args.model, args.output, images, tick=lambda: bar.update(1))
    except (QuantizeError, ArtifactError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"int8 labels agree with float32 on {report.label_agreement:.2%} of the calibration pixels "
          f"({report.images} images)")
    print(f"wrote {report.path} ({report.bytes / 1e6:.1f} MB, sha256 {report.sha256[:12]}..., "
          f"{report.seconds:.1f} s)")
    return 0


def _add_add_labels(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("add-labels", help="append the in-graph labels output to an artifact that lacks it "
                       "(logits stay bit-identical)")
    p.add_argument("--model", type=Path, required=True, help="the .onnx artifact")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write (may be --model)")


def _run_add_labels(args: argparse.Namespace) -> int:
    from model.export import ExportError, add_labels
    from service.contract.artifact import ArtifactError

    try:
        size = add_labels(args.model, args.output)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: refused: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({size / 1e6:.1f} MB): logits bit-identical to the input's on 2 random "
          "tiles, labels their argmax")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="pspnet-model", description=__doc__)
    # torch's version from its metadata: --version imports no torch (and needs no GPU)
    parser.add_argument("--version", action=VersionAction, extra=("torch",),
                        help="print the versions of this package, ONNX Runtime, torch and Python, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_convert(sub)
    _add_quantize(sub)
    _add_add_labels(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _run_train(args)
    if args.command == "convert":
        return _run_convert(args)
    if args.command == "quantize":
        return _run_quantize(args)
    if args.command == "add-labels":
        return _run_add_labels(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
