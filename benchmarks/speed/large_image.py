"""One large photo through the real server: where the time goes and what it costs in memory.

Starts ``pspnet-serve`` on 127.0.0.1 with the given artifact, sends one
4000x3000 JPEG (a CamVid val image upscaled with cv2 INTER_LINEAR, quality
90: a phone photo's size and weight) per mode, one request at a time, and
records for each:

* wall time of the request as the client sees it;
* the server's stages (``Server-Timing``: decode, plan, batch, stitch, encode);
* the time inside ONNX Runtime (``pspnet_inference_duration_seconds_sum``
  from /metrics, before and after);
* "work around the model" = wall - decode - ONNX Runtime time, as the
  "Model-bound serving" issue defines it;
* the server's peak RSS growth (VmHWM reset through /proc/PID/clear_refs).

    python benchmarks/speed/large_image.py --model weights/pspnet_camvid.onnx --image VAL.png \\
        --modes slide multiscale --json benchmarks/results/raw/large_camvid.json

Only loopback is contacted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from benchmarks.load.localserver import free_port  # noqa: E402
from benchmarks.reliability.memory import vm  # noqa: E402
from benchmarks.reliability.overload import start_server, wait_ready  # noqa: E402

MB = 2**20


def large_jpeg(image: Path, height: int, width: int, quality: int = 90) -> bytes:
    rgb = np.asarray(Image.open(image).convert("RGB"))
    big = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def inference_seconds(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("pspnet_inference_duration_seconds_sum"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            stages[name] = float(dur) / 1000
    return stages


def measure(client: httpx.Client, pid: int, body: bytes, mode: str, output: str) -> dict[str, Any]:
    before = inference_seconds(client)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    base = vm(pid, "VmRSS")
    t0 = time.perf_counter()
    r = client.post("/v1/segment", params={"mode": mode, "output": output}, content=body,
                    headers={"content-type": "image/jpeg"})
    wall = time.perf_counter() - t0
    growth = vm(pid, "VmHWM") - base
    model = inference_seconds(client) - before
    stages = server_timing(r.headers.get("server-timing", ""))
    around = wall - stages.get("decode", 0.0) - model
    return {"mode": mode, "output": output, "status": r.status_code, "wall_s": round(wall, 3),
            "model_s": round(model, 3), "around_model_s": round(around, 3),
            "around_over_model": round(around / model, 3) if model else None,
            "stages_s": {k: round(v, 3) for k, v in stages.items()}, "tiles": r.headers.get("x-pspnet-tiles"),
            "peak_rss_growth_mb": round(growth / MB, 1), "detail": None if r.is_success else r.text[:300]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True, help="a photo to upscale (e.g. a CamVid val image)")
    p.add_argument("--size", default="3000x4000", help="HEIGHTxWIDTH of the upload")
    p.add_argument("--modes", nargs="+", default=["slide"])
    p.add_argument("--output", default="color")
    p.add_argument("--repeat", type=int, default=2, help="requests per mode; the median wall is kept")
    p.add_argument("--server-args", nargs="*", default=[], help="extra pspnet-serve flags, e.g. --sessions=2")
    p.add_argument("--server-log", type=Path, default=Path("large-server.log"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    body = large_jpeg(args.image, h, w)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, ["--max-pixels=100000000", "--max-body-bytes=104857600",
                                           "--max-memory-mb=20000", "--request-timeout-s=600",
                                           *args.server_args], args.server_log)
    rows = []
    try:
        wait_ready(url, proc, seconds=600)
        idle = vm(proc.pid, "VmRSS")
        with httpx.Client(base_url=url, timeout=900) as c:
            for mode in args.modes:
                runs = [measure(c, proc.pid, body, mode, args.output) for _ in range(args.repeat)]
                runs.sort(key=lambda r: r["wall_s"])
                row = {**runs[len(runs) // 2], "runs": runs}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    upload = {"size": args.size, "bytes": len(body), "format": "JPEG q90"}
    report = {"model": args.model.name, "upload": upload, "idle_rss_mb": round(idle / MB, 1), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
