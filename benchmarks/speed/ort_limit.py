"""Baseline 1, the limit: raw ONNX Runtime throughput of an artifact, no HTTP, no pre/post-processing.

    python benchmarks/speed/ort_limit.py --model weights/pspnet_camvid.onnx --image street.png \
        --batches 1 2 4 8 --seconds 20 --json benchmarks/ort_limit.json

A session with the serving engine's options (service.engine.sessions.session_options:
full graph optimisation, ``--threads`` intra-op threads, 0 = ORT's default of
one per core), fed one fixed tile (the image resized to the tile, once) repeated
``N`` times; by default twice, with ORT's thread spinning on (ORT's default) and
off (the engine's default), interleaved per batch size. For each: two warm-up
runs, then back-to-back runs for ``--seconds``; tiles/s = N * runs / time. The
best of all is the limit the served throughput is held against; the fastest
median batch-1 run is the single-image inference time the latency target is
held against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from service.contract.artifact import INPUT_NAME, OUTPUT_NAME, read_meta  # noqa: E402
from service.engine.sessions import session_options  # noqa: E402
from service.offline.inputs import read_image  # noqa: E402
from service.protocol.plan import plan_tiles  # noqa: E402


def tile_from_image(path: Path, tile: tuple[int, int]) -> np.ndarray:
    """(3, H, W) float32 raw 0..255: the image as the service tiles it for mode=whole."""
    return plan_tiles(read_image(path).rgb, tile=tile, mode="whole").tiles[0]


def measure(session: ort.InferenceSession, tile: np.ndarray, batch: int, seconds: float) -> dict[str, float]:
    x = np.ascontiguousarray(np.broadcast_to(tile, (batch, *tile.shape)))
    for _ in range(2):
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
    runs: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(runs) < 3:
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
        runs.append(time.perf_counter() - t0)
    total = sum(runs)
    return {"batch": batch, "runs": len(runs), "tiles_per_s": round(batch * len(runs) / total, 3),
            "median_run_ms": round(statistics.median(runs) * 1000, 2),
            "p90_run_ms": round(float(np.percentile(runs, 90)) * 1000, 2),
            "median_ms_per_tile": round(statistics.median(runs) * 1000 / batch, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=20.0, help="per batch size")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads, 0 = ORT default")
    p.add_argument("--spin", choices=["on", "off", "both"], default="both", help="ORT thread spinning")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    meta = read_meta(args.model)
    spins = {"on": [True], "off": [False], "both": [True, False]}[args.spin]
    sessions = {spin: ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"],
                                           sess_options=session_options(args.threads, 1, spin=spin))
                for spin in spins}
    tile = tile_from_image(args.image, meta.tile)
    rows = []
    for b in args.batches:
        for spin, session in sessions.items():
            row = {"spin": spin, **measure(session, tile, b, args.seconds)}
            rows.append(row)
            print(f"batch {b:>2}, spin {'on ' if spin else 'off'}: {row['tiles_per_s']:7.2f} tiles/s, "
                  f"median run {row['median_run_ms']:8.1f} ms ({row['median_ms_per_tile']:.1f} ms/tile, "
                  f"{row['runs']} runs)", flush=True)
    best = max(rows, key=lambda r: r["tiles_per_s"])
    single = min((r for r in rows if r["batch"] == 1), key=lambda r: r["median_run_ms"], default=None)
    result = {"model": args.model.name, "tile": list(meta.tile), "threads": args.threads,
              "onnxruntime": ort.__version__, "sweep": rows, "best_batch": best["batch"],
              "best_spin": best["spin"], "limit_tiles_per_s": best["tiles_per_s"],
              "single_image_ms": single["median_run_ms"] if single else None}
    print(f"limit: {best['tiles_per_s']} tiles/s at batch {best['batch']} (spin {best['spin']}); "
          f"single image {result['single_image_ms']} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
