"""The served figures of issue #26 in one run: 1 worker against N, the host stitch against the device
stitch, the GPU's utilisation, the load generator's CPU share, and a 12 MP photo's peak GPU memory.

For each ``--workers`` count and each ``--stitch`` setting (``PSPNET_DEVICE_STITCH``: ``off`` is the
exact float64 stitch on the host, ``auto`` the stitch on the GPU with CUDA, ``on`` also on the CPU):
one ``pspnet-serve`` (``--provider``; ``--fake-gpu``: the engine's runs replaced by sleeps of the
H200's times, benchmarks/speed/feed_gpu.py, to try this on a CPU), then ``python -m benchmarks
load`` against it: the model's multi-scale (6 scales) with flip at each ``--multiscale-concurrency``
and, on the server of the last ``--stitch`` setting only (whole mode does not stitch an image of the
tile's size), the 360x480 image (``--image``, multipart, colour PNG) in ``mode=whole`` at each
``--concurrency``; ``--duration`` seconds each. Meanwhile ``nvidia-smi`` (where there is one) is
sampled every 200 ms: mean GPU utilisation and the most memory used; the load generator's CPU
seconds come from its own rusage.

Which route served is recorded twice: each server's log lines of the engine (``engine: ... is
stitched on cuda``, written at INFO whatever the server's log level; the logs are kept beside
``--json``), and per load point the requests each route took, counted inside the server
(:func:`install_routes`, loaded by a ``sitecustomize`` module: in-graph labels, device stitch, host
stitch, host stitch because the device budget was full).

With ``--large-model``, ``python -m benchmarks large-image`` then sends the 12 MP photo once (slide)
to a one-worker server on that model, nvidia-smi's peak memory beside it (``--workers`` may then be
empty: the 12 MP photo alone). gpu_check.sh runs it on the GPU machine.

    python -m benchmarks served-sweep --image VAL.png --workers 1 16 --json served.json --md served.md
    python -m benchmarks served-sweep --image VAL.png --workers 1 2 --concurrency 1 8 --duration 5 \\
        --stitch off on --provider cpu --json /tmp/s.json    # the device stitch on ORT's CPU provider
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from benchmarks.speed.feed_gpu import _children, _group, _threads  # noqa: E402

#: where a server writes its route counts (the sweep's scratch folder), read by install_routes
ROUTES_ENV = "PSPNET_SWEEP_ROUTES"
#: the server's sitecustomize: feed_gpu's thread names (and fake engine), then the route counter
SITECUSTOMIZE = ("import benchmarks.speed.feed_gpu as f\nf.install_fake()\n"
                 "import benchmarks.speed.served_sweep as s\ns.install_routes()\n")
#: what the server's log says of its engine and its stitch (service/engine/sessions.py, api/app.py)
ROUTE_LOG = re.compile(r"(engine: \S+ on |is stitched on|CUDA FALLBACK|ready: )")
IN_GRAPH = "in-graph labels"
DEVICE = "device stitch"


def install_routes() -> None:
    """In a server process, with ``PSPNET_SWEEP_ROUTES`` set: count the route each request takes
    (the chain's planning and its choice of stitcher) into ``<folder>/<pid>-routes.json`` twice a
    second, and let the engine's and the app's INFO lines through whatever the log level."""
    folder = os.environ.get(ROUTES_ENV)
    if not folder:
        return
    import logging

    for name in ("service.engine", "pspnet.app"):  # kept by the server's dictConfig (existing loggers)
        logging.getLogger(name).setLevel(logging.INFO)
    from service.pipeline import chain

    counts: dict[str, int] = {}
    prepare, pick = chain.prepare, chain.Chain._stitcher

    def counted_prepare(*args: Any, **kwargs: Any) -> Any:
        work = prepare(*args, **kwargs)
        if work.window is not None:
            counts[IN_GRAPH] = counts.get(IN_GRAPH, 0) + 1
        return work

    def counted_pick(self: Any, work: Any, runner: Any) -> Any:
        stitcher, output = pick(self, work, runner)
        device = self.device
        if device is not None and output == device.output:
            key = DEVICE
        elif device is not None and device.output in runner.outputs:
            key = f"host stitch ({stitcher.route}; device budget full)"
        else:
            key = f"host stitch ({stitcher.route})"
        counts[key] = counts.get(key, 0) + 1
        return stitcher, output

    chain.prepare = counted_prepare
    chain.Chain._stitcher = counted_pick  # type: ignore[method-assign]
    path = Path(folder, f"{os.getpid()}-routes.json")

    def dump() -> None:
        while True:
            path.with_suffix(".tmp").write_text(json.dumps(dict(counts)))
            path.with_suffix(".tmp").replace(path)  # whole, for a reader at any moment
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="served-sweep-routes").start()


def _routes(scratch: Path, pids: list[int]) -> dict[str, int]:
    """The route counts of the server processes ``pids``, summed."""
    total: dict[str, int] = {}
    for p in pids:
        try:
            counts = json.loads((scratch / f"{p}-routes.json").read_text())
        except (OSError, ValueError):
            continue
        for k, v in counts.items():
            total[k] = total.get(k, 0) + int(v)
    return total


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
    (``pids``: its processes), the load generator's CPU share and the routes the requests took."""
    out = scratch / "point.json"
    before = {p: _threads(p, _names(scratch, p)) for p in pids}
    routes_before = _routes(scratch, pids)
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
    time.sleep(0.6)  # the servers' route counts written once more
    after = _routes(scratch, pids)
    routes = {k: v - routes_before.get(k, 0) for k, v in after.items() if v - routes_before.get(k, 0)}
    return {"concurrency": concurrency, "throughput_rps": report["throughput_rps"],
            "tiles_per_s": report.get("tiles_per_s"), "latency_ms": report["latency_ms"],
            "errors": report["errors"], "server_stage_mean_ms": report.get("server_stage_mean_ms"),
            "routes": routes,
            "load_generator_cpu_share": round((usage.ru_utime + usage.ru_stime) / (wall * cores), 3),
            "server_cpu_share_by_thread": {k: round(v / (wall * cores), 3) for k, v in
                                           sorted(groups.items(), key=lambda kv: -kv[1]) if v > 0},
            **gpu.summary()}


def serve(args: argparse.Namespace, workers: int, stitch: str, scratch: Path, model: Path,
          log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``pspnet-serve``: ``workers`` processes, ``PSPNET_DEVICE_STITCH=stitch``, its output in ``log``."""
    # sitecustomize names the server's threads for the CPU table, counts the routes (and with
    # --fake-gpu fakes the engine)
    site = scratch / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PSPNET_LOG_LEVEL": "warning", "PSPNET_FAKE_GPU": "1" if args.fake_gpu else "0",
           "PSPNET_FAKE_GPU_THREADS": str(scratch), ROUTES_ENV: str(scratch), "PSPNET_DEVICE_STITCH": stitch,
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--model", str(model), "--host",
                                 "127.0.0.1", "--port", str(port), "--provider", args.provider, "--workers",
                                 str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", proc, seconds=600)
    except Exception:
        stop(proc)
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    return proc, url


def route_lines(log: Path) -> list[str]:
    """The server log's lines on its engine and stitch, timestamps dropped, each once, in order."""
    seen: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        if ROUTE_LOG.search(line):  # "<date> <time> LEVEL logger: message"
            seen.setdefault(line.split(" ", 2)[2] if line[:2].isdigit() and line.count(" ") >= 2 else line)
    return list(seen)


def whole_plan(image: Path, model: Path) -> dict[str, Any]:
    """How the service plans ``image`` in whole mode and in multi-scale with flip (service's own
    planning): whether whole mode is answered by the in-graph labels, i.e. does not stitch."""
    import numpy as np
    from PIL import Image

    from service.contract.artifact import LABELS_NAME, MULTISCALE, OUTPUT_NAME, read_meta
    from service.pipeline.chain import prepare
    from service.pipeline.params import InferenceParams

    meta = read_meta(model)
    with Image.open(image) as im:
        w, h = im.size
    rgb = np.zeros((h, w, 3), np.uint8)
    whole = prepare(meta, rgb, InferenceParams("whole", (1.0,), False), (OUTPUT_NAME, LABELS_NAME))
    multi = prepare(meta, rgb, InferenceParams("multiscale", MULTISCALE, True), (OUTPUT_NAME, LABELS_NAME))
    return {"image_size": [h, w], "tile": list(meta.tile), "whole_tiles": whole.num_tiles,
            "whole_answered_by": whole.output, "whole_stitches": whole.window is None,
            "multiscale_flip_tiles": multi.num_tiles, "multiscale_answered_by": multi.output}


def large_image(args: argparse.Namespace, scratch: Path, log_dir: Path) -> dict[str, Any]:
    out = scratch / "large.json"
    log = log_dir / "server-large.log"
    env = {**os.environ, "PSPNET_WORKERS": "1"}  # one worker: auto would start one per core with CUDA
    with GpuSampler() as gpu:
        subprocess.run([sys.executable, "-m", "benchmarks", "large-image", "--model", str(args.large_model),
                        "--image", str(args.large_image or args.image), "--modes", "slide", "--repeat", "1",
                        f"--server-args=--provider={args.provider}", "--server-log", str(log),
                        "--json", str(out)], cwd=ROOT, check=True, env=env)
    return {**json.loads(out.read_text()), **gpu.summary(), "device_stitch": large_device_bytes(args)}


def large_device_bytes(args: argparse.Namespace) -> dict[str, Any]:
    """What the 12 MP slide request would hold on the device, against the default budget: the route
    its stitch can take (service/engine/device_stitch.py's own sizing)."""
    from service.contract.artifact import read_meta
    from service.engine.device_stitch import device_bytes
    from service.protocol.windows import plan_geometry
    from service.settings import Settings

    meta = read_meta(args.large_model)
    h, w = 3000, 4000  # large-image's default upload
    geometry = plan_geometry(h, w, tile=meta.tile, mode="slide", scales=(1.0,), flip=False,
                             base_size=meta.protocol.base_size, stride_rate=meta.protocol.stride_rate)
    need = device_bytes(geometry, (h, w), meta.num_classes, meta.tile)
    default_mb = Settings.model_fields["device_stitch_mb"].default
    budget = int(os.environ.get("PSPNET_DEVICE_STITCH_MB", default_mb)) << 20
    return {"need_mb": round(need / 2**20), "budget_mb": budget >> 20,
            "route": "device stitch" if need <= budget else "host stitch (device budget too small)"}


def _ceiling(raw: dict[str, Any], config: str) -> float | None:
    rates = [r["tiles_per_s"] for r in raw["batches"] if r["config"] == config]
    return max(rates) if rates else None


def _point_name(run: dict[str, Any]) -> str:
    stitch = f", stitch {run['stitch']}" if "stitch" in run else ""
    return f"{run['workers']} workers, {run['mode']}{stitch}, c={run['concurrency']}"


def targets(report: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Issue #26's targets as fractions of the engine's ceilings of this run (gpu_check.sh's raw.json):
    whole mode of the labels ceiling, multi-scale of the logits ceiling (the best engine logits
    fetch; with the device logits ceiling too where raw.json has it)."""
    def at(config: str, batch: int) -> float | None:
        return next((float(r["median_ms"]) for r in raw["batches"]
                     if r["config"] == config and r["batch"] == batch), None)

    labels, logits = _ceiling(raw, "engine_labels"), _ceiling(raw, "engine_logits")
    device = _ceiling(raw, "engine_device_logits")
    assert labels is not None and logits is not None, "raw.json has no engine ceilings"
    out: dict[str, Any] = {"labels_ceiling_tiles_per_s": round(labels, 1),
                           "logits_ceiling_tiles_per_s": round(logits, 1)}
    if device is not None:
        out["device_logits_ceiling_tiles_per_s"] = round(device, 1)
    ort8, engine8 = at("ort_run_logits", 8), at("engine_logits", 8)
    if ort8 and engine8:
        out["engine_logits_over_ort_run_at_batch_8"] = round(engine8 / ort8, 2)
    for run in report["runs"]:
        if not run["tiles_per_s"]:
            continue
        multiscale = run["mode"].startswith("multiscale")
        out[_point_name(run)] = round(run["tiles_per_s"] / (logits if multiscale else labels), 3)
        if multiscale and device is not None:
            out[_point_name(run) + " (of the device logits ceiling)"] = round(run["tiles_per_s"] / device, 3)
    return out


def _routes_text(routes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(routes.items(), key=lambda kv: -kv[1])) or "-"


def _run_row(run: dict[str, Any]) -> str:
    lat, stages = run["latency_ms"], run.get("server_stage_mean_ms") or {}
    cells = [run["workers"], run.get("stitch", "-"), run["mode"], run["concurrency"], run["throughput_rps"],
             run["tiles_per_s"], _routes_text(run.get("routes", {})), lat.get("p50"), lat.get("p99"),
             ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "-",
             run["gpu_util_mean_pct"], run["gpu_mem_max_mib"], f"{run['load_generator_cpu_share']:.0%}",
             ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in run["server_cpu_share_by_thread"].items()),
             ", ".join(f"{k} {v}" for k, v in stages.items())]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _whole_text(plan: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Whether whole mode stitched: the service's plan of the image and the servers' own counts."""
    counted: dict[str, int] = {}
    for r in runs:
        if r["mode"] == "whole":
            for k, v in r.get("routes", {}).items():
                counted[k] = counted.get(k, 0) + v
    h, w = plan["image_size"]
    th, tw = plan["tile"]
    if not plan["whole_stitches"] and set(counted) <= {IN_GRAPH}:
        verdict = ("So whole mode does not stitch here: the in-graph labels are the answer, whatever "
                   "PSPNET_DEVICE_STITCH says, and its rows are the road they were before.")
    else:
        verdict = ("**Whole mode did stitch here** (not the one-window case): its rows depend on "
                   "PSPNET_DEVICE_STITCH.")
    return (f"Whole mode on the {w}x{h} image (tile {tw}x{th}): the service plans {plan['whole_tiles']} "
            f"tile, answered by its `{plan['whole_answered_by']}` output; the servers counted "
            f"{_routes_text(counted)} over the whole-mode points. {verdict} Multi-scale with flip: "
            f"{plan['multiscale_flip_tiles']} tiles a request, stitched from the "
            f"`{plan['multiscale_answered_by']}`.")


def _targets_lines(t: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    device = t.get("device_logits_ceiling_tiles_per_s")
    batch8 = t.get("engine_logits_over_ort_run_at_batch_8")
    lines = ["", f"Against the engine's ceilings of this run (labels {t['labels_ceiling_tiles_per_s']} "
             f"tiles/s, logits {t['logits_ceiling_tiles_per_s']}"
             + (f", logits left on the device {device}" if device else "")
             + "; targets: whole at c=64 >= 0.25 of labels, multi-scale + flip >= 0.50 of logits"
             + (f"; engine logits at batch 8: {batch8}x a plain run" if batch8 else "") + "):", ""]
    for run in runs:
        name = _point_name(run)
        if name not in t:
            continue
        multiscale = run["mode"].startswith("multiscale")
        goal = 0.5 if multiscale else 0.25 if run["concurrency"] == 64 else None
        verdict = "" if goal is None else " (target met)" if t[name] >= goal else " (target **not** met)"
        extra = t.get(name + " (of the device logits ceiling)")
        lines.append(f"- {name}: {t[name]} of the {'logits' if multiscale else 'labels'} ceiling{verdict}"
                     + (f"; {extra} of the device logits ceiling" if extra is not None else ""))
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    runs = report["runs"]
    if runs:
        engine = " (fake GPU engine)" if report["fake_gpu"] else ""
        lines += ["", "## Served: 1 worker against N, host stitch against device stitch (issue #26)", "",
                  f"`python -m benchmarks served-sweep`, provider {report['provider']}{engine}, "
                  f"{report['image']} as a multipart upload, colour PNG back, {report['duration']} s closed "
                  "loop each (raw: served.json; the servers' logs: served-logs/). `stitch` is "
                  "PSPNET_DEVICE_STITCH (off: the exact float64 stitch on the host, today's; auto: on the "
                  "GPU with CUDA); `route` counts the point's requests (its warm-up's included) by the road "
                  "the server's chain took.", "",
                  "| workers | stitch | mode | c | req/s | tiles/s | route (server's count) | p50 ms "
                  "| p99 ms | errors | GPU util % | GPU MiB max | load generator CPU | server CPU by thread "
                  "| server stages, mean ms |",
                  "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: "
                  "| --- | --- |"]
        lines += [_run_row(run) for run in runs]
        lines += ["", "What each server's log said of its engine and its stitch (`engine: ... is stitched on "
                  "cuda`: the device stitch; no such line: the host stitch):", ""]
        for server in report.get("servers", []):
            said = "; ".join(f"`{line}`" for line in server["log"]) or "(nothing)"
            lines.append(f"- {server['workers']} worker(s), PSPNET_DEVICE_STITCH={server['stitch']}, "
                         f"ready in {server['ready_s']} s: {said}")
        if report.get("plan"):
            lines += ["", _whole_text(report["plan"], runs)]
    if report.get("targets"):
        lines += _targets_lines(report["targets"], runs)
    big = report.get("large")
    if big:
        row = big["rows"][0]
        d = big.get("device_stitch") or {}
        lines += ["", f"12 MP photo ({big['upload']['size']}) on `{big['model']}`, slide, one worker: "
                  f"{json.dumps({k: v for k, v in row.items() if k != 'runs'})}; GPU memory at most "
                  f"{big['gpu_mem_max_mib']} MiB (nvidia-smi, whole card)."
                  + (f" Its stitch would hold {d['need_mb']} MB of the device against a budget of "
                     f"{d['budget_mb']} MB (PSPNET_DEVICE_STITCH_MB): {d['route']}." if d else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "pspnet_camvid.onnx")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu", "auto"])
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 16],
                    help="worker counts to serve with (none: only --large-model)")
    ap.add_argument("--stitch", nargs="+", default=["off", "auto"], choices=["off", "auto", "on"],
                    help="PSPNET_DEVICE_STITCH settings, a server each; whole mode on the last one only")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 64], help="whole mode")
    ap.add_argument("--multiscale-concurrency", type=int, nargs="*", default=[16],
                    help="multi-scale with flip (none: no multi-scale run)")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--fake-gpu", action="store_true",
                    help="sleep for the H200's batch times, not run (with --stitch off only)")
    ap.add_argument("--large-model", type=Path, help="the 150-class model of the 12 MP photo (or none)")
    ap.add_argument("--large-image", type=Path, help="the photo to upscale to 12 MP (default --image)")
    ap.add_argument("--ceilings", type=Path, help="gpu_check.sh's raw.json: report the targets as fractions")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--logs", type=Path, help="the servers' logs' folder (default: beside --json)")
    ap.add_argument("--md", type=Path, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    log_dir = args.logs or args.json.parent / "served-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    report: dict[str, Any] = {"image": str(args.image), "provider": args.provider, "fake_gpu": args.fake_gpu,
                              "duration": args.duration, "runs": runs, "servers": servers}
    if args.workers and args.concurrency:
        report["plan"] = whole_plan(args.image, args.model)
    with tempfile.TemporaryDirectory(prefix="served-sweep-") as tmp:
        scratch = Path(tmp)
        for workers in args.workers:
            for stitch in args.stitch:
                log = log_dir / f"server-{workers}w-stitch-{stitch}.log"
                t0 = time.perf_counter()
                proc, url = serve(args, workers, stitch, scratch, args.model, log)
                ready = round(time.perf_counter() - t0, 1)
                try:
                    points = [("multiscale+flip", c, ["--mode", "multiscale", "--flip", "--timeout", "300"])
                              for c in args.multiscale_concurrency]
                    if stitch == args.stitch[-1]:
                        points += [("whole", c, ["--mode", "whole"]) for c in args.concurrency]
                    time.sleep(1.5)  # the thread names written once
                    pids = _children(proc.pid) if workers > 1 else [proc.pid]
                    for mode, c, extra in points:
                        runs.append({"workers": workers, "stitch": stitch, "mode": mode,
                                     **load_point(url, args.image, c, args.duration, extra, scratch, pids)})
                        print(json.dumps(runs[-1]), flush=True)
                finally:
                    stop(proc)
                servers.append({"workers": workers, "stitch": stitch, "ready_s": ready,
                                "log": route_lines(log), "log_file": str(log)})
                print(json.dumps(servers[-1]), flush=True)
        if args.large_model is not None:
            report["large"] = large_image(args, scratch, log_dir)
    if args.ceilings is not None and runs:
        report["targets"] = targets(report, json.loads(args.ceilings.read_text()))
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.md is not None:
        with args.md.open("a") as f:
            f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
