"""The served labels against the official procedure, computed here the plain way (issue #25).

``python -m benchmarks official-check --model M.onnx --size 512x806 --mode multiscale --flip``
starts nothing: it asks a running server (``--url``) for the label PNG of a smooth synthetic
image and computes the official procedure (hszhao/semseg ``tool/test.py``) for the same pixels
with ONNX Runtime in this process: per scale the image resized, padded, cut into windows, each
window's softmax (flip-averaged), summed in float64 and divided by the coverage, resized to the
image with OpenCV (channels last, as the official code) and added; argmax. One scale's logits
are held at a time (a 150-class 473x473 tile is 134 MB), so it fits where all of them would not.
Prints the share of pixels where the two agree (1.0 means every pixel).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable from a checkout
from benchmarks.reliability.memory import smooth_png
from service.codec.decode import NO_LIMITS, decode
from service.contract.artifact import read_meta
from service.pipeline.params import resolve
from service.protocol.plan import scale_tiles
from service.protocol.probs import scale_probs_hwc
from service.protocol.resize import resize_linear
from service.protocol.windows import plan_geometry


def official_labels(model: Path, rgb: np.ndarray, mode: str, flip: bool) -> np.ndarray:
    """The official procedure's labels for ``rgb`` with this artifact, a scale at a time."""
    import onnxruntime as ort

    meta = read_meta(model)
    params = resolve(meta.protocol, mode=mode, flip=flip, scales=None, max_scales=16)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    geometry = plan_geometry(*rgb.shape[:2], tile=meta.tile, mode=params.mode, scales=params.scales,
                             flip=params.flip, base_size=meta.protocol.base_size,
                             stride_rate=meta.protocol.stride_rate)
    total = np.zeros((*rgb.shape[:2], meta.num_classes))
    for geom in geometry:
        tiles = scale_tiles(rgb, geom, tile=meta.tile, mean=meta.mean)
        logits = np.concatenate([session.run(["logits"], {"image": tiles[i:i + 2]})[0]
                                 for i in range(0, len(tiles), 2)])
        for (a, b), probs in scale_probs_hwc(dataclasses.replace(geom, first=0), meta.tile, logits):
            same = probs.shape[:2] == rgb.shape[:2]
            total[:, :, a:b] += probs if same else resize_linear(probs, rgb.shape[:2])
        del logits
    total /= len(geometry)
    return total.argmax(axis=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--size", default="360x240", help="HEIGHTxWIDTH")
    p.add_argument("--mode", default="multiscale")
    p.add_argument("--flip", action="store_true")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    body = smooth_png(h, w)
    query = {"mode": args.mode, "flip": str(args.flip).lower(), "output": "label"}
    r = httpx.post(args.url + "/v1/segment", params=query, content=body,
                   headers={"content-type": "image/png"}, timeout=3600)
    r.raise_for_status()
    served = np.asarray(Image.open(io.BytesIO(r.content)))
    official = official_labels(args.model, decode(body, "image/png", NO_LIMITS).rgb, args.mode, args.flip)
    agree = float((served == official).mean())
    print(json.dumps({"size": args.size, "mode": args.mode, "flip": args.flip, "agreement": agree}))
    return 0 if agree == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
