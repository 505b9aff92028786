"""The Open Inference Protocol against /v1 on the same server: does /v2 cost anything?

    python benchmarks/speed/oip.py --image ../shared/data/camvid/val/0016E5_07959.png --out benchmarks/results

One `pspnet-serve` process on the shipped model (or ``--model``). Two request kinds for the
same image, interleaved in rounds: ``v1``, the raw PNG as the body of ``POST /v1/segment``
(``mode=whole&output=label``: the label PNG back) and ``v2``, ``POST /v2/models/{name}/infer``
with the PNG as a BYTES input in Triton's binary tensor extension and the labels back as
binary data (``mode=whole``). Closed loop at concurrency 1 (latency: median and p90 of
``--seconds`` of requests) and at concurrency 8 (throughput); ``--rounds`` rounds, medians
reported, with the ratio v2 / v1 per round. Writes ``oip.md`` and ``raw/oip.json`` under
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.load.loadgen import LoadSpec, run_closed  # noqa: E402
from benchmarks.load.localserver import free_port, stop, wait_ready  # noqa: E402
from service.api.v2.codec import HEADER_LENGTH  # noqa: E402
from service.settings import DEFAULT_MODEL  # noqa: E402


def v2_body(png: bytes) -> tuple[bytes, dict[str, str]]:
    """The PNG as a BYTES input in the binary tensor extension; the body and its extra header."""
    raw = len(png).to_bytes(4, "little") + png
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
                       "parameters": {"mode": "whole"}}).encode()
    return head + raw, {HEADER_LENGTH: str(len(head))}


async def closed_loop(client: httpx.AsyncClient, kind: str, png: bytes, model: str, concurrency: int,
                      seconds: float) -> dict[str, Any]:
    if kind == "v1":
        spec = LoadSpec(path="/v1/segment", body=png, content_type="image/png",
                        params={"mode": "whole", "output": "label"}, duration=seconds,
                        concurrency=concurrency)
    else:
        body, headers = v2_body(png)
        spec = LoadSpec(path=f"/v2/models/{model}/infer", body=body, content_type="application/octet-stream",
                        params={}, headers=headers, duration=seconds, concurrency=concurrency)
    samples, wall = await run_closed(client, spec)
    latencies = sorted(s.latency for s in samples if s.ok)
    return {"kind": kind, "concurrency": concurrency, "requests": len(latencies),
            "errors": len(samples) - len(latencies), "req_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))]}


async def measure(base: str, png: bytes, model: str, rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 limits=httpx.Limits(max_connections=16)) as client:
        for kind in ("v1", "v2"):  # warm both paths
            await closed_loop(client, kind, png, model, 1, 1.0)
        for rnd in range(rounds):
            for concurrency in (1, 8):
                order = ("v1", "v2") if rnd % 2 == 0 else ("v2", "v1")
                for kind in order:
                    row = await closed_loop(client, kind, png, model, concurrency, seconds)
                    row["round"] = rnd
                    rows.append(row)
                    print(f"round {rnd + 1}/{rounds} c={concurrency} {kind}: {row['req_per_s']:.2f} req/s, "
                          f"p50 {row['p50_ms']:.1f} ms", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in (1, 8):
        per_kind = {k: [r for r in rows if r["kind"] == k and r["concurrency"] == c] for k in ("v1", "v2")}
        pairs = list(zip(per_kind["v1"], per_kind["v2"], strict=True))  # same round, same conditions
        ratios_tp = [b["req_per_s"] / a["req_per_s"] for a, b in pairs]
        ratios_p50 = [b["p50_ms"] / a["p50_ms"] for a, b in pairs]
        out[f"c{c}"] = {
            **{f"{k}_{m}": statistics.median(r[m] for r in rs) for k, rs in per_kind.items()
               for m in ("req_per_s", "p50_ms", "p90_ms")},
            "v2_over_v1_throughput": statistics.median(ratios_tp),
            "v2_over_v1_p50": statistics.median(ratios_p50),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    png = args.image.read_bytes()
    port = free_port()
    env = {**os.environ, "PSPNET_MODEL": str(args.model), "PSPNET_HOST": "127.0.0.1",
           "PSPNET_PORT": str(port), "PSPNET_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/readyz", proc, seconds=120)
        model = httpx.get(base + "/v1/models").json()["models"][0]["name"]
        rows = asyncio.run(measure(base, png, model, args.rounds, args.seconds))
    finally:
        stop(proc)
    summary = summarise(rows)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
            "cores": os.cpu_count(), "image": args.image.name, "model": args.model.name,
            "rounds": args.rounds, "seconds": args.seconds}
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "oip.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows},
                                                          indent=1))
    lines = [f"# /v2 (Open Inference Protocol) against /v1 on one server ({meta['date']})", "",
             f"Generated by `benchmarks/speed/oip.py`. `{meta['image']}` on `{meta['model']}`, mode whole, "
             f"labels back; {cpu}, {meta['cores']} cores; {args.rounds} rounds of {args.seconds:g} s per "
             "point, kinds interleaved; "
             "medians. v1: raw PNG body, label PNG back. v2: the PNG as BYTES in Triton's binary tensor "
             "extension, labels back as binary UINT8.", "",
             "| concurrency | v1 req/s | v2 req/s | v2/v1 throughput | v1 p50 ms | v2 p50 ms | v2/v1 p50 | "
             "v1 p90 ms | v2 p90 ms |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in (1, 8):
        s = summary[f"c{c}"]
        lines.append(f"| {c} | {s['v1_req_per_s']:.2f} | {s['v2_req_per_s']:.2f} | "
                     f"{s['v2_over_v1_throughput']:.3f} | {s['v1_p50_ms']:.1f} | {s['v2_p50_ms']:.1f} | "
                     f"{s['v2_over_v1_p50']:.3f} | "
                     f"{s['v1_p90_ms']:.1f} | {s['v2_p90_ms']:.1f} |")
    (args.out / "oip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
