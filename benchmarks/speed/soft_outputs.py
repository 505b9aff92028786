"""What a soft output costs (issue #28): time and bytes of output=confidence, output=probability and
/v2 probabilities against the label outputs, through the chain the server runs (in this process,
one request at a time, the shipped model unless --model).

    python -m benchmarks soft-outputs --sizes 360x480 1080x1920 --repeat 5 --json out.json

Per size and output: the median seconds of a whole request (decode, tiles, model, stitch, the soft
values, encode) over --repeat runs, and the bytes of what would be sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable from a checkout
from benchmarks.reliability.memory import smooth_png
from benchmarks.reliability.overload import DEFAULT_MODEL
from service.codec.decode import NO_LIMITS
from service.codec.outputs import OutputOptions, encode_output
from service.contract.soft import Soft
from service.engine.sessions import Engine
from service.pipeline.chain import Chain, Upload
from service.pipeline.params import resolve
from service.pipeline.runner import EngineRunner

#: name -> (the format encoded, the soft output asked for)
OUTPUTS: dict[str, tuple[str | None, Soft | None]] = {
    "color": ("color", None), "label": ("label", None), "confidence": ("confidence", Soft("confidence")),
    "probability": ("probability", Soft("probability", 1)),
    "probabilities (v2, FP16)": (None, Soft("probabilities")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--sizes", nargs="+", default=["360x480", "1080x1920"], help="HEIGHTxWIDTH")
    p.add_argument("--mode", default="slide")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    engine = Engine(args.model, provider="cpu", max_batch=4)
    engine.warmup()
    meta = engine.meta
    chain = Chain(meta, NO_LIMITS)
    params = resolve(meta.protocol, mode=args.mode, flip=None, scales=None, max_scales=8)
    options = OutputOptions(class_name=meta.classes[1])
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        upload = Upload(smooth_png(h, w))
        for name, (fmt, soft) in OUTPUTS.items():

            def encode(rgbs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       softs: Sequence[np.ndarray | None], fmt: str | None = fmt) -> bytes:
                if fmt is None:  # /v2 sends the array's bytes
                    values = softs[0]
                    assert values is not None
                    return values.tobytes()
                values = softs[0] if softs[0] is not None else labels[0]
                return encode_output(fmt, meta, rgbs[0], values, options).body

            seconds, body = [], b""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = asyncio.run(chain.segment([upload], params, encode, runner=EngineRunner(engine, 4),
                                                   soft=soft))
                seconds.append(time.perf_counter() - t0)
                body = result.encoded
            row = {"size": size, "output": name, "seconds": round(statistics.median(seconds), 4),
                   "bytes": len(body), "bytes_per_pixel": round(len(body) / (h * w), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        report = {"model": args.model.name, "mode": args.mode, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
