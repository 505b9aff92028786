"""The stitch on the device against the exact host stitch, on real images: labels, values, host CPU.

``python -m benchmarks device-stitch`` runs the shipped model (or ``--model``) on real images
(CamVid val by default: never the test split), once, and stitches each image's logits both ways:
the exact float64 host stitch (service/protocol/stitch.py) and the device stitch
(service/engine/device_stitch.py) on ONNX Runtime's provider here (the CPU provider stands in for
CUDA: the same graphs, the same calls). Per mode it reports:

- the share of pixels whose label differs, and the largest official top-two margin among them (the
  issue's rule: at most 0.05% of pixels, only where the margin is at most 0.01);
- the largest difference of the confidence (the top class's probability);
- host CPU per request of each stitch (thread CPU time: what the server's Python side pays), and
  the graph runs the device stitch makes per request with the dispatch cost of one run (a run on
  one-pixel inputs: what a run costs the host whatever the device does).

On the CPU provider the device stitch's own arithmetic runs on the host, so its CPU time here is
not what a GPU machine pays; the graph runs and their dispatch cost are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.contract.artifact import MULTISCALE
from service.contract.soft import Soft
from service.engine.device_kit import DeviceBatch, DeviceBudget, DeviceKit, DeviceRows
from service.engine.device_stitch import DeviceStitching
from service.engine.sessions import Engine
from service.pipeline.runner import EngineRunner
from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.stitch import Stitcher, summed_probs
from service.settings import DEFAULT_MODEL

CAMVID_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid" / "val"


def cpu_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.thread_time()
    out = fn()
    return out, (time.thread_time() - t0) * 1000


def official(plan: TilePlan, logits: np.ndarray) -> np.ndarray:
    return np.concatenate([p for _, p in summed_probs(plan, logits)], axis=2)


def host_stitch(plan: TilePlan, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stitcher = Stitcher(plan.scales, plan.image_size, logits.shape[1], plan.tile)
    stitcher.add(logits, 0)
    labels = stitcher.labels()
    return labels, stitcher.soft(Soft("confidence"), labels)


class CountingKit(DeviceKit):
    """The kit, counting its graph runs."""

    runs = 0

    def run(self, graph: str, feed: Any, *, to_host: bool = False) -> Any:
        CountingKit.runs += 1
        return super().run(graph, feed, to_host=to_host)


def device_stitch(kit: DeviceKit, plan: TilePlan, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    stitcher = DeviceStitching(kit, DeviceBudget(1 << 40)).stitcher(plan.scales, plan.image_size,
                                                                      logits.shape[1], plan.tile)
    assert stitcher is not None
    value = ort.OrtValue.ortvalue_from_numpy(logits)  # one upload, not timed as the stitch's
    rows: DeviceRows = DeviceBatch(value, len(logits))[0:len(logits)]
    stitcher.add(rows, 0)
    labels = stitcher.labels()
    confidence = stitcher.soft(Soft("confidence"), labels)
    stitcher.close()
    return labels, confidence


def dispatch_ms(kit: DeviceKit, repeat: int = 200) -> float:
    """Host time of one window-graph run on one-pixel inputs (a run's fixed cost)."""
    logits = np.zeros((1, 1, 1, 1), np.float32)
    feed = {"logits": logits, "index": np.array([0]), "crop": np.array([0, 0, 1, 1]),
            "pads": np.zeros(6, np.int64), "total": np.zeros((1, 1, 1), np.float32)}
    kit.run("window", feed)
    t0 = time.perf_counter()
    for _ in range(repeat):
        kit.run("window", feed)
    return (time.perf_counter() - t0) / repeat * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=Path, default=CAMVID_VAL, help="folder of images (PNG/JPEG)")
    parser.add_argument("--count", type=int, default=6, help="images to use (sorted names, evenly spread)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    engine = Engine(args.model, provider="cpu", max_batch=4)
    meta, p = engine.meta, engine.meta.protocol
    kit = CountingKit(engine.provider)
    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    files = files[:: max(1, len(files) // args.count)][: args.count]
    modes = {"slide": ("slide", None, False), "multiscale+flip": ("multiscale", MULTISCALE, True)}
    report: dict[str, Any] = {"model": args.model.name, "classes": meta.num_classes, "images": len(files),
                              "dispatch_ms": round(dispatch_ms(kit), 4), "modes": {}}
    for name, (mode, scales, flip) in modes.items():
        moved, pixels, margins, conf_err, host_cpu, dev_cpu, runs = 0, 0, [0.0], 0.0, [], [], []
        for f in files:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            plan = plan_tiles(rgb, tile=meta.tile, mode=mode, scales=scales, flip=flip,  # type: ignore[arg-type]
                              base_size=p.base_size, stride_rate=p.stride_rate, mean=meta.mean)
            logits = EngineRunner(engine, 4).run(plan.tiles)
            probs = official(plan, logits)
            (h_labels, _), h_ms = cpu_ms(lambda: host_stitch(plan, logits))  # noqa: B023
            before = CountingKit.runs
            (d_labels, d_conf), d_ms = cpu_ms(lambda: device_stitch(kit, plan, logits))  # noqa: B023
            runs.append(CountingKit.runs - before)
            differ = d_labels != h_labels
            top = np.partition(probs, -2, axis=2)
            if differ.any():
                margins.append(float((top[:, :, -1] - top[:, :, -2])[differ].max()))
            moved += int(differ.sum())
            pixels += differ.size
            conf_err = max(conf_err, float(np.abs(d_conf - probs.max(axis=2)).max()))
            host_cpu.append(h_ms)
            dev_cpu.append(d_ms)
            print(f"{name} {f.name}: moved {int(differ.sum())}/{differ.size}, host {h_ms:.0f} ms, "
                  f"device (CPU provider) {d_ms:.0f} ms, {runs[-1]} graph runs", flush=True)
        report["modes"][name] = {
            "moved_share": moved / pixels, "largest_margin_moved": max(margins),
            "confidence_max_err": conf_err,
            "host_stitch_cpu_ms_median": round(statistics.median(host_cpu), 1),
            "device_stitch_cpu_ms_median_on_cpu_provider": round(statistics.median(dev_cpu), 1),
            "graph_runs_per_request": statistics.median(runs)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
