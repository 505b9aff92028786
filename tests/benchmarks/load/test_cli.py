"""The load generator (``pspnet-serve bench``): schedules, open-loop honesty, metric diffs, the CLI.

No timings are asserted as performance: the only time bounds below are lower
bounds that a slower machine can only make larger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.load.cli import bench_main, is_loopback, run_bench
from benchmarks.load.loadgen import OVERFLOW, LoadSpec, arrival_times, parse_server_timing, run_load
from benchmarks.load.localserver import free_port
from benchmarks.load.probe import batch_sizes, parse_metrics, read_cpu_seconds, read_rss
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

SERVICE_SECONDS = 0.05


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_fixed_arrivals_are_exact_and_bounded() -> None:
    assert arrival_times(4, 1.0, arrival="fixed", seed=0, limit=100) == [0, 0.25, 0.5, 0.75]
    assert arrival_times(4, 10.0, arrival="fixed", seed=0, limit=3) == [0, 0.25, 0.5]


def test_poisson_arrivals_are_seeded_sorted_and_near_the_rate() -> None:
    times = arrival_times(100, 10.0, arrival="poisson", seed=1, limit=10_000)
    assert times == arrival_times(100, 10.0, arrival="poisson", seed=1, limit=10_000)
    assert times != arrival_times(100, 10.0, arrival="poisson", seed=2, limit=10_000)
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 10.0
    # 1000 expected, Poisson sd ~32: a 4-sd band
    assert 870 <= len(times) <= 1130
    assert len(arrival_times(100, 10.0, arrival="poisson", seed=1, limit=50)) == 50


def test_server_timing_header() -> None:
    assert parse_server_timing("decode;dur=1.5, plan;dur=0.2,batch;desc=x;dur=80") == {
        "decode": 1.5, "plan": 0.2, "batch": 80.0}
    assert parse_server_timing(None) == {}
    assert parse_server_timing("bad;dur=x, ;dur=3") == {}


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8000", True), ("http://127.3.2.1", True), ("http://[::1]:80", True),
    ("http://localhost:9", True), ("http://10.0.0.1:8000", False), ("http://example.com", False),
    ("http://localhost.example.com", False), ("not a url", False)])
def test_only_loopback_targets(url: str, ok: bool) -> None:
    assert is_loopback(url) is ok


def test_cli_refuses_a_remote_target(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    with pytest.raises(SystemExit) as e:
        bench_main(["--url", "http://192.0.2.1:8000", "--image", str(image), "--rate", "1",
                    "--duration", "1"])
    assert e.value.code == 2


def test_batch_histogram_diff() -> None:
    def text(c1: int, c2: int, c4: int) -> str:
        # cumulative buckets as prometheus_client writes them
        total = c1 + 2 * c2 + 4 * c4
        lines = [f'pspnet_batch_size_tiles_bucket{{le="{le}"}} {v}' for le, v in
                 [("1.0", c1), ("2.0", c1 + c2), ("3.0", c1 + c2), ("4.0", c1 + c2 + c4),
                  ("6.0", c1 + c2 + c4), ("+Inf", c1 + c2 + c4)]]
        return "\n".join([*lines, f"pspnet_batch_size_tiles_count {c1 + c2 + c4}",
                          f"pspnet_batch_size_tiles_sum {total}"])

    diff = batch_sizes(parse_metrics(text(1, 0, 2)), parse_metrics(text(3, 1, 7)))
    assert diff == {"batches": 8, "tiles": 24, "mean_tiles": 3.0, "sizes": {"1": 2, "2": 1, "4": 5}}


def _slow_app() -> Starlette:
    """A server that answers one request at a time, each taking at least SERVICE_SECONDS."""
    lock = asyncio.Lock()

    async def segment(request: Request) -> Response:
        await request.body()
        async with lock:
            await asyncio.sleep(SERVICE_SECONDS)
        return Response(b"ok")

    return Starlette(routes=[Route("/v1/segment", segment, methods=["POST"])])


def _spec(**kw: object) -> LoadSpec:
    base: dict[str, object] = {"path": "/v1/segment", "body": b"x", "content_type": "image/png",
                               "params": {}, "duration": 0.5}
    return LoadSpec(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_open_loop_measures_from_the_scheduled_time() -> None:
    transport = httpx.ASGITransport(app=_slow_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        spec = _spec(rate=40.0, arrival="fixed")
        samples, _ = await run_load(client, spec)
    due = arrival_times(40.0, 0.5, arrival="fixed", seed=0, limit=100)
    assert sorted(s.due for s in samples) == due  # every scheduled request was sent, none added
    assert all(s.ok for s in samples)
    # The server finishes at most one request per SERVICE_SECONDS, so the k-th to finish cannot be
    # done before (k+1)*SERVICE_SECONDS. A client that waited for answers before sending (coordinated
    # omission) would report about SERVICE_SECONDS for every request instead.
    for k, s in enumerate(sorted(samples, key=lambda s: s.done)):
        assert s.done >= (k + 1) * SERVICE_SECONDS * 0.99
    assert max(s.latency for s in samples) >= 20 * SERVICE_SECONDS - due[-1] - 0.01


@pytest.mark.anyio
async def test_open_loop_bounds_outstanding_requests() -> None:
    transport = httpx.ASGITransport(app=_slow_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        samples, _ = await run_load(client, _spec(rate=40.0, arrival="fixed", max_inflight=2))
    assert len(samples) == 20
    # within 0.5 s at most 10 answers (one per SERVICE_SECONDS), so at most 2 + 10 could be sent
    assert sum(s.status == OVERFLOW for s in samples) >= 20 - 12
    assert all(s.ok for s in samples if s.status != OVERFLOW)


@pytest.mark.anyio
async def test_extra_headers_are_sent_with_the_content_type() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def infer(request: Request) -> Response:
        h = request.headers
        seen.append((h.get("content-type"), h.get("inference-header-content-length")))
        return Response(b"ok")

    app = Starlette(routes=[Route("/v1/segment", infer, methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        samples, _ = await run_load(client, _spec(concurrency=1, duration=30.0, max_requests=2,
                                                  headers={"Inference-Header-Content-Length": "12"}))
    assert [s.ok for s in samples] == [True, True]
    assert seen == [("image/png", "12")] * 2


@pytest.mark.anyio
async def test_closed_loop_against_the_app_reports_the_servers_batches(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    async with serving(model, max_batch=4, max_wait_ms=5) as client:
        spec = LoadSpec(path="/v1/segment", body=png_bytes(50, 70), content_type="image/png",
                        params={"mode": "slide", "flip": "true", "output": "color"}, duration=1.0,
                        concurrency=3)
        report = await run_bench(client, spec, warmup=1)
    assert report["ok"] == report["requests"] > 0 and report["errors"] == {}
    batches = report["batches"]
    # every tile the load sent was run in some batch between the two scrapes, and nothing else was
    assert report["tiles"] > report["ok"] and batches["tiles"] == report["tiles"]
    assert all(int(size.split("-")[-1]) <= 4 for size in batches["sizes"])
    assert sum(batches["sizes"].values()) == batches["batches"]
    stages = report["server_stage_mean_ms"]
    assert {"decode", "plan", "batch", "stitch", "encode"} <= set(stages)
    assert set(report["server_timing_median_ms"]) == {"decode", "plan", "batch", "stitch", "encode"}
    lat = report["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_cli_against_a_real_server(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    image = tmp_path / "street.png"
    image.write_bytes(png_bytes(40, 60))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--model", str(model),
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    out = tmp_path / "report.json"
    try:
        code = bench_main(["--url", f"http://127.0.0.1:{port}", "--image", str(image), "--concurrency", "2",
                           "--duration", "1", "--mode", "whole", "--server-pid", str(proc.pid),
                           "--rss-interval", "0.2", "--json", str(out)])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["ok"] == report["requests"] > 0
    assert report["batches"]["tiles"] == report["ok"]  # whole: one tile per request
    assert report["rss"]["samples"] >= 2 and report["rss"]["start_mib"] > 10
    # serving a request costs the server CPU, and the client some too
    assert report["cpu_ms_per_ok"]["server"] > 0 and report["cpu_ms_per_ok"]["client"] > 0


def test_proc_readers_see_this_process() -> None:
    before = read_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU
    after = read_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before
    assert (read_rss(os.getpid()) or 0) > 10 * 2**20
    assert read_rss(2**22 + 12345) is None and read_cpu_seconds(2**22 + 12345) is None
