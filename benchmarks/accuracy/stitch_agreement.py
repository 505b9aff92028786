"""Labels of the banded stitch against the full-size float64 oracle, and what each costs, on 12 Mpx images.

    python benchmarks/accuracy/stitch_agreement.py --json benchmarks/results/stitch_agreement.json

The image is a CamVid validation frame (``../shared/data/camvid/val``, read at
run time) upscaled to ``--size`` (default 3000 x 4000) with ``cv2.INTER_LINEAR``.
Cases:

* ``camvid-slide``, ``camvid-multiscale-flip``: the shipped model
  (``weights/pspnet_camvid.onnx``, 11 classes, tile 360x480, base 480);
* ``ade20k-slide``: a 150-class PSPNet-50 with the reference fixture's recipe
  weights (``tests/recipe.py``, ``tests/fixtures/reference/semseg_pspnet50``),
  converted and exported by ``model/`` (needs torch), tile 473, base 512.

The model runs once per case; its logits are cached under ``--cache`` (not in
the repository), so reruns only stitch. Each stitcher then runs in a child
process of its own (this script with ``--child``), which reports its wall
time (median of ``--repeats`` for ours), tracemalloc's peak (the logits are
loaded before tracing starts, so it is the stitch's own) and its peak RSS
growth (VmHWM, reset through ``/proc/self/clear_refs`` once the logits are in).

The oracle is ``tests/service/stitch_oracle.py``: for 11 classes the full-size
computation itself (what the service did before); for 150 classes at 12 Mpx
that needs ~15 GB, so the grouped oracle (OpenCV's resize of 16 classes at a
time, the same numbers) stands in, after the script checks on an 800x600 image
with the same working geometry that it equals the full-size oracle.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from service.protocol.peak_bytes import stitch_peak_bytes  # noqa: E402
from service.protocol.plan import TilePlan, plan_tiles  # noqa: E402
from service.protocol.stitch import stitch_labels  # noqa: E402
from tests.service.stitch_oracle import grouped_oracle_labels, oracle_labels  # noqa: E402

CAMVID_VAL = ROOT.parent / "shared" / "data" / "camvid" / "val"
MEAN = (123.675, 116.28, 103.53)
CASES: dict[str, dict[str, Any]] = {
    "camvid-slide": {"model": "camvid", "mode": "slide", "flip": False, "base": 480, "tile": (360, 480)},
    "camvid-multiscale-flip": {"model": "camvid", "mode": "multiscale", "flip": True, "base": 480,
                               "tile": (360, 480)},
    "ade20k-slide": {"model": "ade20k", "mode": "slide", "flip": False, "base": 512, "tile": (473, 473)},
}


def _image(size: tuple[int, int]) -> np.ndarray:
    first = sorted(CAMVID_VAL.glob("*.png"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(first)), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _plan(case: str, size: tuple[int, int]) -> TilePlan:
    spec = CASES[case]
    return plan_tiles(np.zeros((*size, 3), np.uint8), tile=spec["tile"], mode=spec["mode"], flip=spec["flip"],
                      base_size=spec["base"], mean=MEAN)


def _ade20k_model(cache: Path) -> Path:
    """The recipe weights in hszhao/semseg's format, converted and exported by the model CLI (once)."""
    path = cache / "pspnet50_ade20k_recipe.onnx"
    if path.exists():
        return path
    import torch

    from model.cli import main
    from tests.recipe import REFERENCE, recipe_weights

    weights = recipe_weights(REFERENCE / "semseg_pspnet50" / "keys.tsv")
    checkpoint = cache / "semseg_pspnet50_recipe.pth"
    torch.save({"epoch": 100, "state_dict": {"module." + k: torch.from_numpy(v) for k, v in weights.items()}},
               checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["convert", "--format", "semseg", "--checkpoint", str(checkpoint), "--dataset", "ade20k",
                     "--output", str(path)])
    if code != 0:
        raise SystemExit(f"conversion failed with status {code}")
    return path


def _logits(case: str, size: tuple[int, int], cache: Path) -> tuple[Path, float]:
    """Run the case's model on its tiles once; the logits and the run's seconds are cached."""
    out = cache / f"{case}-{size[0]}x{size[1]}.npy"
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists():
        return out, float(json.loads(meta.read_text())["model_s"])
    import onnxruntime as ort

    spec = CASES[case]
    model = ROOT / "weights" / "pspnet_camvid.onnx" if spec["model"] == "camvid" else _ade20k_model(cache)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    plan = plan_tiles(_image(size), tile=spec["tile"], mode=spec["mode"], flip=spec["flip"],
                      base_size=spec["base"], mean=MEAN)
    start = time.perf_counter()
    logits = np.concatenate([session.run(["logits"], {"image": plan.tiles[i:i + 4]})[0]
                             for i in range(0, plan.num_tiles, 4)])
    seconds = time.perf_counter() - start
    np.save(out, logits)
    meta.write_text(json.dumps({"model_s": seconds, "tiles": plan.num_tiles}))
    return out, seconds


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(case: str, impl: str, size: tuple[int, int], logits_path: Path, labels_path: Path,
          repeats: int) -> dict[str, Any]:
    """One stitcher on one case: wall time, tracemalloc peak, peak RSS growth; labels saved for the parent."""
    plan = _plan(case, size)
    logits = np.load(logits_path)
    stitcher = {"ours": stitch_labels, "oracle": oracle_labels, "grouped-oracle": grouped_oracle_labels}[impl]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, with the logits loaded
    rss = _status("VmRSS")
    times = []
    for _ in range(repeats if impl == "ours" else 1):
        start = time.perf_counter()
        labels = stitcher(plan, logits)
        times.append(time.perf_counter() - start)
    hwm = _status("VmHWM")
    np.save(labels_path, labels)
    tracemalloc.start()
    stitcher(plan, logits)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": statistics.median(times), "runs": len(times), "traced_peak_mb": traced / 2**20,
            "rss_growth_mb": (hwm - rss) / 2**20}


def _run_child(case: str, impl: str, size: tuple[int, int], logits: Path, labels: Path,
               repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, impl, str(logits), str(labels), "--size", str(size[0]),
           str(size[1]), "--repeats", str(repeats)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _grouped_check(cache: Path, logits: Path) -> dict[str, Any]:
    """The grouped oracle equals the full-size one: the same logits on an image with the same working size."""
    small = (600, 800)
    plan = _plan("ade20k-slide", small)
    big = np.load(logits)
    assert plan.num_tiles == big.shape[0], "800x600 must have the 4000x3000 image's working geometry"
    same = bool(np.array_equal(grouped_oracle_labels(plan, big), oracle_labels(plan, big)))
    return {"image": f"{small[1]}x{small[0]}", "grouped_equals_oracle": same}


def run(size: tuple[int, int], cache: Path, repeats: int, cases: list[str]) -> dict[str, Any]:
    cache.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"image": f"{sorted(CAMVID_VAL.glob('*.png'))[0].name} upscaled to "
                                       f"{size[1]}x{size[0]}", "cases": {}}
    for case in cases:
        logits, model_s = _logits(case, size, cache)
        plan = _plan(case, size)
        classes = int(np.load(logits, mmap_mode="r").shape[1])
        oracle = "grouped-oracle" if classes > 16 else "oracle"
        logits_bytes = plan.num_tiles * classes * plan.tile[0] * plan.tile[1] * 4
        bound = stitch_peak_bytes(plan.scales, plan.image_size, classes, plan.tile)
        row: dict[str, Any] = {"classes": classes, "tiles": plan.num_tiles, "model_s": model_s,
                               "logits_mb": logits_bytes / 2**20, "oracle_kind": oracle,
                               "bound_mb_without_logits": (bound - logits_bytes) / 2**20}
        for impl in ("ours", oracle):
            labels = cache / f"{case}-{impl}-labels.npy"
            row[impl] = _run_child(case, impl, size, logits, labels, repeats)
        ours = np.load(cache / f"{case}-ours-labels.npy")
        theirs = np.load(cache / f"{case}-{oracle}-labels.npy")
        row["differing_pixels"] = int(np.count_nonzero(ours != theirs))
        row["agreement_percent"] = 100.0 * float(np.mean(ours == theirs))
        if oracle == "grouped-oracle":
            row["grouped_check"] = _grouped_check(cache, logits)
        report["cases"][case] = row
        print(f"{case}: agreement {row['agreement_percent']:.4f}%", file=sys.stderr)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Image: {report['image']}", "",
             "Traced and RSS+ (peak RSS growth) leave out the logits; "
             "bound: stitch_peak_bytes less the logits.",
             "",
             "| case | classes | tiles | model s | agreement | ours s | ours traced MB | ours RSS+ MB "
             "| bound MB | oracle | oracle s | oracle traced MB | oracle RSS+ MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, r in report["cases"].items():
        o, t = r["ours"], r[r["oracle_kind"]]
        lines.append(f"| {case} | {r['classes']} | {r['tiles']} | {r['model_s']:.2f} | "
                     f"{r['agreement_percent']:.4f}% ({r['differing_pixels']} px) | "
                     f"{o['seconds']:.3f} | {o['traced_peak_mb']:.0f} | "
                     f"{o['rss_growth_mb']:.0f} | {r['bound_mb_without_logits']:.0f} | {r['oracle_kind']} | "
                     f"{t['seconds']:.2f} | {t['traced_peak_mb']:.0f} | {t['rss_growth_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stitch_agreement"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "stitch_agreement.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of our stitch (median)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", nargs=4, metavar=("CASE", "IMPL", "LOGITS", "LABELS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = (args.size[0], args.size[1])
    if args.child:
        case, impl, logits, labels = args.child
        print(json.dumps(child(case, impl, size, Path(logits), Path(labels), args.repeats)))
        return 0
    report = run(size, args.cache, args.repeats, args.cases)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
