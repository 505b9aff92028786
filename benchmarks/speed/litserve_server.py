"""Baseline: the same ONNX model served by LitServe, written the way LitServe's users write it.

    python benchmarks/speed/litserve_server.py --model weights/pspnet_camvid.onnx --port 8002
    python benchmarks/speed/litserve_server.py --model ... --port 8002 --workers 2 --ort-threads 1
    pspnet-serve bench --url http://127.0.0.1:8002 --path /predict --multipart --image street.png ...

A LitAPI of about thirty lines: ``setup`` opens an onnxruntime
InferenceSession on the artifact the service serves (ORT's default options:
its own thread count unless ``--ort-threads``); ``decode_request`` reads the
multipart field ``image`` with Pillow into RGB and resizes it with cv2 to the
model's tile only when it is not that size (the service's ``mode=whole``);
``batch`` stacks; ``predict`` runs ``logits``; ``unbatch`` splits;
``encode_response`` takes the argmax over classes, scales the labels back to
the upload's size (nearest) when it was resized, and answers a paletted PNG
(the palette from the artifact's metadata) as ``image/png``. LitServe's own
dynamic batching: ``max_batch_size=4``, ``batch_timeout=0.002`` s, as the
service's defaults. ``--workers N`` is LitServe's ``workers_per_device`` on
``accelerator="cpu"``: N inference processes, each with its own session.

LitServe starts processes (inference workers, an HTTP server per worker). It
stops them itself on KeyboardInterrupt; SIGTERM is turned into one here, so
``kill PID`` shuts everything down.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi import Response
from PIL import Image


class SegmentationAPI(ls.LitAPI):
    def __init__(self, model: str, ort_threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model, self.ort_threads = model, ort_threads

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.ort_threads  # 0: ORT's default
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map["pspnet"])
        self.tile = tuple(meta["tile"])  # (height, width)
        self.palette = np.array(meta["palette"], np.uint8).tobytes()

    def decode_request(self, request) -> tuple[np.ndarray, tuple[int, int]]:  # type: ignore[no-untyped-def]
        rgb = np.asarray(Image.open(request["image"].file).convert("RGB"))
        size = rgb.shape[:2]
        if size != self.tile:
            rgb = cv2.resize(rgb, self.tile[::-1], interpolation=cv2.INTER_LINEAR)
        return rgb.transpose(2, 0, 1).astype(np.float32), size

    def batch(self, inputs: list[tuple[np.ndarray, tuple[int, int]]]) -> tuple[np.ndarray, list[Any]]:
        return np.stack([x for x, _ in inputs]), [size for _, size in inputs]

    def predict(self, batch: tuple[np.ndarray, list[Any]]) -> tuple[np.ndarray, list[Any]]:
        tiles, sizes = batch
        return self.session.run(["logits"], {"image": tiles})[0], sizes

    def unbatch(self, output: tuple[np.ndarray, list[Any]]) -> list[tuple[np.ndarray, Any]]:
        logits, sizes = output
        return list(zip(logits, sizes, strict=True))

    def encode_response(self, output: tuple[np.ndarray, tuple[int, int]]) -> Response:
        logits, (height, width) = output
        labels = logits.argmax(0).astype(np.uint8)
        if labels.shape != (height, width):
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        mask = Image.fromarray(labels, "L")
        mask.putpalette(self.palette)
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        return Response(content=buf.getvalue(), media_type="image/png")


MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != MAIN_PID:  # a forked HTTP server re-raising the signal after its own shutdown
        raise SystemExit(0)
    raise KeyboardInterrupt  # LitServer.run's own graceful shutdown: workers terminated and joined


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the ONNX artifact the service serves")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--workers", type=int, default=1, help="LitServe workers_per_device (CPU)")
    p.add_argument("--ort-threads", type=int, default=0, help="ORT intra-op threads per worker, 0 = default")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    args = p.parse_args(argv)
    api = SegmentationAPI(str(args.model.resolve()), args.ort_threads, max_batch_size=args.max_batch_size,
                          batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    signal.signal(signal.SIGTERM, _interrupt)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
