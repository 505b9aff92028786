"""Everything needed to decide whether a trained checkpoint replaces the shipped CamVid model.

    python scripts/candidate_report.py --checkpoint runs/camvid_t1/best.pt [--out DIR] [--data DIR]
        [--runs 40] [--skip-int8] [--limit N]

Replaces nothing. In the output folder (default ``runs/candidates/<run>-<stem>``) it stages the files
under the shipped names and measures them against the shipped ones (``weights/``), by the commands
weights/README.md documents, run in this process:

1. ``pspnet_camvid.pt``: a copy of the checkpoint (training rewrites ``best.pt`` in place), then
   ``pspnet-model convert`` of that copy to ``pspnet_camvid.onnx`` (with the ``labels`` output);
2. ``pspnet-serve evaluate`` on CamVid val (slide, scales [1.0], no flip) of the candidate and, in
   the same run, of the shipped float32 and int8 files: the same code and data for both sides. On a
   full run the shipped figures are also checked against the card's ``weights/eval/*.json``;
3. ``pspnet-model quantize`` with the card's calibration (32 images spread over CamVid train) to
   ``pspnet_camvid_int8.onnx``, evaluated the same way;
4. the median batch-1 ONNX Runtime time of one tile (the first val image, as
   benchmarks/speed/ort_limit.py makes a tile), candidate and shipped sessions (configured as the
   server's) interleaved in one process, ``--runs`` each;
5. ``report.md`` and ``report.json`` (raw figures), and the verdict against issue #17's criteria
   printed: val mIoU >= 67.0, float32 latency <= 1.5x the shipped one, int8 within 0.5 mIoU.

``--limit N`` evaluates only the first N val images: for smoke tests, never a verdict.
The CamVid test split is never read: only ``train/`` (calibration) and ``val/``+``valannot/``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from model.cli import main as model_cli  # noqa: E402
from model.convert import file_sha256  # noqa: E402
from service.cli import main as serve_cli  # noqa: E402
from service.contract.artifact import INPUT_NAME, OUTPUT_NAME, read_meta, read_outputs  # noqa: E402
from service.contract.folders import paired_files  # noqa: E402
from service.engine.sessions import session_options  # noqa: E402

#: issue #17's acceptance criteria
MIN_MIOU = 67.0  # CamVid val mIoU %, single scale, float32 ONNX
MAX_LATENCY_RATIO = 1.5  # candidate / shipped median batch-1 float32 tile time
MAX_INT8_DROP = 0.5  # |int8 - float32| val mIoU, percentage points

SHIPPED = ROOT / "weights" / "pspnet_camvid.onnx"
SHIPPED_INT8 = ROOT / "weights" / "pspnet_camvid_int8.onnx"
SHIPPED_EVAL = ROOT / "weights" / "eval"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
# the shipped names, so that the staged files could be copied over them as they are
CHECKPOINT_NAME, FLOAT_NAME, INT8_NAME = "pspnet_camvid.pt", "pspnet_camvid.onnx", "pspnet_camvid_int8.onnx"


def shown(path: Path) -> str:
    """A path as the card writes its commands: relative to the repository root (``../shared/...``
    included), absolute only for what lies further out (a test's temporary folder)."""
    rel = os.path.relpath(Path(path).resolve(), ROOT)
    return str(Path(path).resolve()) if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def file_info(path: Path) -> dict[str, Any]:
    return {"path": shown(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _load_module(name: str) -> Any:
    return importlib.import_module(name)


def _load_script(name: str) -> Any:
    """Another script of this folder, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"candidate_report_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(prog: str, argv: list[str | Path]) -> tuple[str, str]:
    """Run ``pspnet-model`` / ``pspnet-serve`` in this process; returns (shell command, its stdout).

    In-process rather than a subprocess: the same code the installed commands run, without paying
    the torch/ORT imports again for each of the seven steps on a shared 2-core machine. Paths run
    absolute (whatever the working directory) and are shown as the card shows them.
    """
    entry = {"pspnet-model": model_cli, "pspnet-serve": serve_cli}[prog]
    command = shlex.join([prog, *(shown(a) if isinstance(a, Path) else a for a in argv)])
    print(f"$ {command}", flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = entry([str(a.resolve()) if isinstance(a, Path) else a for a in argv])
    print(out.getvalue(), end="", flush=True)
    if code != 0:
        raise RuntimeError(f"`{command}` exited {code}")
    return command, out.getvalue()


def export(checkpoint: Path, output: Path, name: str) -> str:
    """The card's convert command; the artifact must carry ``labels`` like the shipped one."""
    command, _ = run_cli("pspnet-model", [
        "convert", "--format", "native", "--checkpoint", checkpoint, "--dataset", "camvid",
        "--output", output, "--name", name])
    if not read_outputs(output).has_labels:
        raise RuntimeError(f"{output} has no `labels` output: the shipped artifact has one")
    return command


def evaluate(model: Path, data: Path, json_path: Path, limit: int | None,
             plot: Path | None = None) -> tuple[dict[str, Any], str]:
    """The card's single-scale evaluation; scales given explicitly, so the protocol cannot differ."""
    argv: list[str | Path] = [
        "evaluate", "--model", model, "--images", data / "val", "--labels", data / "valannot",
        "--mode", "slide", "--scales", "1.0", "--no-flip", "--json", json_path]
    if plot is not None:
        argv += ["--plot", plot]
    if limit:
        argv += ["--limit", str(limit)]
    command, _ = run_cli("pspnet-serve", argv)
    result = json.loads(json_path.read_text())
    if (result["mode"], result["scales"], result["flip"]) != ("slide", [1.0], False):
        raise RuntimeError(f"{json_path}: not the single-scale protocol: {result['mode']} "
                           f"{result['scales']} flip {result['flip']}")
    return result, command


def quantize(model: Path, calibration: Path, output: Path) -> str:
    """The card's quantize command (its default of 32 calibration images)."""
    command, _ = run_cli("pspnet-model", ["quantize", "--model", model, "--calibration", calibration,
                                          "--output", output])
    return command


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's figures in percent (the card's unit), without the confusion matrix."""
    return {"model": result["model"], "images": result["images"], "seconds": result["seconds"],
            "miou": 100 * result["miou"], "pixel_accuracy": 100 * result["pixel_accuracy"],
            "per_class_iou": {k: (None if v != v else 100 * v) for k, v in result["per_class_iou"].items()}}


def card_check(result: dict[str, Any], card_json: Path) -> dict[str, Any]:
    """Does this run's evaluation of a shipped file reproduce the card's figures (same confusion matrix)?"""
    if not card_json.is_file():
        return {"file": shown(card_json), "same_confusion_matrix": None, "note": "not found"}
    card = json.loads(card_json.read_text())
    same = card["confusion_matrix"] == result["confusion_matrix"]
    return {"file": shown(card_json), "same_confusion_matrix": same, "card_miou": 100 * card["miou"],
            "card_images": card["images"]}


def latency(models: dict[str, Path], image: Path, runs: int, threads: int = 0) -> dict[str, Any]:
    """Median batch-1 time of one tile per model, the models interleaved run by run.

    Interleaving (and rotating which model goes first in each round) spreads whatever else the
    cores are doing evenly over the models, so their ratio holds on a busy machine even where
    the absolute times do not.
    """
    tile_from_image = _load_module("benchmarks.speed.ort_limit").tile_from_image
    metas = {k: read_meta(p) for k, p in models.items()}
    tiles = {m.tile for m in metas.values()}
    if len(tiles) != 1:
        raise RuntimeError(f"the models take different tiles: { {k: m.tile for k, m in metas.items()} }")
    tile = tiles.pop()
    x = np.ascontiguousarray(tile_from_image(image, tile)[None])
    # sessions as the server makes them (service.engine.sessions: full optimisation, no spinning); logits
    # fetched, as benchmarks/speed/ort_limit.py does for the card's figures
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"],
                                        sess_options=session_options(threads, 1, spin=False))
                for k, p in models.items()}
    for s in sessions.values():
        for _ in range(2):  # warm-up: first runs allocate and pick kernels
            s.run([OUTPUT_NAME], {INPUT_NAME: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for i in range(runs):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            t0 = time.perf_counter()
            sessions[k].run([OUTPUT_NAME], {INPUT_NAME: x})
            times[k].append(time.perf_counter() - t0)
    per_model = {k: {"median_ms": 1000 * statistics.median(v), "p90_ms": 1000 * float(np.percentile(v, 90)),
                     "min_ms": 1000 * min(v), "runs": len(v), "runs_ms": [round(1000 * t, 3) for t in v]}
                 for k, v in times.items()}
    return {"tile": list(tile), "image": image.name, "threads": threads, "onnxruntime": ort.__version__,
            "batch": 1, "output": OUTPUT_NAME, "models": per_model}


def verdict(miou: float, latency_ratio: float | None, int8_diff: float | None,
            limit: int | None) -> dict[str, Any]:
    """Issue #17's three criteria on the candidate's figures (percent, ratio, percentage points).

    ``None`` marks a figure not measured; ``limit`` (a partial val) makes the whole thing a smoke
    test: the figures are printed, but nothing is judged on them.
    """
    def check(value: float | None, ok: bool, rule: str) -> dict[str, Any]:
        return {"value": value, "rule": rule, "pass": None if value is None else ok}

    criteria = {
        "miou": check(miou, miou >= MIN_MIOU, f"val mIoU >= {MIN_MIOU}"),
        "latency_ratio": check(latency_ratio,
                               latency_ratio is not None and latency_ratio <= MAX_LATENCY_RATIO,
                               f"float32 tile time <= {MAX_LATENCY_RATIO}x the shipped one"),
        "int8_diff": check(int8_diff, int8_diff is not None and abs(int8_diff) <= MAX_INT8_DROP,
                           f"int8 val mIoU within {MAX_INT8_DROP} of float32 (either way)"),
    }
    results = [c["pass"] for c in criteria.values()]
    if limit:
        overall = f"NOT A VERDICT: only {limit} val images (--limit)"
    elif False in results:
        overall = "FAILS the criteria"
    elif None in results:
        overall = "INCOMPLETE: a criterion was not measured"
    else:
        overall = "MEETS the criteria"
    return {"criteria": criteria, "overall": overall}


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def markdown(report: dict[str, Any]) -> str:
    old, new = report["baseline"], report["candidate"]
    limit = report["limit"]
    lines = [f"# Candidate report: {report['checkpoint']['source']}", ""]
    if limit:
        lines += [f"> **SMOKE TEST ONLY: `--limit {limit}` evaluated {new['float32']['images']} of the val "
                  "images. These figures are not val figures and decide nothing.**", ""]
    v = report["verdict"]
    lines += [f"**Verdict: {v['overall']}** (a report: it replaces nothing)", "",
              "| criterion (issue #17) | value | pass |", "| --- | --- | --- |"]
    for c in v["criteria"].values():
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        ok = "n/a" if c["pass"] is None else ("yes" if c["pass"] else "NO")
        lines.append(f"| {c['rule']} | {value} | {ok} |")
    ck = report["checkpoint"]
    # best_miou is the run's best so far, which is this checkpoint's own score only for best.pt
    lines += ["", f"Checkpoint: `{ck['source']}`, epoch {ck.get('epoch')} of {ck.get('epochs')}; the run "
              f"selects on {ck.get('selected_on')} (its best {ck.get('selected_on')} mIoU so far: "
              f"{_pct(None if ck.get('best_miou') is None else 100 * ck['best_miou'])})."]
    if ck.get("selected_on") == "val":
        lines.append("**It was selected on val: its val figure is optimistic.**")
    lines += ["", f"## Accuracy: CamVid val, {new['float32']['images']} images, slide, scales [1.0], no flip",
              "", "Both sides evaluated in this run, by the same `pspnet-serve evaluate`.", "",
              "| | shipped | candidate | difference |", "| --- | --- | --- | --- |"]
    for key, label in (("miou", "**mIoU**"), ("pixel_accuracy", "pixel accuracy")):
        lines.append(f"| {label} | {_pct(old['float32'][key])} | {_pct(new['float32'][key])} | "
                     f"{_pct(_diff(new['float32'][key], old['float32'][key]), True)} |")
    for name, iou in new["float32"]["per_class_iou"].items():
        before = old["float32"]["per_class_iou"].get(name)
        lines.append(f"| {name} | {_pct(before)} | {_pct(iou)} | {_pct(_diff(iou, before), True)} |")
    checks = report.get("card_checks") or {}
    for side, c in checks.items():
        if c.get("same_confusion_matrix") is not None:
            same = "the same confusion matrix" if c["same_confusion_matrix"] else "DIFFERENT figures"
            lines.append(f"\nShipped {side} against the card's `{c['file']}`: {same} "
                         f"(card mIoU {c['card_miou']:.2f}).")
    if "int8" in new:
        lines += ["", "## int8 (`pspnet-model quantize`, the card's calibration: 32 images over train)", "",
                  "| | shipped | candidate |", "| --- | --- | --- |",
                  f"| int8 mIoU | {_pct(old.get('int8', {}).get('miou'))} | {_pct(new['int8']['miou'])} |",
                  f"| int8 - float32, mIoU points | {_pct(old.get('int8_diff'), True)} | "
                  f"{_pct(new.get('int8_diff'), True)} |",
                  f"| int8 pixel accuracy | {_pct(old.get('int8', {}).get('pixel_accuracy'))} | "
                  f"{_pct(new['int8']['pixel_accuracy'])} |"]
    lat = report["latency"]
    m = lat["models"]
    lines += ["", f"## Latency: one {lat['tile'][0]}x{lat['tile'][1]} tile, batch 1, ONNX Runtime "
              f"{lat['onnxruntime']} CPU, {m['shipped_float32']['runs']} runs each, interleaved", "",
              "| | shipped | candidate | ratio |", "| --- | --- | --- | --- |"]
    for prec in ("float32", "int8"):
        a, b = m.get(f"shipped_{prec}"), m.get(f"candidate_{prec}")
        if a and b:
            lines.append(f"| {prec} median | {a['median_ms']:.1f} ms | {b['median_ms']:.1f} ms | "
                         f"{b['median_ms'] / a['median_ms']:.3f} |")
            lines.append(f"| {prec} p90 | {a['p90_ms']:.1f} ms | {b['p90_ms']:.1f} ms | |")
    lines += ["", "Absolute times depend on what else the cores were doing; the ratio, from interleaved "
              "runs, is the figure the criterion uses.", "", "## Files", "", "| file | bytes | sha256 |",
              "| --- | --- | --- |"]
    for f in report["files"].values():
        lines.append(f"| `{f['path']}` | {f['bytes']:,} | `{f['sha256']}` |")
    lines += ["", "## Commands (from the repository root)", "", "```sh",
              *report["commands"], "```", ""]
    return "\n".join(lines)


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """Epoch, selection split and score from a native checkpoint (what convert does not report)."""
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own format, not untrusted input
    state, cfg = ck.get("state") or {}, ck.get("train_config") or {}
    holdout = bool(cfg.get("holdout_fraction") or cfg.get("holdout_sequences"))
    return {"epoch": state.get("epoch"), "epochs": cfg.get("epochs"), "iteration": state.get("iteration"),
            "best_miou": state.get("best_miou"),
            "selected_on": "holdout" if holdout else ("val" if cfg.get("val_images") else "none")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="native .pt from `pspnet-model train`")
    p.add_argument("--out", type=Path, help="output folder (default runs/candidates/<run>-<stem>)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="CamVid folder with train/ val/ valannot/ (default: ../shared/data/camvid "
                   "beside the repository)")
    p.add_argument("--runs", type=int, default=40, help="latency runs per model")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0 = one per core")
    p.add_argument("--skip-int8", action="store_true", help="no quantisation, no int8 figures")
    p.add_argument("--limit", type=int, default=None, help="only the first N val images: smoke tests only")
    p.add_argument("--name", help="model name in the metadata (default: the shipped artifact's)")
    p.add_argument("--baseline", type=Path, default=SHIPPED, help="the shipped float32 artifact")
    p.add_argument("--baseline-int8", type=Path, default=SHIPPED_INT8, help="the shipped int8 artifact")
    args = p.parse_args(argv)
    if args.runs < 1 or (args.limit is not None and args.limit < 1):
        p.error("--runs and --limit must be at least 1")
    checkpoint = args.checkpoint
    out = args.out or ROOT / "runs" / "candidates" / f"{checkpoint.resolve().parent.name}-{checkpoint.stem}"
    (out / "eval").mkdir(parents=True, exist_ok=True)
    data = args.data
    pairs = paired_files(data / "val", data / "valannot")  # fails early on a wrong --data
    t_start = time.perf_counter()
    commands: list[str] = []
    seconds: dict[str, float] = {}

    def step(name: str) -> None:
        seconds[name] = round(time.perf_counter() - t_start - sum(seconds.values()), 1)

    # the copy is what everything below reads: a training run may replace best.pt meanwhile
    staged = out / CHECKPOINT_NAME
    shutil.copyfile(checkpoint, staged)
    commands.append(f"cp {shlex.quote(shown(checkpoint))} {shlex.quote(shown(staged))}")
    facts = checkpoint_facts(staged)
    cand = out / FLOAT_NAME
    name = args.name or read_meta(args.baseline).name
    commands.append(export(staged, cand, name))
    step("export")

    cand_eval, cmd = evaluate(cand, data, out / "eval" / "val_single_scale.json", args.limit,
                              plot=out / "eval" / "val_single_scale.png")
    commands.append(cmd)
    base_eval, cmd = evaluate(args.baseline, data, out / "eval" / "shipped_val_single_scale.json", args.limit)
    commands.append(cmd)
    step("evaluate float32")
    report: dict[str, Any] = {
        "limit": args.limit, "val_images_total": len(pairs), "data": shown(data),
        "checkpoint": {"source": shown(checkpoint), **facts},
        "candidate": {"float32": summary(cand_eval)}, "baseline": {"float32": summary(base_eval)},
        "card_checks": {},
    }
    # the card's figures are of all of val: a partial run cannot be held against them
    if not args.limit and args.baseline.resolve() == SHIPPED.resolve():
        report["card_checks"]["float32"] = card_check(base_eval, SHIPPED_EVAL / "val_single_scale.json")

    latency_models = {"shipped_float32": args.baseline, "candidate_float32": cand}
    if not args.skip_int8:
        cand_int8 = out / INT8_NAME
        commands.append(quantize(cand, data / "train", cand_int8))
        step("quantize")
        int8_eval, cmd = evaluate(cand_int8, data, out / "eval" / "val_single_scale_int8.json", args.limit)
        commands.append(cmd)
        report["candidate"]["int8"] = summary(int8_eval)
        report["candidate"]["int8_diff"] = 100 * (int8_eval["miou"] - cand_eval["miou"])
        latency_models["candidate_int8"] = cand_int8
        if args.baseline_int8.is_file():
            base_int8, cmd = evaluate(args.baseline_int8, data,
                                      out / "eval" / "shipped_val_single_scale_int8.json", args.limit)
            commands.append(cmd)
            report["baseline"]["int8"] = summary(base_int8)
            report["baseline"]["int8_diff"] = 100 * (base_int8["miou"] - base_eval["miou"])
            latency_models["shipped_int8"] = args.baseline_int8
            if not args.limit and args.baseline_int8.resolve() == SHIPPED_INT8.resolve():
                report["card_checks"]["int8"] = card_check(base_int8,
                                                           SHIPPED_EVAL / "val_single_scale_int8.json")
        step("evaluate int8")

    print(f"latency: {args.runs} interleaved runs of each of {', '.join(latency_models)}", flush=True)
    lat = latency(latency_models, pairs[0][0], args.runs, args.threads)
    step("latency")
    ratio = lat["models"]["candidate_float32"]["median_ms"] / lat["models"]["shipped_float32"]["median_ms"]
    report["latency"] = {**lat, "float32_ratio": ratio}
    report["files"] = {k: file_info(path) for k, path in {
        "candidate_checkpoint": staged, "candidate_float32": cand,
        "candidate_int8": out / INT8_NAME if not args.skip_int8 else None,
        "shipped_float32": args.baseline,
        "shipped_int8": args.baseline_int8 if "shipped_int8" in latency_models else None}.items() if path}
    report["commands"] = commands
    report["verdict"] = verdict(report["candidate"]["float32"]["miou"], ratio,
                                report["candidate"].get("int8_diff"), args.limit)
    report["seconds"] = seconds
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))

    new, old = report["candidate"], report["baseline"]
    if args.limit:
        print(f"\n*** SMOKE TEST: only {args.limit} val images (--limit): not val figures ***")
    print(f"\nval mIoU: shipped {old['float32']['miou']:.2f}, candidate {new['float32']['miou']:.2f} "
          f"({new['float32']['images']} images)")
    if "int8" in new:
        print(f"int8 mIoU: candidate {new['int8']['miou']:.2f} ({new['int8_diff']:+.2f} vs float32)")
    print(f"float32 tile: shipped {lat['models']['shipped_float32']['median_ms']:.1f} ms, candidate "
          f"{lat['models']['candidate_float32']['median_ms']:.1f} ms, ratio {ratio:.3f}")
    for c in report["verdict"]["criteria"].values():
        state = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "FAIL")
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        print(f"  {state:>4}  {c['rule']}: {value}")
    print(f"verdict: {report['verdict']['overall']}")
    print(f"report: {shown(out / 'report.md')}, {shown(out / 'report.json')} ({sum(seconds.values()):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
