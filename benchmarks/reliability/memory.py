"""Peak server memory per request against image size (issues #7 and #25, "bounded memory").

Starts ``pspnet-serve`` on 127.0.0.1, then for each image size sends one
request at a time and reads the server's peak RSS (VmHWM, reset through
/proc/PID/clear_refs before each request), so every figure is what ONE
request of that size costs on top of the idle server, beside the admission
estimate the server reserved for it (service.pipeline.cost.upload_cost) and
what the process still holds once it answered. ``--fresh`` starts a new server
for each case, so no case reuses memory an earlier one freed; each repeat's
growth is kept (the first pays what a process pays once for that kind of
request; later ones reuse what the first freed). The upload is a smooth
synthetic PNG (small on the wire; the cost is in the pixels).

    python -m benchmarks memory --sizes 360x480 1080x1920 3000x4000 --modes whole slide
    python -m benchmarks memory --model ade20k.onnx --modes multiscale --flip --sizes 360x240 512x806 \
        --server-arg=--max-memory-mb=20000 --server-arg=--request-timeout-s=900 --json out.json

Only loopback is contacted; one request in flight at a time.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable from a checkout
from benchmarks.reliability.overload import DEFAULT_MODEL, free_port, start_server, wait_ready
from service.contract.artifact import read_meta
from service.pipeline.cost import pixels_cost, upload_cost
from service.pipeline.params import resolve

MB = 2**20


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def smooth_png(height: int, width: int) -> bytes:
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 128, np.float32)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """A warmed server (one small request answered), and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, ["--max-pixels=100000000", "--max-body-bytes=104857600",
                                           *args.server_arg], Path(args.server_log))
    wait_ready(url, proc)
    return proc, url


def _measure(args: argparse.Namespace, meta: Any, proc: subprocess.Popen[bytes], url: str, size: str,
             mode_token: str) -> dict[str, Any]:
    """One size and mode, ``--repeat`` times: the largest peak growth, settled growth and time."""
    h, w = (int(v) for v in size.split("x"))
    body = smooth_png(h, w)
    mode, _, flip_word = mode_token.partition("+")
    flip = args.flip or flip_word == "flip"
    query = {"mode": mode, "flip": str(flip).lower(), "output": args.output}
    params = resolve(meta.protocol, mode=mode, flip=flip, scales=None, max_scales=16)
    estimate = upload_cost(meta, body, params, args.output) or 0  # what admission reserves: both orientations
    served = (pixels_cost(meta, h, w, params, args.output) or 0) + len(body)  # the orientation served
    growths, settled, seconds, status = [], 0, 0.0, 0
    for _ in range(args.repeat):
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        base = vm(proc.pid, "VmRSS")
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/segment", params=query, content=body, headers={"content-type": "image/png"},
                       timeout=3600)
        seconds = max(seconds, time.perf_counter() - t0)
        status = r.status_code
        if status != 200:
            print(f"{size} {mode_token}: {status} {r.text[:300]}", file=sys.stderr)
        growths.append(vm(proc.pid, "VmHWM") - base)
        settled = max(settled, vm(proc.pid, "VmRSS") - base)
    growth = max(growths)
    return {"size": size, "megapixels": round(h * w / 1e6, 2), "mode": mode, "flip": flip,
            "classes": meta.num_classes, "status": status, "upload_mb": round(len(body) / MB, 2),
            "estimate_mb": round(estimate / MB, 1), "estimate_served_mb": round(served / MB, 1),
            "peak_growth_mb": round(growth / MB, 1),
            "growth_per_repeat_mb": [round(g / MB, 1) for g in growths],
            "settled_growth_mb": round(settled / MB, 1),
            "estimate_over_peak": round(estimate / growth, 2) if growth > 0 else None,
            "served_estimate_over_peak": round(served / growth, 2) if growth > 0 else None,
            "bytes_per_pixel": round(growth / (h * w), 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--sizes", nargs="+", default=["360x480", "1080x1920", "2160x3840", "4000x6000"],
                   help="HEIGHTxWIDTH")
    p.add_argument("--modes", nargs="+", default=["whole", "slide"],
                   help="whole, slide or multiscale, each optionally +flip (e.g. multiscale+flip)")
    p.add_argument("--flip", action="store_true", help="flip=true for every mode")
    p.add_argument("--output", default="label", help="the output format asked for")
    p.add_argument("--server-arg", action="append", default=[], help="a further pspnet-serve argument")
    p.add_argument("--repeat", type=int, default=2, help="requests per size and mode (the max is kept)")
    p.add_argument("--fresh", action="store_true",
                   help="a fresh server for each size and mode (no memory an earlier request freed to reuse)")
    p.add_argument("--server-log", default="memory-server.log")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    meta = read_meta(args.model)
    rows: list[dict[str, Any]] = []
    proc, url = _server(args)
    try:
        idle = vm(proc.pid, "VmRSS")
        for size in args.sizes:
            for mode in args.modes:
                if args.fresh and rows:
                    proc.terminate()
                    proc.wait(timeout=120)
                    proc, url = _server(args)
                row = _measure(args, meta, proc, url, size, mode)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    report = {"model": args.model.name, "idle_rss_mb": round(idle / MB, 1), "fresh": args.fresh, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
