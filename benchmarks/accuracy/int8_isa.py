"""int8 against float32 on the CPU this runs on: which instruction set, how far the logits and labels move.

    python -m benchmarks int8-isa cpu
    python -m benchmarks int8-isa tiny [--json OUT]
    python -m benchmarks int8-isa quantize --model F.onnx --calibration DIR --output I.onnx \
        [--weights int8|uint8] [--reduce-range | --no-reduce-range]   (default: the shipped setting)
    python -m benchmarks int8-isa agreement --float F.onnx --int8 I.onnx --images VAL --labels VALANNOT \
        [--mode slide --scales 1.0 --no-flip | --mode multiscale --flip] [--cache DIR | --reference NPZ]
        [--save-int8 NPZ] [--limit N] [--json OUT]
    python -m benchmarks int8-isa compare A.npz B.npz
    python -m benchmarks int8-isa logits --model M.onnx --images VAL [--every 10] \
        [--save NPZ | --against NPZ]
    python -m benchmarks int8-isa latency --models A.onnx B.onnx ... [--runs 40] [--image IMG]

Why: ONNX Runtime picks its int8 kernels by CPU. With AVX-512 VNNI (or AVX-VNNI, AMX) a uint8 x int8
product is summed in 32 bits; on AVX2 without VNNI the U8S8 kernels add pairs of products into
int16 first (vpmaddubsw), which saturates when two products of full-range weights are large, so
the same artifact gives other logits there. To see an AVX2-only CPU on a VNNI host, run any of
these under qemu-user: ``qemu-x86_64 -cpu Haswell -0 .venv/bin/python .venv/bin/python -m benchmarks ...``
(slow: on a 2-core host a 360x480 int8 tile took 15-55 s there, a float32 one minutes).

- ``cpu``: the features the CPU reports to this process (numpy's CPUID dispatch, which sees what
  qemu emulates), and ORT's version.
- ``tiny``: tests/model/test_quantize.py's tiny artifact and six images, quantised with each
  setting of ``model.quantize.Int8Settings``; per setting, the test's two figures: the largest
  |int8 - float32| logit over the largest |float32| logit of an image, and the smallest share of
  pixels whose labels agree.
- ``quantize``: ``pspnet-model quantize`` with a chosen setting (the CLI has the default only).
- ``agreement``: over a split, labels of the int8 and the float32 artifact through the service's
  own chain (as ``pspnet-serve evaluate``): the share of pixels on which they agree, and each
  one's mIoU and pixel accuracy (the same confusion matrix ``evaluate`` builds). ``--cache`` keeps
  the float32 labels of a CPU kind and protocol for the next int8 candidate.
- ``latency``: median batch-1 time of one tile per model, interleaved
  (scripts/candidate_report.py's ``latency``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from model.quantize import (  # noqa: E402
    DEFAULT_SETTINGS,
    WEIGHT_TYPES,
    Int8Settings,
    calibration_tile,
    pick_images,
    quantize_artifact,
)
from service.codec.decode import NO_LIMITS  # noqa: E402
from service.contract.artifact import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from service.contract.folders import paired_files  # noqa: E402
from service.contract.scoring import confusion_matrix, scores  # noqa: E402
from service.engine.sessions import Engine  # noqa: E402
from service.offline.inputs import read_image  # noqa: E402
from service.pipeline.chain import Chain  # noqa: E402
from service.pipeline.params import resolve  # noqa: E402
from service.pipeline.runner import EngineRunner  # noqa: E402

#: the settings compared (weights type, 7-bit range)
CANDIDATES = (Int8Settings("int8", False), Int8Settings("int8", True), Int8Settings("uint8", False),
              Int8Settings("uint8", True))
#: the features that decide ORT's int8 kernels on x86-64
FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX512_SPR")


def cpu() -> dict[str, Any]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as have
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as have
    # CPUID as this process sees it (qemu-user's emulated CPU; /proc/cpuinfo would show the host's)
    return {"features": {k: bool(have.get(k)) for k in FEATURES},
            "onnxruntime": ort.__version__, "numpy": np.__version__}


def label(s: Int8Settings) -> str:
    return f"{s.weights}{' reduce_range' if s.reduce_range else ''}"


def tiny(args: argparse.Namespace) -> dict[str, Any]:
    """The test's setup (tests/model/test_quantize.py) and its two measures, per candidate."""

    from tests.model.test_quantize import TILE
    from tests.service.tiny_model import build_tiny_artifact, write_street_like

    out: dict[str, Any] = {"cpu": cpu(), "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmp:
        d = Path(tmp)
        src = build_tiny_artifact(d / "tiny.onnx", tile=TILE)
        images = d / "images"
        images.mkdir()
        write_street_like(images, 6)
        reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        for s in CANDIDATES:
            dst = d / f"{label(s).replace(' ', '_')}.onnx"
            quantize_artifact(src, dst, pick_images(images, 4), settings=s)
            engine = Engine(dst, provider="cpu", max_batch=2)
            rel, agree = [], []
            for path in sorted(images.glob("*.png")):
                tile = calibration_tile(path, TILE)
                want = reference.run([OUTPUT_NAME], {INPUT_NAME: tile})[0]
                got = engine.run(tile)
                rel.append(float(np.abs(got - want).max() / np.abs(want).max()))
                agree.append(float(np.mean(got.argmax(1) == want.argmax(1))))
            out["candidates"][label(s)] = {"max_relative_error": max(rel), "min_agreement": min(agree),
                                           "relative_error_per_image": rel, "agreement_per_image": agree,
                                           "sha256": hashlib.sha256(dst.read_bytes()).hexdigest()}
    return out


def quantize(args: argparse.Namespace) -> dict[str, Any]:
    s = Int8Settings(args.weights, args.reduce_range)
    images = pick_images(args.calibration, args.images)
    report = quantize_artifact(args.model, args.output, images, settings=s)
    return {"cpu": cpu(), "settings": label(s), "output": str(report.path), "bytes": report.bytes,
            "sha256": report.sha256, "calibration_images": report.images,
            "calibration_label_agreement": report.label_agreement, "seconds": round(report.seconds, 1)}


def _predict(path: Path, pairs: list[tuple[Path, Path]], params_args: argparse.Namespace,
             threads: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    engine = Engine(path, provider="cpu", intra_op_threads=threads, inter_op_threads=1, max_batch=4)
    params = resolve(engine.meta.protocol, mode=params_args.mode, flip=params_args.flip,
                     scales=params_args.scales, max_scales=32)
    chain = Chain(engine.meta, NO_LIMITS)
    runner = EngineRunner(engine, 4)
    preds = [chain.labels_now(read_image(img).rgb, params, runner=runner)[0] for img, _ in pairs]
    return preds, {"mode": params.mode, "scales": list(params.scales), "flip": params.flip,
                   "num_classes": engine.meta.num_classes}


def _scores(preds: list[np.ndarray], pairs: list[tuple[Path, Path]], n: int) -> dict[str, Any]:
    cm = np.zeros((n, n), np.int64)
    for pred, (_, lab) in zip(preds, pairs, strict=True):
        cm += confusion_matrix(pred, np.asarray(Image.open(lab)), n)
    r = scores(cm)
    return {"miou": float(r["miou"]), "pixel_accuracy": float(r["pixel_accuracy"]),
            "confusion_matrix": cm.tolist()}


def _load_labels(path: Path, count: int) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"a{i}"] for i in range(count)]


def _save_labels(path: Path, preds: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"a{i}": p for i, p in enumerate(preds)})


def _isa(info: dict[str, Any]) -> str:
    f = info["features"]
    return "vnni" if f["AVX512VNNI"] else ("avx2" if f["AVX2"] else "other")


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    """int8 labels against float32 ones over a split. The float32 labels come from ``--reference``
    (a file this command saved, on any CPU: float32 is far too slow under qemu), else from
    ``--cache`` (per CPU kind and protocol), else are computed here."""
    pairs = paired_files(args.images, args.labels)
    if args.limit:
        pairs = pairs[:args.limit]
    t0 = time.perf_counter()
    info = cpu()
    float_preds, cache, reference = None, None, "computed here"
    if args.reference:
        float_preds, reference = _load_labels(args.reference, len(pairs)), args.reference.name
    elif args.cache:
        key = hashlib.sha256(args.float.read_bytes()).hexdigest()[:12]
        proto = f"{args.mode}-{args.scales}-{args.flip}-{len(pairs)}"
        cache = args.cache / f"float32-{key}-{_isa(info)}-{proto}.npz"
        if cache.is_file():
            float_preds, reference = _load_labels(cache, len(pairs)), cache.name
    int8_preds, protocol = _predict(args.int8, pairs, args, args.threads)
    t_int8 = time.perf_counter() - t0
    if args.save_int8:
        _save_labels(args.save_int8, int8_preds)
    if float_preds is None:
        float_preds, _ = _predict(args.float, pairs, args, args.threads)
        if cache is not None:
            _save_labels(cache, float_preds)
            reference = f"computed here, saved as {cache.name}"
    equal = sum(int(np.count_nonzero(a == b)) for a, b in zip(int8_preds, float_preds, strict=True))
    total = sum(a.size for a in int8_preds)
    n = protocol.pop("num_classes")
    return {"cpu": info, "isa": _isa(info), "float": args.float.name, "int8": args.int8.name,
            "images": len(pairs), **protocol, "pixels": total, "agreeing_pixels": equal,
            "agreement": equal / total, "float32_labels": reference,
            "int8_scores": _scores(int8_preds, pairs, n), "float32_scores": _scores(float_preds, pairs, n),
            "int8_seconds": round(t_int8, 1), "seconds": round(time.perf_counter() - t0, 1)}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Two label files of ``agreement`` (e.g. one artifact's int8 labels on two CPUs)."""
    with np.load(args.a) as za, np.load(args.b) as zb:
        if set(za.files) != set(zb.files):
            raise SystemExit(f"{args.a} and {args.b} hold different images")
        equal = sum(int(np.count_nonzero(za[k] == zb[k])) for k in za.files)
        total = sum(za[k].size for k in za.files)
        same = sum(bool(np.array_equal(za[k], zb[k])) for k in za.files)
    return {"a": args.a.name, "b": args.b.name, "images": len(za.files), "identical_images": same,
            "pixels": total, "agreeing_pixels": equal, "agreement": equal / total}


def logits(args: argparse.Namespace) -> dict[str, Any]:
    """Raw logits of every ``--every``-th image (one tile each), saved, or compared with a saved
    set from another CPU: are they the same bits?"""
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")[::args.every]
    engine = Engine(args.model, provider="cpu", intra_op_threads=args.threads, inter_op_threads=1,
                    max_batch=1)
    out = {f"a{i}": engine.run(calibration_tile(p, engine.meta.tile)) for i, p in enumerate(images)}
    result: dict[str, Any] = {"cpu": cpu(), "isa": _isa(cpu()), "model": args.model.name,
                              "images": [p.name for p in images]}
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.save, **out)
    if args.against:
        with np.load(args.against) as z:
            rows = []
            for k, got in out.items():
                want = z[k]
                rows.append({"identical": bool(np.array_equal(got, want)),
                             "max_abs_diff": float(np.abs(got - want).max()),
                             "max_relative_diff": float(np.abs(got - want).max() / np.abs(want).max()),
                             "label_agreement": float(np.mean(got.argmax(1) == want.argmax(1)))})
        result.update({"against": args.against.name, "identical_tiles": sum(r["identical"] for r in rows),
                       "max_abs_diff": max(r["max_abs_diff"] for r in rows),
                       "max_relative_diff": max(r["max_relative_diff"] for r in rows),
                       "min_label_agreement": min(r["label_agreement"] for r in rows), "tiles": rows})
    return result


def latency(args: argparse.Namespace) -> dict[str, Any]:
    path = ROOT / "scripts" / "candidate_report.py"
    spec = importlib.util.spec_from_file_location("candidate_report", path)
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    models = {p.name: p for p in args.models}
    return {"cpu": cpu(), **report.latency(models, args.image, args.runs, args.threads)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("cpu")
    t = sub.add_parser("tiny")
    q = sub.add_parser("quantize")
    q.add_argument("--model", type=Path, required=True)
    q.add_argument("--calibration", type=Path, required=True)
    q.add_argument("--images", type=int, default=32)
    q.add_argument("--output", type=Path, required=True)
    q.add_argument("--weights", choices=list(WEIGHT_TYPES), default=DEFAULT_SETTINGS.weights)
    q.add_argument("--reduce-range", action=argparse.BooleanOptionalAction,
                   default=DEFAULT_SETTINGS.reduce_range)
    a = sub.add_parser("agreement")
    a.add_argument("--float", type=Path, required=True)
    a.add_argument("--int8", type=Path, required=True)
    a.add_argument("--images", type=Path, required=True)
    a.add_argument("--labels", type=Path, required=True)
    a.add_argument("--mode", default="slide")
    a.add_argument("--scales", default=None)
    a.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--cache", type=Path)
    a.add_argument("--reference", type=Path,
                   help="float32 labels of this split and protocol (an --cache file), from any CPU")
    a.add_argument("--save-int8", type=Path, help="write the int8 labels here (.npz)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    lg = sub.add_parser("logits")
    lg.add_argument("--model", type=Path, required=True)
    lg.add_argument("--images", type=Path, required=True)
    lg.add_argument("--every", type=int, default=10)
    lg.add_argument("--save", type=Path)
    lg.add_argument("--against", type=Path)
    lat = sub.add_parser("latency")
    lat.add_argument("--models", type=Path, nargs="+", required=True)
    lat.add_argument("--image", type=Path, help="default: the first image of ../shared/data/camvid/val")
    lat.add_argument("--runs", type=int, default=40)
    for sp in (t, a, lat, lg):
        sp.add_argument("--threads", type=int, default=0)
    for sp in (t, q, a, lat, c, lg):
        sp.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.command == "latency" and args.image is None:
        args.image = sorted((ROOT.parent / "shared" / "data" / "camvid" / "val").glob("*.png"))[0]
    commands = {"tiny": tiny, "quantize": quantize, "agreement": agreement, "compare": compare,
                "logits": logits, "latency": latency}
    result = commands[args.command](args) if args.command != "cpu" else cpu()
    text = json.dumps(result, indent=1)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    shown = {k: v for k, v in result.items() if k not in ("candidates", "tiles")}
    for k in ("int8_scores", "float32_scores"):
        if k in shown:
            shown = {**shown, k: {kk: vv for kk, vv in shown[k].items() if kk != "confusion_matrix"}}
    print(json.dumps(shown, indent=1))
    if args.command == "tiny":
        for name, c in result["candidates"].items():
            print(f"{name:22s} max relative error {c['max_relative_error']:.5f}  "
                  f"min agreement {c['min_agreement']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
