"""Load loops for ``pspnet-serve bench``: closed loop at a concurrency, open loop at a rate.

Closed loop: ``concurrency`` workers, each sends its next request when its
last one is answered; latency is send -> answer.

Open loop: requests are due at times drawn in advance (Poisson or a fixed
interval) and each is sent at its time whatever happened to the ones before.
Latency is measured from the time it was DUE, not from when it left: a
client that falls behind (event loop busy, every connection taken) would
otherwise hide the server's queueing delay ("coordinated omission"). A
request due while ``max_inflight`` are outstanding is not sent and counts as
``overflow``: the generator's memory and sockets stay bounded.

Both loops are bounded in time (``duration``, then at most ``timeout`` to
drain) and in count (``max_requests``). The client is passed in, so tests
drive the app in process over ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

Arrival = Literal["poisson", "fixed"]
OVERFLOW = "overflow"  # open loop: due while max_inflight were outstanding, never sent
TRANSPORT = "transport"  # no HTTP status: connection refused or reset, client timeout


@dataclass(frozen=True)
class LoadSpec:
    """What to send, and how hard."""

    path: str  # e.g. "/v1/segment"; the client carries the base URL
    body: bytes
    content_type: str
    params: Mapping[str, str]
    duration: float  # seconds of load
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests per second
    arrival: Arrival = "poisson"
    timeout: float = 60.0  # per request
    max_requests: int = 100_000
    max_inflight: int = 256  # open loop only
    seed: int = 0
    multipart: bool = False  # send the image as multipart field "image" instead of a raw body
    headers: Mapping[str, str] = field(default_factory=dict)  # more request headers (raw body only)

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number of requests per second")
        if (not 0 < self.duration <= 3600 or self.timeout <= 0 or self.max_requests < 1
                or self.max_inflight < 1):
            raise ValueError("need 0 < duration <= 3600 s, timeout > 0, max_requests >= 1, max_inflight >= 1")

    @property
    def loop(self) -> str:
        return "closed" if self.concurrency is not None else "open"


@dataclass(frozen=True)
class Sample:
    """One request. Times are seconds from the start of the load (``time.perf_counter`` based)."""

    due: float  # open loop: the scheduled time; closed loop: the send time
    sent: float
    done: float
    status: int | str  # HTTP status, or OVERFLOW / TRANSPORT
    tiles: int | None = None  # the server's x-pspnet-tiles
    timing: Mapping[str, float] = field(default_factory=dict)  # Server-Timing, milliseconds

    @property
    def latency(self) -> float:
        return self.done - self.due

    @property
    def ok(self) -> bool:
        return self.status == 200


def arrival_times(rate: float, duration: float, *, arrival: Arrival, seed: int, limit: int) -> list[float]:
    """Due times in ``[0, duration)``: exponential gaps of mean ``1/rate``, or exactly ``1/rate``."""
    if arrival == "fixed":
        n = min(limit, math.ceil(duration * rate - 1e-9))
        return [i / rate for i in range(n)]
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration and len(out) < limit:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``"decode;dur=1.2, batch;dur=80"`` -> {"decode": 1.2, "batch": 80.0} (milliseconds)."""
    out: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for p in params:
            key, _, value = p.partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    out[name] = out.get(name, 0.0) + float(value)
    return out


class _Sender:
    def __init__(self, client: httpx.AsyncClient, spec: LoadSpec, t0: float) -> None:
        self.client, self.spec, self.t0 = client, spec, t0
        self.samples: list[Sample] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def send(self, due: float | None = None) -> None:
        sent = self.now()
        status: int | str = TRANSPORT
        tiles: int | None = None
        timing: dict[str, float] = {}
        try:
            spec = self.spec
            if spec.multipart:
                r = await self.client.post(spec.path, params=dict(spec.params), timeout=spec.timeout,
                                           files={"image": ("image", spec.body, spec.content_type)})
            else:
                r = await self.client.post(spec.path, content=spec.body, params=dict(spec.params),
                                           headers={"content-type": spec.content_type, **spec.headers},
                                           timeout=spec.timeout)
            # the body is read by post(); its bytes are dropped at once
            status = r.status_code
            raw_tiles = r.headers.get("x-pspnet-tiles")
            tiles = int(raw_tiles) if raw_tiles and raw_tiles.isdigit() else None
            timing = parse_server_timing(r.headers.get("server-timing"))
        except httpx.HTTPError:
            pass
        self.samples.append(Sample(sent if due is None else due, sent, self.now(), status, tiles, timing))


async def run_closed(client: httpx.AsyncClient, spec: LoadSpec) -> tuple[list[Sample], float]:
    """Samples, and the seconds from start until the last answer."""
    assert spec.concurrency is not None
    sender = _Sender(client, spec, time.perf_counter())
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while sender.now() < spec.duration and issued < spec.max_requests:
            issued += 1
            await sender.send()

    # a worker's last request may start just before the end: the drain is bounded by the timeout
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(spec.concurrency))),
                           spec.duration + spec.timeout + 5)
    return sender.samples, sender.now()


async def run_open(client: httpx.AsyncClient, spec: LoadSpec) -> tuple[list[Sample], float]:
    """Samples (overflows included), and the seconds from start until the last answer."""
    assert spec.rate is not None
    schedule = arrival_times(spec.rate, spec.duration, arrival=spec.arrival, seed=spec.seed,
                             limit=spec.max_requests)
    sender = _Sender(client, spec, time.perf_counter())
    pending: set[asyncio.Task[None]] = set()
    for due in schedule:
        delay = due - sender.now()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= spec.max_inflight:
            now = sender.now()
            sender.samples.append(Sample(due, now, now, OVERFLOW))
            continue
        task = asyncio.create_task(sender.send(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=spec.timeout + 5)
    for task in pending:  # only after the bound above: a client-side timeout should have ended them
        task.cancel()
    return sender.samples, sender.now()


async def run_load(client: httpx.AsyncClient, spec: LoadSpec) -> tuple[list[Sample], float]:
    return await (run_closed(client, spec) if spec.loop == "closed" else run_open(client, spec))


def percentiles_ms(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """``{"p50": ms, ...}`` of values in seconds; None for an empty list."""
    if not values:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in qs}


def summarise(samples: list[Sample], elapsed: float) -> dict[str, Any]:
    """Throughput, latency percentiles, errors by status and median Server-Timing of the ok answers."""
    ok = [s for s in samples if s.ok]
    lat = [s.latency for s in ok]
    statuses = Counter(str(s.status) for s in samples if not s.ok)
    stages = sorted({k for s in ok for k in s.timing})
    lag = [s.sent - s.due for s in samples if s.status != OVERFLOW]
    tiles = sum(s.tiles or 0 for s in ok)
    return {
        "requests": len(samples),
        "ok": len(ok),
        "tiles": tiles,  # the server's x-pspnet-tiles summed over the ok answers
        "errors": dict(sorted(statuses.items())),
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(len(ok) / elapsed, 3) if elapsed > 0 else None,
        "tiles_per_s": round(tiles / elapsed, 3) if elapsed > 0 and tiles else None,
        "latency_ms": {
            **percentiles_ms(lat),
            "mean": round(float(np.mean(lat)) * 1000, 2) if lat else None,
            "max": round(max(lat) * 1000, 2) if lat else None,
        },
        # open loop: how late the generator itself sent (a client that cannot keep up shows here)
        "send_lag_ms": percentiles_ms(lag, (50, 99)),
        "server_timing_median_ms": {
            k: round(float(np.median([s.timing.get(k, 0.0) for s in ok])), 2) for k in stages},
    }
