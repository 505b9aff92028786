"""Bulk segmentation: ``pspnet-serve segment`` in one process vs ``--ray`` with 1 and 2 workers.

    python benchmarks/speed/bulk.py --out benchmarks/results   # 101 CamVid val images, 3 repeats
    python benchmarks/speed/bulk.py --out /tmp/b --repeats 1 --limit 8   # a smoke run

Each variant runs the real command in a fresh process (``python -m service.cli segment``) over
the CamVid val folder (``--images``, read where it lies, never copied), with the shipped model,
the colour output and the default batch of 4 tiles, into a fresh output folder, so nothing is
skipped. ``--ray`` runs start their own local Ray cluster (``RAY_ADDRESS`` is removed from their
environment). The machine's cores (``--cores``, default: the ones this process may use) are
shared out alike: the plain command runs ONNX Runtime on all of them; Ray with W workers gives
each worker cores // W CPUs (its ONNX Runtime threads).

Figures per variant, the median over ``--repeats`` (variants interleaved in rotating order,
so that a noisy minute hits each alike):

- end to end: images / wall time of the whole command (process start, model load, Ray's
  cluster and actors, reading, decoding, the model, encoding, writing);
- after start-up: (images - 1) / (wall of the run - wall of the same command on one image),
  i.e. the rate once running, start-up costs taken out.

The outputs of all variants are compared byte for byte (first repeat). Writes ``OUT/bulk.md``
and ``OUT/raw/bulk.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "camvid" / "val"
DEFAULT_MODEL = ROOT / "weights" / "pspnet_camvid.onnx"


def variants(cores: int) -> dict[str, list[str]]:
    """Name -> the flags that make the variant, on ``cores`` cores."""
    return {
        "plain": [],
        "ray, 1 worker": ["--ray", "--num-workers", "1", "--cpus-per-worker", str(cores)],
        "ray, 2 workers": ["--ray", "--num-workers", "2", "--cpus-per-worker", str(max(1, cores // 2))],
    }


def run(inputs: list[str], flags: list[str], model: Path, out: Path) -> float:
    """Wall seconds of one ``segment`` command; raises if it does not exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "service.cli", "segment", *inputs, "--out", str(out), "--model", str(model),
           *flags]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    return names == other and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def measure(images: list[str], model: Path, cores: int, repeats: int) -> dict[str, Any]:
    table = variants(cores)
    names = list(table)
    walls: dict[str, list[float]] = {n: [] for n in names}
    startup: dict[str, list[float]] = {n: [] for n in names}
    identical = None
    with tempfile.TemporaryDirectory(prefix="bench_bulk_") as tmp:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                key = name.replace(", ", "_").replace(" ", "_")
                out = Path(tmp) / f"{key}_{r}"
                walls[name].append(run(images, table[name], model, out))
                startup[name].append(run(images[:1], table[name], model, Path(tmp) / f"{key}_{r}_one"))
                print(f"repeat {r + 1}/{repeats} {name}: {walls[name][-1]:.2f} s for {len(images)} images, "
                      f"{startup[name][-1]:.2f} s for one", flush=True)
            if r == 0:
                first = Path(tmp) / "plain_0"
                identical = all(same_outputs(first, Path(tmp) / f"{n.replace(', ', '_').replace(' ', '_')}_0")
                                for n in names[1:])
    rows = []
    for name in names:
        wall, one = statistics.median(walls[name]), statistics.median(startup[name])
        rows.append({"variant": name, "flags": table[name], "wall_s": round(wall, 3),
                     "one_image_s": round(one, 3), "images_per_s": round(len(images) / wall, 2),
                     "images_per_s_after_startup": round((len(images) - 1) / (wall - one), 2) if wall > one
                     else None,
                     "walls_s": [round(w, 3) for w in walls[name]],
                     "one_image_walls_s": [round(w, 3) for w in startup[name]]})
    return {"rows": rows, "outputs_identical": identical}


def machine(cores: int) -> dict[str, Any]:
    import onnxruntime
    import ray

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [f"# Bulk segmentation: plain vs Ray ({result['started']})", "",
             f"Generated by `benchmarks/speed/bulk.py`. {s['images']} CamVid val images (360x480 PNG), "
             f"`{s['model']}`, colour output, batch of 4 tiles; {m['cpu']}, {m['cores']} cores; "
             f"Ray {m['ray']}, ONNX Runtime {m['onnxruntime']}; load average {m['loadavg_at_start']} at "
             f"start, {result['loadavg_at_end']} at end. Median of {s['repeats']} repeats, variants "
             "interleaved. Each run is a fresh `pspnet-serve segment` process into an empty folder; Ray "
             "runs start their own local cluster. Outputs of every variant identical byte for byte: "
             f"{'yes' if result['outputs_identical'] else 'NO'}.", "",
             "| variant | flags | wall s | images/s end to end | one image s | images/s after start-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        after = "n/a" if r["images_per_s_after_startup"] is None else f"{r['images_per_s_after_startup']:.2f}"
        lines.append(f"| {r['variant']} | `{' '.join(r['flags']) or '(none)'}` | {r['wall_s']:.2f} | "
                     f"{r['images_per_s']:.2f} | {r['one_image_s']:.2f} | {after} |")
    lines += ["", "\"one image s\": the same command on one image (start-up: process, model, Ray cluster and "
              "actors); \"after start-up\": (images - 1) / (wall - one image s)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images (CamVid val)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="only the first N images (a smoke run)")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    files = sorted(str(f) for f in args.images.iterdir() if f.suffix.lower() == ".png")
    if args.limit:
        files = files[:args.limit]
    if len(files) < 2:
        p.error(f"need at least 2 images in {args.images}")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result: dict[str, Any] = {"started": started, "machine": machine(args.cores),
                              "settings": {"images": len(files), "repeats": args.repeats,
                                           "model": args.model.name, "output": "color", "max_batch": 4}}
    result.update(measure(files, args.model.resolve(), args.cores, args.repeats))
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "bulk.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "bulk.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'bulk.md'} and {args.out / 'raw' / 'bulk.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
