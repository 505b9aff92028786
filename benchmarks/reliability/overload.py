"""Overload run: offered load at N x capacity against a real server on loopback (issue #7).

Starts ``pspnet-serve`` on 127.0.0.1 (its own process, so its RSS is its
own), then, one phase after the other:

1. warm-up: a few seconds of closed-loop load, thrown away;
2. capacity: closed loop at ``--concurrency`` for ``--capacity-seconds``; the
   200s per second are the capacity C;
3. baseline: open loop at ``--light`` x C (latency of a healthy server);
4. overload: open loop at ``--factor`` x C for ``--overload-seconds``;
5. recovery: open loop at ``--light`` x C again, starting the moment the
   overload stops.

Throughout, the server's VmRSS and open file descriptors are sampled from
/proc every 0.25 s and ``/healthz`` is probed every 0.5 s on its own
connection. Every response's status, latency and Retry-After are kept.
Arrivals are at fixed intervals (deterministic), latency is measured from the
time a request was due (no coordinated omission), and the client keeps at
most ``--max-inflight`` requests outstanding (more count as "overflow": a
client limit, reported, never silently dropped).

Checks (printed as PASS/FAIL, exit status 1 if any fails):
- the server process stayed up, and /healthz answered 200 every time;
- overload was shed: some 503s, every one with a Retry-After of at least 1 s;
- nothing but 200, 503 (and 504, counted) came back, no connection errors;
- every accepted request (200) finished within the server's deadline;
- RSS stayed bounded: peak under ``--rss-limit-mb``;
- recovery: no 503 later than ``--recovery-bound`` s after the load dropped, and
  the per-second median latency back within 2x the baseline's (+50 ms) before
  the recovery phase ends (it fails when the queue bound is many seconds of
  work: see RELIABILITY.md).

    python benchmarks/reliability/overload.py --json overload.json
    python benchmarks/reliability/overload.py --overload-seconds 10 --capacity-seconds 5  # a smoke run

Only loopback is ever contacted, and every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.load import localserver
from benchmarks.load.localserver import free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "weights" / "pspnet_camvid.onnx"
MAX_REQUESTS = 50_000  # a hard cap on what one run can send


@dataclass
class Result:
    phase: str
    due: float  # seconds since the run started
    sent: float  # later than due when the client itself fell behind
    done: float
    status: int | str  # HTTP status, "overflow" (client limit), or "transport" (no HTTP answer)
    retry_after: str | None = None
    error: str | None = None  # the client-side exception of a "transport" result

    @property
    def latency(self) -> float:
        """What a user waits: from when the request was due (no coordinated omission)."""
        return self.done - self.due

    @property
    def server_time(self) -> float:
        """From the moment it was sent: what the server's deadline is measured against."""
        return self.done - self.sent


# -- the server --------------------------------------------------------------------------------------

def start_server(model: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service.cli", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *extra]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    """Until ``url``/readyz answers; a server that never gets there ends the run with its reason."""
    try:
        localserver.wait_ready(url + "/readyz", proc, seconds=seconds, interval=0.2)
    except localserver.ServerNotReady as e:
        raise SystemExit(str(e)) from None


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS bytes, open file descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """RSS and fd count of the server every 0.25 s, from its /proc entry (no request involved)."""

    def __init__(self, pid: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.t0 = pid, t0
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                rss, fds = proc_status(self.pid)
            except (OSError, ValueError):
                return  # the process is gone: the checks will say so
            self.samples.append((time.perf_counter() - self.t0, rss, fds))


# -- load --------------------------------------------------------------------------------------------

class Load:
    def __init__(self, url: str, body: bytes, params: dict[str, str], timeout: float, max_inflight: int,
                 t0: float) -> None:
        self.url, self.body, self.params, self.timeout = url, body, params, timeout
        self.max_inflight = max_inflight
        self.t0 = t0
        self.results: list[Result] = []
        self.inflight = 0
        self.pending: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def one(self, phase: str, due: float) -> None:
        sent = self.now()
        self.inflight += 1
        status: int | str = "transport"
        retry = error = None
        try:
            r = await self.client.post("/v1/segment", content=self.body, params=self.params,
                                       headers={"content-type": "image/png"})
            status, retry = r.status_code, r.headers.get("retry-after")
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            self.inflight -= 1
        self.results.append(Result(phase, due, sent, self.now(), status, retry, error))

    async def closed(self, phase: str, concurrency: int, seconds: float) -> None:
        end = self.now() + seconds

        async def worker() -> None:
            while self.now() < end and len(self.results) < MAX_REQUESTS:
                await self.one(phase, self.now())

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open(self, phase: str, rate: float, seconds: float) -> None:
        """Fixed-interval arrivals at ``rate``/s; returns when the last one is sent (not answered)."""
        start = self.now()
        tasks: set[asyncio.Task[None]] = set()
        for i in range(min(math.ceil(rate * seconds), MAX_REQUESTS - len(self.results))):
            due = start + i / rate
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.inflight >= self.max_inflight:
                now = self.now()
                self.results.append(Result(phase, due, now, now, "overflow"))
                continue
            task = asyncio.create_task(self.one(phase, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        self.pending = tasks

    async def drain(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=self.timeout + 5)


class HealthProbe(threading.Thread):
    """GET /healthz every 0.5 s from its own thread and connection, independent of the load's loop."""

    def __init__(self, url: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.t0 = url, t0
        self.probes: list[tuple[float, int | str, float]] = []  # (time, status, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.wait(0.5):
                t = time.perf_counter()
                try:
                    status: int | str = c.get("/healthz").status_code
                except httpx.HTTPError:
                    status = "transport"
                self.probes.append((t - self.t0, status, time.perf_counter() - t))


# -- report ------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def phase_summary(results: list[Result], seconds: float) -> dict[str, Any]:
    ok = [r.latency for r in results if r.status == 200]
    return {"sent": len(results), "statuses": dict(Counter(str(r.status) for r in results)),
            "ok_per_s": round(len(ok) / seconds, 2),
            "latency_s": {"p50": pct(ok, 50), "p90": pct(ok, 90), "p99": pct(ok, 99),
                          "max": round(max(ok), 3) if ok else None}}


def timeline(results: list[Result], start: float, end: float) -> list[dict[str, Any]]:
    """Per second of due time: sent, 200s, 503s, other, p50 latency of the 200s."""
    rows = []
    for s in range(math.ceil(end - start)):
        lo, hi = start + s, start + s + 1
        rs = [r for r in results if lo <= r.due < hi]
        ok = [r.latency for r in rs if r.status == 200]
        rows.append({"t": s, "sent": len(rs), "200": len(ok), "503": sum(r.status == 503 for r in rs),
                     "other": sum(r.status not in (200, 503) for r in rs), "p50_s": pct(ok, 50)})
    return rows


def png(path: Path | None) -> bytes:
    if path is not None:
        return path.read_bytes()
    # a CamVid-sized synthetic frame: smooth gradients and noise (one 360x480 tile in slide mode)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:480]
    rgb = np.stack([x * 255 // 479, y * 255 // 359, (x + y) % 256], -1) + rng.integers(-20, 21, (360, 480, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in (("max_queue_tiles", args.max_queue_tiles),
                                                           ("request_timeout_s", args.request_timeout_s),
                                                           ("max_batch", args.max_batch)) if v is not None]
    log = Path(args.server_log)
    proc = start_server(args.model, port, extra, log)
    report: dict[str, Any] = {"server_args": extra, "model": args.model.name}
    try:
        wait_ready(url, proc)
        settings = httpx.get(url + "/readyz", timeout=5).json()
        report["provider"] = settings.get("provider")
        t0 = time.perf_counter()
        sampler = Sampler(proc.pid, t0)
        sampler.start()
        prober = HealthProbe(url, t0)
        prober.start()
        load = Load(url, png(args.image), {"mode": args.mode}, args.client_timeout, args.max_inflight, t0)
        rss_start = proc_status(proc.pid)[0]

        await load.closed("warmup", args.concurrency, args.warmup_seconds)
        t_cap = load.now()
        await load.closed("capacity", args.concurrency, args.capacity_seconds)
        cap_results = [r for r in load.results if r.phase == "capacity"]
        capacity = sum(r.status == 200 for r in cap_results) / (load.now() - t_cap)
        print(f"capacity: {capacity:.2f} req/s at concurrency {args.concurrency}", flush=True)

        await load.open("baseline", args.light * capacity, args.baseline_seconds)
        await load.drain()
        t_over = load.now()
        await load.open("overload", args.factor * capacity, args.overload_seconds)
        t_drop = load.now()
        overload_pending = load.pending
        await load.open("recovery", args.light * capacity, args.recovery_seconds)
        t_end = load.now()
        load.pending |= overload_pending
        await load.drain()
        prober.stop.set()
        prober.join()
        health = prober.probes
        sampler.stop.set()
        sampler.join()
        await load.client.aclose()
        alive = proc.poll() is None
        rss_end, fds_end = proc_status(proc.pid) if alive else (0, 0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=(args.request_timeout_s or 60.0) + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    by = {p: [r for r in load.results if r.phase == p] for p in ("baseline", "overload", "recovery")}
    over = by["overload"]
    shed = [r for r in over if r.status == 503]
    deadline = float(args.request_timeout_s or 60.0)
    accepted = [r for r in load.results if r.status == 200 and r.phase in ("overload", "recovery")]
    late_503 = [r.due - t_drop for r in by["recovery"] if r.status == 503]
    base_p50 = phase_summary(by["baseline"], args.baseline_seconds)["latency_s"]["p50"] or 0.0
    rec_rows = timeline(by["recovery"], t_drop, t_end)
    back = next((row["t"] for i, row in enumerate(rec_rows)
                 if all(r["503"] == 0 and r["p50_s"] is not None and r["p50_s"] <= 2 * base_p50 + 0.05
                        for r in rec_rows[i:])), None)
    rss = [s[1] for s in sampler.samples]
    fds = [s[2] for s in sampler.samples]
    report |= {
        "capacity_rps": round(capacity, 3), "offered_rps": round(args.factor * capacity, 3),
        "light_rps": round(args.light * capacity, 3),
        "phases": {"capacity": phase_summary(cap_results, args.capacity_seconds),
                   "baseline": phase_summary(by["baseline"], args.baseline_seconds),
                   "overload": phase_summary(over, args.overload_seconds),
                   "recovery": phase_summary(by["recovery"], args.recovery_seconds)},
        "retry_after_values": dict(Counter(r.retry_after for r in shed)),
        # the deadline runs from when the server got the request: check it on the server-side time
        "accepted_server_time_max_s": round(max((r.server_time for r in accepted), default=0.0), 3),
        "shed_server_time_s": {"p50": pct([r.server_time for r in shed], 50),
                               "p99": pct([r.server_time for r in shed], 99),
                               "max": round(max((r.server_time for r in shed), default=0.0), 3)},
        "client_send_lag_s": {"p50": pct([r.sent - r.due for r in over], 50),
                              "p99": pct([r.sent - r.due for r in over], 99)},
        "deadline_s": deadline,
        "last_503_after_drop_s": round(max(late_503), 3) if late_503 else None,
        "recovered_after_s": back,
        "rss_mb": {"start": round(rss_start / 2**20, 1), "peak": round(max(rss, default=0) / 2**20, 1),
                   "end": round(rss_end / 2**20, 1)},
        "fds": {"start": fds[0] if fds else None, "peak": max(fds, default=None), "end": fds_end},
        "health": {"probes": len(health), "non_200": sum(h[1] != 200 for h in health),
                   "max_latency_s": round(max((h[2] for h in health), default=0.0), 3)},
        "transport_errors": [f"{r.phase} +{r.sent:.1f}s: {r.error}" for r in load.results if r.error],
        "server_alive_after": alive, "server_exit": proc.returncode,
        "overload_timeline": timeline(over, t_over, t_drop), "recovery_timeline": rec_rows,
    }
    statuses = Counter(str(r.status) for r in load.results if r.phase in ("overload", "recovery"))
    report["checks"] = {
        "server stayed up": alive and report["health"]["non_200"] == 0,
        "overload shed with 503": len(shed) > 0,
        "every 503 has Retry-After >= 1": all(r.retry_after and int(r.retry_after) >= 1 for r in shed),
        "only 200/503/504, no transport errors": set(statuses) <= {"200", "503", "504", "overflow"},
        # 0.5 s of slack: the response still has to be encoded and travel after the deadline check
        "accepted requests within the deadline": report["accepted_server_time_max_s"] <= deadline + 0.5,
        f"peak RSS under {args.rss_limit_mb} MB": report["rss_mb"]["peak"] < args.rss_limit_mb,
        f"no 503 later than {args.recovery_bound} s after the drop":
            not late_503 or max(late_503) <= args.recovery_bound,
        # the backlog a full queue leaves behind must drain within the recovery phase
        f"latency back to 2x baseline within {args.recovery_seconds:g} s": back is not None,
    }
    return report


def _row(row: dict[str, Any]) -> str:
    counts = " ".join(f"{row[k]:4d}" for k in ("sent", "200", "503", "other"))
    return f"  +{row['t']:3d}s {counts} {row['p50_s']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--image", type=Path, default=None, help="PNG to send (default: a synthetic 360x480)")
    p.add_argument("--mode", default="slide")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop workers when measuring capacity")
    p.add_argument("--warmup-seconds", type=float, default=5)
    p.add_argument("--capacity-seconds", type=float, default=20)
    p.add_argument("--baseline-seconds", type=float, default=15)
    p.add_argument("--overload-seconds", type=float, default=60)
    p.add_argument("--recovery-seconds", type=float, default=20)
    p.add_argument("--factor", type=float, default=4.0, help="overload as a multiple of capacity")
    p.add_argument("--light", type=float, default=0.5, help="baseline and recovery load, x capacity")
    p.add_argument("--max-inflight", type=int, default=1024)
    p.add_argument("--client-timeout", type=float, default=120)
    p.add_argument("--max-queue-tiles", type=int, default=None, help="server setting (default: its own)")
    p.add_argument("--request-timeout-s", type=float, default=None, help="server setting (default: its own)")
    p.add_argument("--max-batch", type=int, default=None, help="server setting (default: its own)")
    p.add_argument("--rss-limit-mb", type=float, default=2048)
    p.add_argument("--recovery-bound", type=float, default=None,
                   help="seconds after the drop by which 503s must stop (default: the deadline)")
    p.add_argument("--server-log", default="overload-server.log")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.recovery_bound is None:
        args.recovery_bound = args.request_timeout_s or 60.0
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: v for k, v in report.items() if k not in ("overload_timeline", "recovery_timeline")}
    print(json.dumps(summary, indent=1))
    print("overload timeline (per second: sent / 200 / 503 / other / p50 s):")
    for row in report["overload_timeline"][:: max(1, len(report["overload_timeline"]) // 12)]:
        print(_row(row))
    print("recovery timeline:")
    for row in report["recovery_timeline"]:
        print(_row(row))
    failed = [k for k, ok in report["checks"].items() if not ok]
    for k, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
