"""Peak server memory per request against image size (issue #7, "bounded memory").

Starts ``pspnet-serve`` on 127.0.0.1, then for each image size sends one
request at a time and reads the server's peak RSS (VmHWM, reset through
/proc/PID/clear_refs before each request), so every figure is what ONE
request of that size costs on top of the idle server. The upload is a
smooth synthetic PNG (small on the wire; the cost is in the pixels).

    python benchmarks/reliability/memory.py --sizes 360x480 1080x1920 3000x4000 --modes whole slide
    python benchmarks/reliability/memory.py --json memory.json

Only loopback is contacted; one request in flight at a time.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable from a checkout
from benchmarks.reliability.overload import DEFAULT_MODEL, free_port, start_server, wait_ready

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--sizes", nargs="+", default=["360x480", "1080x1920", "2160x3840", "4000x6000"],
                   help="HEIGHTxWIDTH")
    p.add_argument("--modes", nargs="+", default=["whole", "slide"])
    p.add_argument("--repeat", type=int, default=2, help="requests per size and mode (the max is kept)")
    p.add_argument("--server-log", default="memory-server.log")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, ["--max-pixels=100000000", "--max-body-bytes=104857600"],
                        Path(args.server_log))
    rows: list[dict[str, Any]] = []
    try:
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=600) as c:
            c.post("/v1/segment", content=smooth_png(360, 480), headers={"content-type": "image/png"})
            for size in args.sizes:
                h, w = (int(v) for v in size.split("x"))
                body = smooth_png(h, w)
                for mode in args.modes:
                    growth, seconds, status = 0, 0.0, 0
                    for _ in range(args.repeat):
                        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
                        base = vm(proc.pid, "VmRSS")
                        t0 = time.perf_counter()
                        r = c.post("/v1/segment", params={"mode": mode}, content=body,
                                   headers={"content-type": "image/png"})
                        seconds = max(seconds, time.perf_counter() - t0)
                        status = r.status_code
                        growth = max(growth, vm(proc.pid, "VmHWM") - base)
                    row = {"size": size, "megapixels": round(h * w / 1e6, 2), "mode": mode, "status": status,
                           "upload_mb": round(len(body) / MB, 2), "peak_growth_mb": round(growth / MB, 1),
                           "bytes_per_pixel": round(growth / (h * w), 1), "seconds": round(seconds, 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            idle = vm(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    report = {"model": args.model.name, "idle_rss_mb": round(idle / MB, 1), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
