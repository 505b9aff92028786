"""Run every benchmark of issue #6 in one go and record the results.

    python benchmarks/speed/suite.py --image street_360x480.png --out benchmarks/results
    python benchmarks/speed/suite.py --image ... --out /tmp/b --quick     # a smoke run of every part
    python benchmarks/speed/suite.py --image ... --only litserve,ort-limit  # some parts, into results.json

In order, on the same ONNX model and image, one benchmark at a time:

1. the machine (lscpu, versions, load average);
2. baseline 1, the limit: raw ONNX Runtime tiles/s, batch 1/2/4/8 (benchmarks/speed/ort_limit.py);
3. the service (``pspnet-serve`` on loopback): closed loop at concurrency 1, 2, 4, 8, 16
   (``pspnet-serve bench``, mode=whole, output=color), a multipart run at 8 (the naive
   server's request shape), a py-spy profile under load, then the RSS run
   (``--rss-seconds`` of load at concurrency 8 with the server's RSS sampled from /proc);
4. baseline 2, the naive server (benchmarks/speed/naive_server.py) at the same concurrencies;
4a. baseline 4, LitServe (benchmarks/speed/litserve_server.py) on the same ONNX file, in two layouts (1 worker
   with ORT's default threads; 2 workers x 1 ORT thread), and in the same block the service, all
   with the same multipart upload at concurrency 1 and 8 (``--litserve-concurrencies``);
4b. the int8 artifact (``--int8-model``, made by ``pspnet-model quantize``): its raw ORT limit,
   the service sweep on it and, with the protocol baseline, the protocol path on it;
5. optionally (``--tune``) the service at concurrency 8 under other settings;
6. baseline 3, the official protocol in PyTorch eager vs the engine path on a 1024x2048
   image, slide and multiscale (benchmarks/speed/protocol.py);
6a. the execution layout of raw ORT (sessions x threads, benchmarks/speed/layout.py: layout.md) and
   the image codecs on one core (benchmarks/speed/image_codecs.py: codecs.md);
7. ``results.json``, ``results.md`` and ``plot.png`` (benchmarks/speed/report.py).

Parts (``--only`` / ``--skip``, comma- or space-separated): ort-limit (alias ort), service, rss,
profile, naive, litserve, int8, protocol, layout, codecs. ``--only`` runs just those and merges
them into the existing results.json. Durations at the defaults (quiet machine, quiet waits not
counted): ort-limit 3 min, service 3 min, profile 1 min, rss 5 min, naive 3 min, litserve 4 min,
int8 6 min, protocol 6 min, layout 20 min, codecs 5 min.

Every server is started here and stopped with SIGTERM by its pid; LitServe's, which
starts processes of its own, in a session of its own, checked empty after the stop. The load
generator shares the two cores with the server: that is part of what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPEED = ROOT / "benchmarks" / "speed"
sys.path.insert(0, str(ROOT))


import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.load.localserver import free_port, stop, wait_ready  # noqa: E402
from benchmarks.speed.report import render  # noqa: E402

PY = sys.executable
#: seconds to wait for other people's jobs to calm down before each measurement (--quiet-wait)
OPTIONS = {"quiet_wait": 300.0}
CONCURRENCIES = (1, 2, 4, 8, 16)
PARTS = ("ort", "service", "rss", "profile", "naive", "litserve", "int8", "protocol", "layout", "codecs")
ALIASES = {"ort-limit": "ort"}
#: LitServe layouts: key -> (description, workers_per_device, ORT intra-op threads per worker, 0 = default)
LITSERVE_LAYOUTS = {"litserve_1w": ("1 worker, ORT default threads", 1, 0),
                    "litserve_2w1t": ("2 workers x 1 ORT thread", 2, 1)}
#: files in raw/ that a part's own script writes: kept when that part is not run
OWN_RAW_FILES = {"layout": "layout.json", "codecs": "codecs.json"}
#: --tune grid: (settings, concurrency); each setting alone against the defaults at concurrency 8,
#: then the largest batches where enough requests are outstanding to fill them
TUNING: tuple[tuple[dict[str, str], int], ...] = (
    ({}, 8), ({"PSPNET_MAX_BATCH": "1"}, 8), ({"PSPNET_MAX_BATCH": "2"}, 8), ({"PSPNET_MAX_BATCH": "8"}, 8),
    ({"PSPNET_MAX_WAIT_MS": "0"}, 8), ({"PSPNET_MAX_WAIT_MS": "20"}, 8), ({"PSPNET_CPU_WORKERS": "1"}, 8),
    ({"PSPNET_CPU_WORKERS": "4"}, 8), ({"PSPNET_INTRA_OP_THREADS": "1"}, 8),
    ({}, 16), ({"PSPNET_MAX_BATCH": "8"}, 16), ({"PSPNET_MAX_BATCH": "8", "PSPNET_MAX_WAIT_MS": "20"}, 16),
    ({}, 1), ({"PSPNET_ORT_SPIN": "1"}, 1), ({"PSPNET_ORT_SPIN": "1"}, 8),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    import cv2
    import fastapi
    import numpy
    import onnxruntime
    import uvicorn

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache",
            "Hypervisor vendor")
    cpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu.splitlines())
           if k.strip() in keep}
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    try:
        torch_version = subprocess.run([PY, "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        torch_version = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"cpu": cpu, "mem_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "torch": torch_version, "numpy": numpy.__version__, "opencv": cv2.__version__,
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "git_commit": commit,
            "loadavg_at_start": loadavg()}


def session_members(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes in session ``sid`` (a server started with
    ``start_new_session``)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of the live processes of session ``sid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == sid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.contextmanager
def server(cmd: list[str], ready_path: str, port: int, env: dict[str, str] | None = None,
           log_path: Path | None = None, *, new_session: bool = False,
           stop_report: dict[str, Any] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, stopped with SIGTERM (then SIGKILL after 60 s) on the way out.

    ``new_session``: the server starts processes of its own; it gets a session (id = its pid), and
    after it exits any process left in that session is killed by pid and counted in ``stop_report``.
    """
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=new_session)
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready_path}", proc, seconds=180, interval=0.3)
        yield proc
    finally:
        t0 = time.monotonic()
        stop(proc)
        stray = session_members(proc.pid) if new_session else []
        settle = time.monotonic() + 10  # helpers (multiprocessing's resource tracker) exit just after it
        while stray and time.monotonic() < settle:
            time.sleep(0.2)
            stray = session_members(proc.pid)
        for pid in stray:
            log(f"process {pid} of server {proc.pid} still running after it stopped: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stop_report is not None:
            stop_report.update({"exit_code": proc.returncode, "stop_seconds": round(time.monotonic() - t0, 2),
                                "stray_processes_killed": len(stray)})
        if log_path:
            out.close()  # type: ignore[union-attr]


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    spy = Path(PY).with_name("py-spy")
    if not spy.exists():
        return {}
    text = subprocess.run([str(spy), "dump", "--pid", str(pid), "--nonblocking"], capture_output=True,
                          text=True, check=False).stdout
    names: dict[int, str] = {}
    for line in text.splitlines():
        # Thread 27176 (idle): "MainThread"
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            if tid.isdigit():
                names[int(tid)] = line.split('"')[1]
    return names


THREAD_GROUPS = (("pspnet-cpu", "CPU workers: decode, plan, stitch, encode"),
                 ("pspnet-batch", "batch runner: ORT calling thread"),
                 ("MainThread", "event loop: HTTP, asyncio, batching"))


def cpu_by_thread(before: dict[int, float], after: dict[int, float], names: dict[int, str],
                  requests: int) -> dict[str, float]:
    """CPU milliseconds per answered request, by thread group (threads Python does not know: ORT's pool)."""
    groups: dict[str, float] = {}
    for tid, sec in after.items():
        name = names.get(tid)
        group = ("native threads (ORT / torch intra-op pool)" if name is None else
                 next((g for prefix, g in THREAD_GROUPS if name.startswith(prefix)), "other Python threads"))
        groups[group] = groups.get(group, 0.0) + sec - before.get(tid, 0.0)
    return {g: round(v / requests * 1000, 2) for g, v in sorted(groups.items())} if requests else {}


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(max_wait: float, busy_max: float = 0.15, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine is at most ``busy_max`` busy over ``window`` s,
    with none of our load running; returns the busy fraction last seen. Others share this machine."""
    end = time.monotonic() + max_wait
    while True:
        b0, t0 = cpu_busy_seconds()
        time.sleep(window)
        b1, t1 = cpu_busy_seconds()
        busy = (b1 - b0) / max(t1 - t0, 1e-9)
        if busy <= busy_max or time.monotonic() >= end:
            if busy > busy_max:
                log(f"machine still {busy:.0%} busy after waiting {max_wait:g} s: measuring anyway")
            return round(busy, 3)


def bench(port: int, image: Path, out: Path, *extra: str, pid: int | None = None,
          session: int | None = None) -> dict[str, Any]:
    """One ``pspnet-serve bench`` run; its JSON report, with the load average before it and, given the
    server's pid, its CPU per request by thread group; given its session (a server of several
    processes), the CPU of all of them per request."""
    idle_before = wait_quiet(OPTIONS["quiet_wait"])
    before = loadavg()
    cpu0 = thread_cpu(pid) if pid else None
    tree0 = session_cpu(session) if session else None
    busy0, child0 = cpu_busy_seconds(), children_cpu()
    cmd = [PY, "-m", "service.cli", "bench", "--url", f"http://127.0.0.1:{port}", "--image", str(image),
           "--json", str(out), *extra, *(["--server-pid", str(pid)] if pid and "--server-pid" not in extra
                                         else [])]
    subprocess.run(cmd, check=True, cwd=ROOT)
    busy1, child1 = cpu_busy_seconds(), children_cpu()
    tree1 = session_cpu(session) if session else None
    report: dict[str, Any] = json.loads(out.read_text())
    if tree0 is not None and tree1 is not None:
        # the warm-up requests are inside the window too
        answered = report["ok"] + report["load"]["warmup_ok"]
        report["server_processes_cpu_ms_per_ok"] = (round((tree1 - tree0) / answered * 1000, 2)
                                                    if answered else None)
    report["loadavg_before"] = before
    report["machine_busy_before"] = idle_before
    cpu1 = thread_cpu(pid) if pid else None
    server_cpu = (tree1 - tree0 if tree0 is not None and tree1 is not None else
                  sum(cpu1.values()) - sum(cpu0.values()) if cpu0 is not None and cpu1 is not None else None)
    if server_cpu is not None:
        # what else ran meanwhile: all busy CPU minus our server and our load generator, in cores
        ours = server_cpu + (child1 - child0)
        wall = (busy1[1] - busy0[1]) / (os.cpu_count() or 1)
        report["foreign_cores"] = round(max(busy1[0] - busy0[0] - ours, 0.0) / wall, 3)
    if pid and cpu0 is not None:
        # the thread counters also saw the warm-up requests
        report["server_cpu_ms_per_ok_by_thread"] = cpu_by_thread(cpu0, thread_cpu(pid), thread_names(pid),
                                                                 report["ok"] + report["load"]["warmup_ok"])
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def run_script(args: list[str]) -> None:
    log("$ " + " ".join(str(a) for a in args))
    subprocess.run([PY, *args], check=True, cwd=ROOT)


def ort_limit(args: argparse.Namespace, model: Path, out: Path) -> dict[str, Any]:
    """Baseline 1 for ``model`` (benchmarks/speed/ort_limit.py), its JSON written to ``out``."""
    run_script([str(SPEED / "ort_limit.py"), "--model", str(model), "--image", str(args.image),
                "--seconds", str(args.ort_seconds), "--json", str(out)])
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def protocol(args: argparse.Namespace, model: Path, out: Path) -> dict[str, Any]:
    """Baseline 3 for ``model`` on a 1024x2048 image (benchmarks/speed/protocol.py), JSON to ``out``."""
    run_script([str(SPEED / "protocol.py"), "--model", str(model), "--checkpoint",
                str(args.checkpoint), "--image", str(args.image), "--size", "1024", "2048",
                "--repeats", str(args.protocol_repeats), "--json", str(out)])
    result: dict[str, Any] = json.loads(out.read_text())
    return result


Runs = dict[str, list[dict[str, Any]]]


def sweep(name: str, run: Callable[[int, Path], dict[str, Any]], raw: Path, repeats: int,
          concurrencies: tuple[int, ...] = CONCURRENCIES) -> tuple[dict[str, Any], Runs]:
    """Every concurrency ``repeats`` times, the passes interleaved so that a noisy minute spoils one
    point of each, not all of one; per concurrency, the run of median throughput, and all runs."""
    runs: Runs = {str(c): [] for c in concurrencies}
    for rep in range(repeats):
        for c in concurrencies:
            log(f"{name}, concurrency {c}, pass {rep + 1} of {repeats}")
            runs[str(c)].append(run(c, raw / f"{name}_c{c}_pass{rep + 1}.json"))
    median = {c: sorted(rs, key=lambda r: r["throughput_rps"] or 0.0)[(len(rs) - 1) // 2]
              for c, rs in runs.items()}
    keep = ("throughput_rps", "latency_ms", "foreign_cores", "cpu_ms_per_ok",
            "server_processes_cpu_ms_per_ok")
    return median, {c: [{k: r.get(k) for k in keep} for r in rs] for c, rs in runs.items()}


def profile(pid: int, seconds: float, out: Path) -> bool:
    """py-spy samples of the server (all threads, raw collapsed stacks); False without py-spy."""
    spy = Path(PY).with_name("py-spy")
    if not spy.exists():
        log("py-spy not installed: no profile (pip install py-spy)")
        return False
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
           "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def check_mask(port: int, path: str, image: Path, params: dict[str, str] | None = None) -> dict[str, Any]:
    """POST ``image`` as multipart field ``image``; the answer must be a paletted PNG of the image's size.

    Returns what was checked and the class ids (``labels``), for comparing two servers' answers.
    """
    with Image.open(image) as im:
        size = im.size
    r = httpx.post(f"http://127.0.0.1:{port}{path}", params=params, timeout=120,
                   files={"image": (image.name, image.read_bytes(), "image/png")})
    ctype = r.headers.get("content-type", "")
    if r.status_code != 200 or not ctype.startswith("image/png"):
        raise RuntimeError(f"{path} answered {r.status_code} {ctype}: {r.text[:300]}")
    with Image.open(io.BytesIO(r.content)) as mask:
        mode, mask_size, labels = mask.mode, mask.size, np.asarray(mask)
    if mode != "P" or mask_size != size:
        raise RuntimeError(f"{path} answered a {mode} PNG of {mask_size}, not a paletted one of {size}")
    return {"status": r.status_code, "content_type": ctype, "mode": mode, "size": list(mask_size),
            "bytes": len(r.content), "labels": labels}


def litserve_pass(args: argparse.Namespace, serve: list[str], env: dict[str, str], raw: Path,
                  logs: Path) -> dict[str, Any]:
    """Baseline 4: LitServe in each of LITSERVE_LAYOUTS and, in the same block, the service, all sent
    the same multipart upload at ``--litserve-concurrencies`` (each server in a session of its own,
    so that the CPU of all its processes is counted)."""
    concs = tuple(args.litserve_concurrencies)
    part: dict[str, Any] = {"model": args.model.name, "concurrencies": list(concs), "servers": {}}
    port = free_port()
    cmd = [*serve]
    cmd[cmd.index("--port") + 1] = str(port)
    entry: dict[str, Any] = {"description": "pspnet-serve (this service), mode=whole, output=color"}
    with server(cmd, "/readyz", port, env, logs / "litserve_block_service.log", new_session=True,
                stop_report=entry.setdefault("stop", {})) as proc:
        check = check_mask(port, "/v1/segment", args.image, {"mode": "whole", "output": "color"})
        service_labels = check.pop("labels")
        entry["check"] = check
        entry["processes"] = len(session_members(proc.pid))
        entry["runs"], entry["all_runs"] = sweep(
            "litserve_block_service", lambda c, path: bench(
                port, args.image, path, "--concurrency", str(c), "--multipart", "--mode", "whole",
                "--output", "color", "--duration", str(args.duration), pid=proc.pid, session=proc.pid),
            raw, args.repeats, concs)
    part["servers"]["service"] = entry
    for key, (description, workers, threads) in LITSERVE_LAYOUTS.items():
        lport = free_port()
        lcmd = [PY, str(SPEED / "litserve_server.py"), "--model", str(args.model), "--port", str(lport),
                "--workers", str(workers), "--ort-threads", str(threads)]
        entry = {"description": f"LitServe, {description}", "workers": workers, "ort_threads": threads}
        log(f"LitServe: {description}")
        with server(lcmd, "/health", lport, None, logs / f"{key}.log", new_session=True,
                    stop_report=entry.setdefault("stop", {})) as lproc:
            check = check_mask(lport, "/predict", args.image)
            entry["check"] = check
            entry["check"]["labels_agree_with_service"] = round(float(np.mean(check.pop("labels") ==
                                                                              service_labels)), 6)
            entry["processes"] = len(session_members(lproc.pid))
            def load(c: int, path: Path, lport: int = lport, sid: int = lproc.pid) -> dict[str, Any]:
                return bench(lport, args.image, path, "--concurrency", str(c), "--path", "/predict",
                             "--multipart", "--duration", str(args.duration), session=sid)

            entry["runs"], entry["all_runs"] = sweep(key, load, raw, args.repeats, concs)
        if entry["stop"]["stray_processes_killed"]:
            log(f"LitServe ({description}) left {entry['stop']['stray_processes_killed']} processes behind")
        part["servers"][key] = entry
    return part


def int8_pass(args: argparse.Namespace, serve: list[str], env: dict[str, str], load: list[str], raw: Path,
              logs: Path) -> dict[str, Any]:
    """The int8 artifact: its own raw ORT limit, then the same service sweep as the float32 model."""
    part: dict[str, Any] = {"model": args.int8_model.name}
    wait_quiet(OPTIONS["quiet_wait"])
    part["ort_limit"] = ort_limit(args, args.int8_model, raw / "ort_limit_int8.json")
    port = free_port()
    cmd = [*serve]
    cmd[cmd.index("--model") + 1], cmd[cmd.index("--port") + 1] = str(args.int8_model), str(port)
    with server(cmd, "/readyz", port, env, logs / "int8.log") as proc:
        part["service"], part["service_runs"] = sweep(
            "int8_service", lambda c, path: bench(port, args.image, path, "--concurrency", str(c), *load,
                                                  pid=proc.pid), raw, args.repeats)
    return part


def parts(p: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The parts to run, from ``--only`` or ``--skip`` (either may be comma-separated)."""
    def names(values: list[str]) -> set[str]:
        out = {ALIASES.get(v, v) for item in values for v in item.split(",") if v}
        unknown = out - set(PARTS)
        if unknown:
            p.error(f"unknown part(s) {', '.join(sorted(unknown))}; parts: ort-limit, {', '.join(PARTS[1:])}")
        return out
    if args.only:
        if args.skip:
            p.error("give --only or --skip, not both")
        args.merge = True  # a subset updates the results of the last full run
        return names(args.only)
    return set(PARTS) - names(args.skip)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "weights" / "pspnet_camvid.onnx")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "weights" / "pspnet_camvid.pt")
    p.add_argument("--int8-model", type=Path, default=ROOT / "weights" / "pspnet_camvid_int8.onnx",
                   help="int8 artifact measured beside --model (skip with --skip int8)")
    p.add_argument("--image", type=Path, required=True, help="the request image (CamVid 360x480)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per load point")
    p.add_argument("--ort-seconds", type=float, default=20.0, help="seconds per ORT batch size")
    p.add_argument("--rss-seconds", type=float, default=300.0)
    p.add_argument("--profile-seconds", type=float, default=30.0)
    p.add_argument("--protocol-repeats", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1,
                   help="passes over the concurrencies (service, naive); the median-throughput run is kept")
    p.add_argument("--merge", action="store_true", help="update an existing results.json (with --skip)")
    p.add_argument("--tune", action="store_true", help="also try other settings (TUNING)")
    p.add_argument("--tune-only", type=int, nargs="+", metavar="I",
                   help="run only these entries of TUNING (0-based), merged into the earlier ones")
    p.add_argument("--skip", nargs="*", default=[], metavar="PART", help="parts not to run")
    p.add_argument("--only", nargs="+", metavar="PART",
                   help="run only these parts, merged into the existing results.json (implies --merge)")
    p.add_argument("--litserve-concurrencies", type=int, nargs="+", default=[1, 8])
    p.add_argument("--layout-seconds", type=float, default=10.0, help="bench_layout.py --seconds")
    p.add_argument("--layout-windows", type=int, default=3, help="bench_layout.py --windows")
    p.add_argument("--codec-runs", type=int, default=30, help="bench_codecs.py --runs")
    p.add_argument("--quiet-wait", type=float, default=OPTIONS["quiet_wait"],
                   help="seconds to wait for a quiet machine before each measurement")
    p.add_argument("--quick", action="store_true", help="tiny durations: a smoke run of the driver")
    p.add_argument("--env", nargs="*", default=[], metavar="PSPNET_X=V", help="service settings")
    args = p.parse_args(argv)
    run = parts(p, args)
    OPTIONS["quiet_wait"] = args.quiet_wait
    if args.quick:
        args.duration, args.ort_seconds, args.rss_seconds, args.profile_seconds = 3, 2, 10, 3
        args.layout_seconds, args.layout_windows, args.codec_runs = 1, 1, 3
    out: Path = args.out
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not args.merge:  # files of an earlier run would read as results of this one
        keep = {name for part, name in OWN_RAW_FILES.items() if part not in run}
        for stale in [*raw.glob("*.json"), *raw.glob("*.txt")]:
            if stale.name not in keep:
                stale.unlink()
    logs = Path(tempfile.mkdtemp(prefix="pspnet-bench-logs-"))  # server logs: not results, not committed
    log(f"server logs in {logs}")
    env = dict(kv.split("=", 1) for kv in args.env)
    previous = out / "results.json"
    this_machine = machine()
    results: dict[str, Any] = {"machine": this_machine, "model": args.model.name, "image": args.image.name,
                               "duration_s": args.duration, "service_env": env, "repeats": args.repeats,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if args.merge and previous.exists():  # the earlier run's description stands; its parts are updated
        results |= json.loads(previous.read_text())
        results.setdefault("merged", []).append(time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        # the machine of each merge, in the same order: the host and the code can differ between runs
        results.setdefault("merged_machines", []).append(this_machine)
    log(f"machine: {this_machine['cpu']}, load {loadavg()}")
    load = ["--mode", "whole", "--output", "color", "--duration", str(args.duration)]

    if "ort" in run:
        results["machine_busy_before_ort"] = wait_quiet(OPTIONS["quiet_wait"])
        results["ort_limit"] = ort_limit(args, args.model, raw / "ort_limit.json")

    port = free_port()
    serve = [PY, "-m", "service.cli", "--model", str(args.model), "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"]
    if run & {"service", "rss", "profile"}:
        with server(serve, "/readyz", port, env, logs / "service.log") as proc:
            if "service" in run:
                results["service"], results["service_runs"] = sweep(
                    "service", lambda c, path: bench(port, args.image, path, "--concurrency", str(c), *load,
                                                     pid=proc.pid), raw, args.repeats)
                log("service, concurrency 8, multipart")
                results["service_multipart_c8"] = bench(port, args.image, raw / "service_c8_multipart.json",
                                                        "--concurrency", "8", "--multipart", *load,
                                                        pid=proc.pid)
            if "profile" in run:
                log("service profile under load (py-spy)")
                spy_out = raw / "profile_c8.txt"
                bench_proc = subprocess.Popen(
                    [PY, "-m", "service.cli", "bench", "--url", f"http://127.0.0.1:{port}", "--image",
                     str(args.image), "--concurrency", "8", "--mode", "whole", "--output", "color",
                     "--duration", str(args.profile_seconds + 4), "--json", str(raw / "profiled_c8.json")],
                    cwd=ROOT, stdout=subprocess.DEVNULL)
                time.sleep(2)
                if profile(proc.pid, args.profile_seconds, spy_out):
                    results["profile_file"] = str(spy_out.relative_to(out))
                bench_proc.wait()
            if "rss" in run:
                log(f"service RSS run, {args.rss_seconds:g} s at concurrency 8")
                results["rss_run"] = bench(port, args.image, raw / "service_rss.json", "--concurrency", "8",
                                           "--mode", "whole", "--output", "color", "--duration",
                                           str(args.rss_seconds), "--server-pid", str(proc.pid),
                                           "--rss-interval", "2")

    if {"ort", "service"} <= run:
        wait_quiet(OPTIONS["quiet_wait"])
        results["ort_limit_after"] = ort_limit(args, args.model, raw / "ort_limit_after.json")

    if "naive" in run:
        nport = free_port()
        naive = [PY, str(SPEED / "naive_server.py"), "--checkpoint", str(args.checkpoint),
                 "--port", str(nport)]
        with server(naive, "/healthz", nport, None, logs / "naive.log") as nproc:
            results["naive"], results["naive_runs"] = sweep(
                "naive", lambda c, path: bench(nport, args.image, path, "--concurrency", str(c), "--path",
                                               "/predict", "--multipart", "--duration", str(args.duration),
                                               pid=nproc.pid), raw, args.repeats)

    if "litserve" in run:
        results["litserve"] = litserve_pass(args, serve, env, raw, logs)

    if "int8" in run:
        results["int8"] = int8_pass(args, serve, env, load, raw, logs)

    if args.tune or args.tune_only:
        chosen = [t for i, t in enumerate(TUNING) if not args.tune_only or i in args.tune_only]
        done = {(json.dumps(t["settings"], sort_keys=True), t.get("concurrency", 8)): t
                for t in results.get("tuning", []) if args.tune_only}
        for extra_env, conc in chosen:
            tport = free_port()
            cmd = [*serve[:serve.index("--port") + 1], str(tport), *serve[serve.index("--port") + 2:]]
            name = ",".join(f"{k.removeprefix('PSPNET_')}={v}" for k, v in extra_env.items()) or "defaults"
            log(f"tuning: {name} at concurrency {conc}")
            with server(cmd, "/readyz", tport, {**env, **extra_env}) as tproc:
                tag = f"{name.replace('=', '').replace(',', '_')}_c{conc}"
                rep = bench(tport, args.image, raw / f"tune_{tag}.json", "--concurrency", str(conc), *load,
                            pid=tproc.pid)
            done[(json.dumps(extra_env, sort_keys=True), conc)] = {
                "settings": extra_env, "concurrency": conc, **{k: rep[k] for k in (
                "throughput_rps", "latency_ms", "batches", "errors", "loadavg_before", "cpu_ms_per_ok",
                "foreign_cores")}}
        results["tuning"] = list(done.values())

    if "protocol" in run:
        results["machine_busy_before_protocol"] = wait_quiet(OPTIONS["quiet_wait"])
        results["protocol"] = protocol(args, args.model, raw / "protocol.json")

    if {"int8", "protocol"} <= run:
        wait_quiet(OPTIONS["quiet_wait"])
        results["int8"]["protocol"] = protocol(args, args.int8_model, raw / "protocol_int8.json")

    if "layout" in run:
        wait_quiet(OPTIONS["quiet_wait"])
        models = [args.model, *([args.int8_model] if args.int8_model.exists() else [])]
        run_script([str(SPEED / "layout.py"), "--out", str(out), "--image", str(args.image),
                    "--seconds", str(args.layout_seconds), "--windows", str(args.layout_windows),
                    "--models", *map(str, models)])
        results["layout"] = json.loads((raw / "layout.json").read_text())

    if "codecs" in run:
        wait_quiet(OPTIONS["quiet_wait"])
        run_script([str(SPEED / "image_codecs.py"), "--out", str(out), "--runs", str(args.codec_runs),
                    *(["--images", "2", "--large-images", "1"] if args.quick else [])])
        results["codecs"] = json.loads((raw / "codecs.json").read_text())

    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["loadavg_at_end"] = loadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    render(results, out)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'plot.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
