"""Does the in-graph ``labels`` output pay? (measured when the output was added: weights/README.md)

1. Time, per artifact and batch size: session.run fetching [logits], [labels],
   [logits, labels]; and the server's current post-processing of the logits
   (service.protocol.stitch._window_probs: float32 softmax, then service.protocol.argmax.argmax_classes),
   per tile. Variants interleaved in rotating order; median of --runs.
2. Label agreement over every CamVid val image (360x480, one window): the graph's
   labels vs service.protocol.stitch.stitch_labels (the server's path today), float32 and int8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from service.contract.artifact import INPUT_NAME, LABELS_NAME, OUTPUT_NAME, read_meta  # noqa: E402
from service.protocol.argmax import argmax_classes  # noqa: E402
from service.protocol.plan import plan_tiles  # noqa: E402
from service.protocol.probs import window_probs  # noqa: E402
from service.protocol.stitch import stitch_labels  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()  # as service.engine.sessions.session_options(threads, 0): no spinning
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def postprocess(logits: np.ndarray) -> list[np.ndarray]:
    return [argmax_classes(window_probs(logits, k, False), np.uint8) for k in range(logits.shape[0])]


def timings(path: Path, images: list[Path], batch: int, runs: int,
            threads: int) -> dict[str, tuple[float, float]]:
    s = session(path, threads)
    tiles = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
                      for p in images[:batch]]).astype(np.float32)
    logits = s.run([OUTPUT_NAME], {INPUT_NAME: tiles})[0]
    variants = {
        "run [logits]": lambda: s.run([OUTPUT_NAME], {INPUT_NAME: tiles}),
        "run [labels]": lambda: s.run([LABELS_NAME], {INPUT_NAME: tiles}),
        "run [logits, labels]": lambda: s.run([OUTPUT_NAME, LABELS_NAME], {INPUT_NAME: tiles}),
        "numpy softmax+argmax": lambda: postprocess(logits),
    }
    for f in variants.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(runs):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (1e3 * statistics.median(v), 1e3 * sorted(v)[len(v) // 10]) for k, v in times.items()}


def agreement(path: Path, images: list[Path]) -> tuple[int, int, int]:
    meta = read_meta(path)
    s = session(path, 0)
    equal = total = tied = 0
    for p in images:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        plan = plan_tiles(rgb, tile=meta.tile, mode="slide", base_size=meta.protocol.base_size,
                          mean=meta.mean)
        logits, labels = s.run([OUTPUT_NAME, LABELS_NAME], {INPUT_NAME: plan.tiles})
        server = stitch_labels(plan, logits)
        assert labels.shape == (1, *server.shape)
        equal += int(np.count_nonzero(labels[0] == server))
        total += server.size
        top2 = np.sort(logits[0], axis=0)[-2:]
        tied += int(np.count_nonzero(top2[0] == top2[1]))
    return equal, total, tied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-agreement", action="store_true")
    args = ap.parse_args()
    images = sorted(args.val.glob("*.png"))
    for path in args.models:
        for batch in (1, 4):
            t = timings(path, images, batch, args.runs, args.threads)
            cells = ", ".join(f"{k} {m:.1f} (p10 {q:.1f}) ms" for k, (m, q) in t.items())
            print(f"{path.name} batch {batch}: {cells}", flush=True)
        if args.no_agreement:
            continue
        equal, total, tied = agreement(path, images)
        print(f"{path.name}: labels equal to the server's on {equal}/{total} pixels "
              f"({100 * equal / total:.4f}%), {len(images)} images; "
              f"pixels with an exact logit tie for first: {tied}", flush=True)


if __name__ == "__main__":
    main()
