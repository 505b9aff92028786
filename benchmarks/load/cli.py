"""``pspnet-serve bench``: load a running server and report what it did.

    pspnet-serve bench --url http://127.0.0.1:8000 --image street.png --concurrency 8 --duration 30
    pspnet-serve bench --url ... --image ... --rate 5 --arrival poisson --duration 60 --json out.json

Closed loop (``--concurrency``) or open loop (``--rate``, latency from the
scheduled send time; see :mod:`benchmarks.load.loadgen`). Reports throughput, latency
p50/p90/p99, errors by status, the batch sizes the server formed (the
difference of its ``pspnet_batch_size_tiles`` histogram before and after),
its mean time per stage (``pspnet_stage_duration_seconds``), and with
``--server-pid`` the server's resident memory over the run, read from
``/proc``. Targets are loopback addresses only: this is a benchmark, not a
load-testing tool for other people's machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.load.loadgen import LoadSpec, Sample, run_load, summarise
from benchmarks.load.probe import (
    MetricKey,
    batch_sizes,
    parse_metrics,
    read_cpu_seconds,
    read_rss,
    rss_summary,
    sample_rss,
    stage_means_ms,
)
from service.codec.outputs import OUTPUTS
from service.contract.artifact import MODES

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif"}


def is_loopback(url: str) -> bool:
    """True when the URL's host is ``localhost`` or a loopback IP literal (no DNS lookup)."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _scrape(client: httpx.AsyncClient) -> dict[MetricKey, float] | None:
    try:
        r = await client.get("/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        return parse_metrics(r.text)
    except ValueError:  # not Prometheus text (a proxy's error page): no server-side figures
        return None


async def wait_ready(client: httpx.AsyncClient, seconds: float) -> bool:
    """Poll ``/readyz`` until 200, or 404 (a server without one); False when time runs out."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/readyz", timeout=5)).status_code in (200, 404):
                return True
        await asyncio.sleep(0.2)
    return False


async def run_bench(client: httpx.AsyncClient, spec: LoadSpec, *, warmup: int = 2, rss_pid: int | None = None,
                    rss_interval: float = 1.0) -> dict[str, Any]:
    """Warm up, scrape /metrics, load, wait for the answers, scrape again; the report as a dict."""
    warm: list[Sample] = []
    for _ in range(warmup):
        warm_spec = LoadSpec(path=spec.path, body=spec.body, content_type=spec.content_type,
                             params=spec.params, duration=spec.timeout, concurrency=1, max_requests=1,
                             timeout=spec.timeout, multipart=spec.multipart)
        warm += (await run_load(client, warm_spec))[0]
    before = await _scrape(client)
    rss: list[tuple[float, int]] = []
    sampler = asyncio.create_task(sample_rss(rss_pid, rss_interval, rss)) if rss_pid else None
    server_cpu0 = read_cpu_seconds(rss_pid) if rss_pid else None
    client_cpu0 = time.process_time()
    try:
        samples, elapsed = await run_load(client, spec)
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    if rss_pid:  # one last sample after the load
        last = read_rss(rss_pid)
        if last is not None:
            rss.append((round(elapsed, 2), last))
    client_cpu = time.process_time() - client_cpu0
    server_cpu1 = read_cpu_seconds(rss_pid) if rss_pid else None
    after = await _scrape(client)
    ok = sum(s.ok for s in samples)
    report: dict[str, Any] = {
        "load": {"loop": spec.loop, "concurrency": spec.concurrency, "rate": spec.rate,
                 "arrival": spec.arrival if spec.rate else None, "duration_s": spec.duration,
                 "path": spec.path, "params": dict(spec.params), "multipart": spec.multipart,
                 "warmup_requests": warmup,
                 "warmup_ok": sum(s.ok for s in warm)},
        **summarise(samples, elapsed),
        "batches": batch_sizes(before, after) if before and after else None,
        "server_stage_mean_ms": stage_means_ms(before, after) if before and after else None,
        "rss": rss_summary(rss),
        # CPU per answered request: what the two cores pay for one answer, load generator included
        "cpu_ms_per_ok": {
            "client": round(client_cpu / ok * 1000, 2) if ok else None,
            "server": (round((server_cpu1 - server_cpu0) / ok * 1000, 2)
                       if ok and server_cpu0 is not None and server_cpu1 is not None else None)},
    }
    return report


def format_report(rep: dict[str, Any]) -> str:
    """The report as a small text table."""
    load = rep["load"]
    how = (f"closed loop, concurrency {load['concurrency']}" if load["loop"] == "closed"
           else f"open loop, {load['rate']:g} req/s {load['arrival']}")
    lat = rep["latency_ms"]
    rows = [
        ("load", f"{how}, {load['duration_s']:g} s, params {load['params'] or '{}'}"),
        ("requests", f"{rep['requests']} sent, {rep['ok']} ok in {rep['elapsed_s']:.1f} s"),
        ("throughput", f"{rep['throughput_rps']} req/s" + (f", {rep['tiles_per_s']} tiles/s"
                                                            if rep["tiles_per_s"] else "")),
        ("latency ms", "  ".join(f"{k} {v}" for k, v in lat.items())),
        ("errors", ", ".join(f"{k}: {v}" for k, v in rep["errors"].items()) or "none"),
    ]
    if load["loop"] == "open":
        rows.append(("send lag ms", "  ".join(f"{k} {v}" for k, v in rep["send_lag_ms"].items())))
    if rep["batches"]:
        b = rep["batches"]
        rows.append(("batches", f"{b['batches']} of mean {b['mean_tiles']} tiles; by size "
                     + ", ".join(f"{k}: {v}" for k, v in b["sizes"].items())))
    if rep["server_stage_mean_ms"]:
        rows.append(("server ms", "  ".join(f"{k} {v}" for k, v in rep["server_stage_mean_ms"].items())))
    if rep["server_timing_median_ms"]:
        rows.append(("timing p50", "  ".join(f"{k} {v}" for k, v in rep["server_timing_median_ms"].items())))
    cpu = rep["cpu_ms_per_ok"]
    rows.append(("CPU ms/ok", f"client {cpu['client']}"
                 + (f", server {cpu['server']}" if cpu["server"] else "")))
    if rep["rss"]:
        r = rep["rss"]
        rows.append(("server RSS", f"start {r['start_mib']} MiB, end {r['end_mib']}, max {r['max_mib']} "
                     f"(end {r['growth']:+.1%}, max {r['max_over_start']:+.1%} over start)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-serve bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="server base URL, loopback only (http://127.0.0.1:8000)")
    p.add_argument("--image", type=Path, required=True, help="the image every request sends")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--concurrency", type=int, help="closed loop: requests outstanding at all times")
    how.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--arrival", choices=["poisson", "fixed"], default="poisson",
                   help="open loop: exponential gaps or a fixed interval")
    p.add_argument("--duration", type=float, required=True, help="seconds of load (at most 3600)")
    p.add_argument("--mode", choices=MODES, help="default: the model's protocol")
    p.add_argument("--output", choices=OUTPUTS, default="color")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--scales", help="comma-separated scales (slide, multiscale)")
    p.add_argument("--path", default="/v1/segment", help="endpoint path (other servers: their route)")
    p.add_argument("--multipart", action="store_true", help="send multipart field 'image', not a raw body")
    p.add_argument("--wait-ready", type=float, default=60.0,
                   help="seconds to wait for /readyz (200, or 404 on servers without one)")
    p.add_argument("--warmup", type=int, default=2, help="sequential requests before measuring")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout, seconds")
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--max-inflight", type=int, default=256, help="open loop: bound on outstanding requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-pid", type=int,
                   help="sample this process's RSS and CPU time from /proc during the load")
    p.add_argument("--rss-interval", type=float, default=1.0)
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def bench_main(argv: list[str]) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if not is_loopback(args.url):
        p.error(f"--url must be a loopback address (127.0.0.0/8, ::1 or localhost), not {args.url}")
    try:
        body = args.image.read_bytes()
    except OSError as e:
        p.error(f"cannot read --image: {e}")
    params = {"output": args.output}
    if args.mode:
        params["mode"] = args.mode
    if args.flip is not None:
        params["flip"] = "true" if args.flip else "false"
    if args.scales:
        params["scales"] = args.scales
    try:
        spec = LoadSpec(path=args.path, body=body,
                        content_type=MEDIA.get(args.image.suffix.lower(), "application/octet-stream"),
                        params=params, duration=args.duration, concurrency=args.concurrency, rate=args.rate,
                        arrival=args.arrival, timeout=args.timeout, max_requests=args.max_requests,
                        max_inflight=args.max_inflight, seed=args.seed, multipart=args.multipart)
    except ValueError as e:
        p.error(str(e))
    report = asyncio.run(_bench_over_http(args.url, spec, args))
    report["url"] = args.url
    report["image"] = {"path": args.image.name, "bytes": len(body)}
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["ok"] else 1


async def _bench_over_http(url: str, spec: LoadSpec, args: argparse.Namespace) -> dict[str, Any]:
    connections = spec.concurrency or spec.max_inflight
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=spec.timeout) as client:
        if not await wait_ready(client, args.wait_ready):
            print(f"pspnet-serve bench: {url} not ready after {args.wait_ready:g} s", file=sys.stderr)
        return await run_bench(client, spec, warmup=args.warmup, rss_pid=args.server_pid,
                               rss_interval=args.rss_interval)


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
