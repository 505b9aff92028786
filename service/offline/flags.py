"""The flags of the offline commands that choose a model and its engine, and the engine they make.

Tested by tests/service/offline/test_segment.py and tests/service/offline/test_evaluate.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.contract.artifact import MODES, ArtifactError
from service.engine.sessions import Engine
from service.settings import DEFAULT_MODEL


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX artifact (default: shipped model)")
    p.add_argument("--mode", choices=MODES, help="default: the model's protocol")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--scales", help="comma-separated scales, e.g. 0.75,1.0,1.25")
    p.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--max-batch", type=int, default=4)


def load_engine(args: argparse.Namespace) -> Engine:
    try:
        # segment has --device-stitch; evaluate has not: it scores the exact host stitch
        return Engine(args.model, provider=args.provider, intra_op_threads=args.threads,
                      inter_op_threads=1, max_batch=args.max_batch,
                      device_stitch=getattr(args, "device_stitch", "off"))
    except ArtifactError as e:
        print(f"pspnet-serve: {e}", file=sys.stderr)
        raise SystemExit(2) from None
