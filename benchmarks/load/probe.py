"""What ``pspnet-serve bench`` reads from the server besides its answers.

``/metrics`` scrapes before and after a run, differenced: the batch sizes the
batcher formed and the mean time per pipeline stage. ``/proc/PID``: resident
memory and CPU seconds of a local server process.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

MetricKey = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text exposition -> {(sample name, labels): value}, by prometheus_client's parser
    (escapes, exemplars and timestamps are its business, not a regex's)."""
    return {(s.name, frozenset(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def _diff(before: dict[MetricKey, float], after: dict[MetricKey, float], name: str) -> dict[MetricKey, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if k[0] == name}


def batch_sizes(before: dict[MetricKey, float], after: dict[MetricKey, float],
                name: str = "pspnet_batch_size_tiles") -> dict[str, Any] | None:
    """Batches the server ran between two scrapes: count, mean tiles, count per size bucket."""
    buckets = _diff(before, after, name + "_bucket")
    cumulative = sorted((float(dict(k[1])["le"]), v) for k, v in buckets.items())
    if not cumulative:
        return None
    count = sum(_diff(before, after, name + "_count").values())
    total = sum(_diff(before, after, name + "_sum").values())
    sizes: dict[str, int] = {}
    prev_le, prev_cum = 0.0, 0.0
    for le, cum in cumulative:
        n = round(cum - prev_cum)
        if n:
            # integer sizes: bucket (prev, le] holds sizes prev+1 .. le
            lo = int(prev_le) + 1
            key = (f">{int(prev_le)}" if math.isinf(le) else
                   str(int(le)) if lo == int(le) else f"{lo}-{int(le)}")
            sizes[key] = n
        prev_le, prev_cum = le, cum
    return {"batches": round(count), "tiles": round(total),
            "mean_tiles": round(total / count, 3) if count else None, "sizes": sizes}


def stage_means_ms(before: dict[MetricKey, float], after: dict[MetricKey, float]) -> dict[str, float]:
    """Mean milliseconds per request in each pipeline stage, from the stage histogram's sum and count."""
    sums = _diff(before, after, "pspnet_stage_duration_seconds_sum")
    counts = _diff(before, after, "pspnet_stage_duration_seconds_count")
    out: dict[str, float] = {}
    for (_, labels), s in sums.items():
        n = counts.get(("pspnet_stage_duration_seconds_count", labels), 0.0)
        if n > 0:
            out[dict(labels).get("stage", "?")] = round(s / n * 1000, 2)
    inf_n = sum(_diff(before, after, "pspnet_inference_duration_seconds_count").values())
    if inf_n > 0:
        inf_s = sum(_diff(before, after, "pspnet_inference_duration_seconds_sum").values())
        out["inference_per_batch"] = round(inf_s / inf_n * 1000, 2)
    return out


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS`` of /proc/PID/status), None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads) from /proc/PID/stat, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_rss(pid: int, interval: float, into: list[tuple[float, int]]) -> None:
    t0 = time.perf_counter()
    while True:
        rss = read_rss(pid)
        if rss is not None:
            into.append((round(time.perf_counter() - t0, 2), rss))
        await asyncio.sleep(interval)


def rss_summary(samples: list[tuple[float, int]]) -> dict[str, Any] | None:
    """Start, end, min, max in MiB; growth = (end - start) / start, and (max - start) / start."""
    if not samples:
        return None
    mib = [r / 2**20 for _, r in samples]
    start, end = mib[0], mib[-1]
    return {"start_mib": round(start, 1), "end_mib": round(end, 1), "min_mib": round(min(mib), 1),
            "max_mib": round(max(mib), 1), "growth": round((end - start) / start, 4),
            "max_over_start": round((max(mib) - start) / start, 4), "samples": len(samples),
            "series": [[t, round(r / 2**20, 1)] for t, r in samples]}
