"""Where the server's CPU goes when the model is not the bottleneck (issue #26, "Feed the GPU").

The real server (``pspnet-serve``, the shipped model, default settings) with its engine's runs
replaced by a fake that sleeps for the H200's measured time per batch (engine with IO binding,
benchmarks/results/gpu/raw.json: labels 1.84 ms at batch 1 ... 10.6 ms at 16; logits 2.54 ... 56.2)
and returns zeros, so the profile needs no GPU: everything else (HTTP, decode, plan, batching,
encode) is the server's own code. The fake is installed by a ``sitecustomize`` module on
PYTHONPATH, so the workers a supervisor starts get it too.

Per point (``--workers`` x ``--concurrency``): ``python -m benchmarks load`` for ``--duration``
seconds (360x480 PNG, multipart, ``mode=whole``, colour PNG), and meanwhile

- every server thread's CPU seconds from /proc (grouped: the event loop, the ``pspnet-cpu`` pool,
  the batcher's runner threads, ONNX Runtime's threads, the rest), and the load generator's own;
- with ``--py-spy`` (``pip install py-spy``), py-spy sampling each server process twice: the
  threads holding the GIL (``--gil``), and every thread on a CPU, waiting or not (``--idle``),
  each sample's innermost frame of ours sorted into a stage.

    python -m benchmarks feed-gpu --image VAL.png --out benchmarks/results [--py-spy]
    python -m benchmarks feed-gpu --image VAL.png --workers 1 2 --concurrency 8 64 --duration 15

Writes ``feed_gpu.md`` and ``raw/feed_gpu.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.load.localserver import free_port, stop, wait_ready  # noqa: E402

#: H200, engine with IO binding (benchmarks/results/gpu/raw.json, 2026-11-30), ms per batch of n
GPU_MS = {
    "labels": [1.84, 1.96, 2.21, 2.75, 3.09, 3.61, 4.31, 4.75, 5.21, 5.67, 5.83, 6.66, 7.23, 8.8, 9.85, 10.6],
    "logits": [2.54, 3.16, 4.61, 4.81, 16.54, 19.98, 26.63, 28.86, 34.17, 37.35, 36.52, 37.97, 46.97, 52.45,
               51.54, 56.17],
}
SPY_RATE = 100  # py-spy samples a second
SITECUSTOMIZE = "import benchmarks.speed.feed_gpu as f\nf.install_fake()\n"
#: a sample's innermost frame of ours (file path part -> stage), first match wins
STAGES = (("codec/decode", "decode"), ("codec/sniff", "decode"), ("PIL/", "decode"), ("cv2", "decode"),
          ("simplejpeg", "decode"), ("codec/encode", "encode"), ("codec/outputs", "encode"),
          ("protocol/", "plan + stitch"), ("pipeline/", "chain"), ("engine/", "batcher + engine"),
          ("feed_gpu", "fake GPU (sleep)"), ("api/", "routes, middleware"), ("uvicorn/", "HTTP (uvicorn)"),
          ("h11", "HTTP (uvicorn)"), ("httptools", "HTTP (uvicorn)"), ("starlette/", "HTTP (starlette)"),
          ("fastapi/", "HTTP (starlette)"), ("multipart", "HTTP (starlette)"), ("anyio/", "asyncio"),
          ("asyncio/", "asyncio"), ("telemetry/", "telemetry"), ("prometheus_client", "telemetry"),
          ("concurrent/futures", "thread pool"), ("threading.py", "thread pool"))


def install_fake() -> None:
    """In a server process: with PSPNET_FAKE_GPU=1, Engine.run_outputs becomes a sleep of the GPU's
    time and zeros; with PSPNET_FAKE_GPU_THREADS, the Python names of its threads are written there."""
    import threading

    folder = os.environ.get("PSPNET_FAKE_GPU_THREADS")
    if folder:  # Python 3.11 names no OS thread: write native id -> Python thread name, each second

        def names() -> None:
            while True:
                mapping = {t.native_id: t.name for t in threading.enumerate()}
                Path(folder, f"{os.getpid()}.json").write_text(json.dumps(mapping))
                time.sleep(1)

        threading.Thread(target=names, daemon=True, name="feed-gpu-names").start()
    if os.environ.get("PSPNET_FAKE_GPU") != "1":
        return
    import numpy as np

    from service.engine import sessions

    def run_outputs(self: Any, tiles: Any, names: Any, *, session: int = 0) -> dict[str, Any]:
        n, _, h, w = tiles.shape
        wanted = tuple(names)
        time.sleep(sum(GPU_MS[name][min(n, 16) - 1] for name in wanted) / 1000)  # releases the GIL
        shapes = {"logits": (n, self.meta.num_classes, h, w), "labels": (n, h, w)}
        return {name: np.zeros(shapes[name], dtype=self._dtypes[name]) for name in wanted}

    sessions.Engine.run_outputs = run_outputs  # type: ignore[method-assign]


def _threads(pid: int, names: dict[str, str]) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of every thread of ``pid`` now; ``names``: Python's names."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
            name = names.get(task.name) or (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _group(name: str, tid: int, pid: int) -> str:
    if tid == pid:
        return "event loop (main thread)"
    if name.startswith("pspnet-cpu"):
        return "pspnet-cpu pool (decode, plan, encode)"
    if name.startswith("pspnet-batch"):
        return "batcher runner threads"
    if name in ("python", "python3") or name.startswith("onnxruntime"):
        return "threads Python did not start (ONNX Runtime's)"
    return f"other ({name})"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _py_spy(pids: list[int], seconds: float, folder: Path, mode: str) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [subprocess.Popen([exe, "record", "--pid", str(p), "--duration", str(int(seconds)),
                              "--rate", str(SPY_RATE), "--format", "raw", f"--{mode}", "--nonblocking",
                              "-o", str(folder / f"{mode}-{p}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in pids]


def _stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for part, stage in STAGES:
            if part in frame:
                return stage
    return "other"


def _stages(files: list[Path]) -> dict[str, int]:
    count: Counter[str] = Counter()
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit():
                count[_stage_of(stack)] += int(n)
    return dict(count.most_common())


def run_point(args: argparse.Namespace, workers: int, concurrency: int, scratch: Path,
              fake: bool = True) -> dict[str, Any]:
    port = free_port()
    site = scratch / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PSPNET_FAKE_GPU": "1" if fake else "0", "PSPNET_LOG_LEVEL": "warning",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PSPNET_FAKE_GPU_THREADS": str(scratch)}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "--model", str(args.model),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                              env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server, seconds=120)
        pids = _children(server.pid) if workers > 1 else [server.pid]
        out = scratch / f"load-{workers}-{concurrency}.json"
        time.sleep(1.5)  # the thread names written once

        def names(p: int) -> dict[str, str]:
            return {str(k): v for k, v in json.loads((scratch / f"{p}.json").read_text()).items()}

        before = {p: _threads(p, names(p)) for p in pids}
        spies = _py_spy(pids, args.duration - 2, scratch, "gil") if args.py_spy else []
        t0 = time.perf_counter()
        load = subprocess.Popen([sys.executable, "-m", "benchmarks", "load", "--url", f"http://127.0.0.1:{port}",
                                 "--image", str(args.image), "--concurrency", str(concurrency), "--duration",
                                 str(args.duration), "--multipart", "--mode", "whole", "--json", str(out)],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(load.pid, 0)
        load.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        after = {p: _threads(p, names(p)) for p in pids}
        for s in spies:
            s.wait()
        gil = _stages([scratch / f"gil-{p}.txt" for p in pids])
        # the share of the sampled time some thread held each process's GIL (py-spy --gil samples
        # only the holder, at most one sample a tick)
        ticks = SPY_RATE * (args.duration - 2)
        held = [sum(_stages([scratch / f"gil-{p}.txt"]).values()) / ticks for p in pids]
        report = json.loads(out.read_text())
    finally:
        stop(server)
    groups: Counter[str] = Counter()
    for p in pids:
        for tid, (name, cpu) in after[p].items():
            groups[_group(name, tid, p)] += cpu - before[p].get(tid, (name, 0.0))[1]
    ok = report["ok"]
    return {"workers": workers, "concurrency": concurrency, "wall_s": round(wall, 2),
            "throughput_rps": report["throughput_rps"], "latency_ms": report["latency_ms"],
            "errors": report["errors"], "ok": ok, "server_stage_mean_ms": report.get("server_stage_mean_ms"),
            "server_cpu_s": {k: round(v, 2) for k, v in groups.most_common()},
            "server_cpu_ms_per_ok": round(sum(groups.values()) / ok * 1000, 2) if ok else None,
            "load_generator_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "cores": len(os.sched_getaffinity(0)), "gil_samples_by_stage": gil,
            "gil_held_share": [round(h, 3) for h in held] if args.py_spy else None}


HEADER = ("engine", "workers", "c", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "load generator CPU",
          "server CPU", "event loop", "cpu pool", "runner threads", "other threads", "GIL held, per process")


def markdown(points: list[dict[str, Any]]) -> str:
    lines = ["# Feed the GPU: where the CPU goes (fake GPU engine)", "",
             "Written by `python -m benchmarks feed-gpu`. CPU shares are of the load run's wall time "
             "times the machine's cores.", "",
             "| " + " | ".join(HEADER) + " |", "| --- |" + " ---: |" * (len(HEADER) - 2) + " --- |"]
    for p in points:
        cap = p["wall_s"] * p["cores"]
        g = p["server_cpu_s"]

        def share(*keys: str, g: dict[str, float] = g, cap: float = cap) -> str:
            return f"{sum(v for k, v in g.items() if k.startswith(keys)) / cap:.0%}"

        lat = p["latency_ms"]
        cells = [p.get("engine", "fake GPU"), p["workers"], p["concurrency"], p["throughput_rps"], lat["p50"],
                 lat["p99"], p["server_cpu_ms_per_ok"], f"{p['load_generator_cpu_s'] / cap:.0%}",
                 f"{sum(g.values()) / cap:.0%}", share("event loop"), share("pspnet-cpu"), share("batcher"),
                 share("threads", "other"), ", ".join(f"{h:.0%}" for h in p["gil_held_share"] or [])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for p in points:
        s = p["gil_samples_by_stage"]
        if s:
            total = sum(s.values())
            lines.append(f"\npy-spy, the GIL's holder, {p.get('engine', 'fake GPU')}, {p['workers']} "
                         f"worker(s), c={p['concurrency']}: "
                         + ", ".join(f"{k} {v / total:.0%}" for k, v in s.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "pspnet_camvid.onnx")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--py-spy", action="store_true", help="sample the server processes with py-spy")
    ap.add_argument("--real", type=int, nargs="*", default=[8],
                    help="also these concurrencies with the real engine on this CPU, 1 worker")
    ap.add_argument("--out", type=Path, help="write feed_gpu.md and raw/feed_gpu.json here")
    args = ap.parse_args(argv)
    points = []
    with tempfile.TemporaryDirectory(prefix="feed-gpu-") as tmp:
        for w in args.workers:
            for c in args.concurrency:
                points.append(run_point(args, w, c, Path(tmp)))
                print(json.dumps(points[-1]), flush=True)
        for c in args.real:  # ONNX Runtime on this CPU: whose threads take the cores when the model does
            points.append({**run_point(args, 1, c, Path(tmp), fake=False), "engine": "ONNX Runtime, CPU"})
            print(json.dumps(points[-1]), flush=True)
    text = markdown(points)
    print(text)
    if args.out:
        (args.out / "raw").mkdir(parents=True, exist_ok=True)
        (args.out / "raw" / "feed_gpu.json").write_text(json.dumps(points, indent=1) + "\n")
        (args.out / "feed_gpu.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
