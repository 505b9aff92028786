"""The served figures of issue #26 in one run: 1 worker against N, the GPU's utilisation, the load
generator's CPU share, multi-scale with flip, and a 12 MP photo's peak GPU memory.

For each ``--workers`` count: one ``pspnet-serve`` (``--provider``; ``--fake-gpu``: the engine's
runs replaced by sleeps of the H200's times, benchmarks/speed/feed_gpu.py, to try this on a CPU),
then ``python -m benchmarks load`` against it: the 360x480 image (``--image``, multipart, colour
PNG) in ``mode=whole`` at each ``--concurrency``, then the model's multi-scale (6 scales) with flip
at ``--multiscale-concurrency``; ``--duration`` seconds each. Meanwhile ``nvidia-smi`` (where there
is one) is sampled every 200 ms: mean GPU utilisation and the most memory used; the load
generator's CPU seconds come from its own rusage. With ``--large-model``, ``python -m benchmarks
large-image`` then sends the 12 MP photo once (slide) to a one-worker server on that model,
nvidia-smi's peak memory beside it. gpu_check.sh runs it on the GPU machine.

    python -m benchmarks served-sweep --image VAL.png --workers 1 16 --json served.json --md served.md
    python -m benchmarks served-sweep --image VAL.png --workers 1 2 --concurrency 1 8 --duration 5 \\
        --fake-gpu --provider cpu --json /tmp/s.json          # a dry run on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.load.localserver import free_port, stop, wait_ready  # noqa: E402
from benchmarks.speed.feed_gpu import SITECUSTOMIZE, _children, _group, _threads  # noqa: E402


class GpuSampler:
    """nvidia-smi every 200 ms in a thread: utilisation (%) and memory used (MiB); nothing without it."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                   "--format=csv,noheader,nounits", "--id=0"], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                util, mem = (float(v) for v in done.stdout.split(",")[:2])
                self.samples.append((util, mem))
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_mem_max_mib": None}
        return {"gpu_util_mean_pct": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
                "gpu_mem_max_mib": max(m for _, m in self.samples)}


def _names(scratch: Path, pid: int) -> dict[str, str]:
    try:
        return {str(k): v for k, v in json.loads((scratch / f"{pid}.json").read_text()).items()}
    except (OSError, ValueError):
        return {}


def load_point(url: str, image: Path, concurrency: int, duration: float, extra: list[str],
               scratch: Path, pids: list[int]) -> dict[str, Any]:
    """One closed-loop load run; its report, the GPU's samples, the server's CPU by thread group
    (``pids``: its processes) and the load generator's CPU share."""
    out = scratch / "point.json"
    before = {p: _threads(p, _names(scratch, p)) for p in pids}
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "load", "--url", url, "--image",
                                 str(image), "--concurrency", str(concurrency), "--duration", str(duration),
                                 "--multipart", "--json", str(out), *extra],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the load generator failed ({status})")
    report = json.loads(out.read_text())
    cores = len(os.sched_getaffinity(0))
    groups: dict[str, float] = {}
    for p in pids:
        for tid, (name, cpu) in _threads(p, _names(scratch, p)).items():
            g = _group(name, tid, p)
            groups[g] = groups.get(g, 0.0) + cpu - before[p].get(tid, (name, 0.0))[1]
    return {"concurrency": concurrency, "throughput_rps": report["throughput_rps"],
            "tiles_per_s": report.get("tiles_per_s"), "latency_ms": report["latency_ms"],
            "errors": report["errors"], "server_stage_mean_ms": report.get("server_stage_mean_ms"),
            "load_generator_cpu_share": round((usage.ru_utime + usage.ru_stime) / (wall * cores), 3),
            "server_cpu_share_by_thread": {k: round(v / (wall * cores), 3) for k, v in
                                           sorted(groups.items(), key=lambda kv: -kv[1]) if v > 0},
            **gpu.summary()}


def serve(args: argparse.Namespace, workers: int, scratch: Path,
          model: Path) -> tuple[subprocess.Popen[bytes], str]:
    # sitecustomize names the server's threads for the CPU table (and with --fake-gpu fakes the engine)
    site = scratch / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PSPNET_LOG_LEVEL": "warning", "PSPNET_FAKE_GPU": "1" if args.fake_gpu else "0",
           "PSPNET_FAKE_GPU_THREADS": str(scratch), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--model", str(model), "--host",
                             "127.0.0.1", "--port", str(port), "--provider", args.provider, "--workers",
                             str(workers)],
                            env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/readyz", proc, seconds=600)
    return proc, url


def large_image(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    out = scratch / "large.json"
    with GpuSampler() as gpu:
        subprocess.run([sys.executable, "-m", "benchmarks", "large-image", "--model", str(args.large_model),
                        "--image", str(args.large_image or args.image), "--modes", "slide", "--repeat", "1",
                        f"--server-args=--provider={args.provider}", "--server-log",
                        str(scratch / "large-server.log"), "--json", str(out)], cwd=ROOT, check=True)
    return {**json.loads(out.read_text()), **gpu.summary()}


def targets(report: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Issue #26's targets as fractions of the engine's ceilings of this run (gpu_check.sh's raw.json)."""
    def best(config: str) -> float:
        return max(r["tiles_per_s"] for r in raw["batches"] if r["config"] == config)

    def at(config: str, batch: int) -> float:
        return next(float(r["median_ms"]) for r in raw["batches"]
                    if r["config"] == config and r["batch"] == batch)

    labels, logits = best("engine_labels"), best("engine_logits")
    out: dict[str, Any] = {"labels_ceiling_tiles_per_s": round(labels, 1),
                           "logits_ceiling_tiles_per_s": round(logits, 1),
                           "engine_logits_over_ort_run_at_batch_8": round(at("engine_logits", 8)
                                                                          / at("ort_run_logits", 8), 2)}
    for run in report["runs"]:
        ceiling = logits if run["mode"].startswith("multiscale") else labels
        if run["tiles_per_s"]:
            out[f"{run['workers']} workers, {run['mode']}, c={run['concurrency']}"] = round(
                run["tiles_per_s"] / ceiling, 3)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["", "## Served: 1 worker against N (issue #26)", "",
             f"`python -m benchmarks served-sweep`, provider {report['provider']}"
             + (" (fake GPU engine)" if report["fake_gpu"] else "") + f", {report['image']} as a multipart "
             f"upload, colour PNG back, {report['duration']} s closed loop each (raw: served.json).", "",
             "| workers | mode | c | req/s | tiles/s | p50 ms | p99 ms | errors | GPU util % | GPU MiB max | "
             "load generator CPU | server CPU by thread | server stages, mean ms |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    for run in report["runs"]:
        lat, stages = run["latency_ms"], run.get("server_stage_mean_ms") or {}
        by_thread = run["server_cpu_share_by_thread"]
        errors = ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "-"
        lines.append(f"| {run['workers']} | {run['mode']} | {run['concurrency']} | {run['throughput_rps']} | "
                     f"{run['tiles_per_s']} | {lat.get('p50')} | {lat.get('p99')} | {errors} | "
                     f"{run['gpu_util_mean_pct']} | {run['gpu_mem_max_mib']} | "
                     f"{run['load_generator_cpu_share']:.0%} | "
                     + ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in by_thread.items())
                     + " | " + ", ".join(f"{k} {v}" for k, v in stages.items()) + " |")
    if report.get("targets"):
        t = report["targets"]
        lines += ["", f"Against the engine's ceilings of this run (labels {t['labels_ceiling_tiles_per_s']} "
                  f"tiles/s, logits {t['logits_ceiling_tiles_per_s']}; targets: whole at c=64 >= 0.25 of "
                  "labels, multi-scale + flip >= 0.50 of logits, engine logits at batch 8 <= 1.3x a plain "
                  f"run: {t['engine_logits_over_ort_run_at_batch_8']}x):", ""]
        lines += [f"- {k}: {v}" for k, v in t.items() if "workers" in k]
    big = report.get("large")
    if big:
        row = big["rows"][0]
        lines += ["", f"12 MP photo ({big['upload']['size']}) on `{big['model']}`, slide, one worker: "
                  f"{json.dumps({k: v for k, v in row.items() if k != 'runs'})}; GPU memory at most "
                  f"{big['gpu_mem_max_mib']} MiB (nvidia-smi, whole card)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "pspnet_camvid.onnx")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu", "auto"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--multiscale-concurrency", type=int, default=8, help="0: no multi-scale run")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--fake-gpu", action="store_true", help="sleep for the H200's batch times, not run")
    ap.add_argument("--large-model", type=Path, help="the 150-class model of the 12 MP photo (or none)")
    ap.add_argument("--large-image", type=Path, help="the photo to upscale to 12 MP (default --image)")
    ap.add_argument("--ceilings", type=Path, help="gpu_check.sh's raw.json: report the targets as fractions")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    runs = []
    report: dict[str, Any] = {"image": str(args.image), "provider": args.provider, "fake_gpu": args.fake_gpu,
                              "duration": args.duration, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="served-sweep-") as tmp:
        scratch = Path(tmp)
        for workers in args.workers:
            proc, url = serve(args, workers, scratch, args.model)
            try:
                points = [("whole", c, ["--mode", "whole"]) for c in args.concurrency]
                if args.multiscale_concurrency:
                    points.append(("multiscale+flip", args.multiscale_concurrency,
                                   ["--mode", "multiscale", "--flip", "--timeout", "300"]))
                time.sleep(1.5)  # the thread names written once
                pids = _children(proc.pid) if workers > 1 else [proc.pid]
                for mode, c, extra in points:
                    runs.append({"workers": workers, "mode": mode,
                                 **load_point(url, args.image, c, args.duration, extra, scratch, pids)})
                    print(json.dumps(runs[-1]), flush=True)
            finally:
                stop(proc)
        if args.large_model is not None:
            report["large"] = large_image(args, scratch)
    if args.ceilings is not None:
        report["targets"] = targets(report, json.loads(args.ceilings.read_text()))
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.md is not None:
        with args.md.open("a") as f:
            f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
