"""Baseline 2: the server users write instead, written the way they write it.

    python benchmarks/speed/naive_server.py --checkpoint weights/pspnet_camvid.pt --port 8001
    pspnet-serve bench --url http://127.0.0.1:8001 --path /predict --multipart --image street.png ...

FastAPI, a plain ``def`` handler (FastAPI runs it in its thread pool), the
shipped PyTorch checkpoint loaded once in eager mode, default torch threading,
and decode / normalise / forward / argmax / colour-PNG encode in the handler.
Nothing is slowed down on purpose: ``torch.inference_mode``, the model in
``eval()``, one forward per request at the image's own size (a 360x480 CamVid
frame is exactly the tile), and Pillow's default PNG settings. What it lacks
is what the service adds: cross-request batching, a bounded queue, threads
that do not fight over the two cores.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, File, UploadFile  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from PIL import Image  # noqa: E402

from model.convert import load_checkpoint  # noqa: E402
from model.datasets import IMAGENET_MEAN, IMAGENET_STD, dataset_info  # noqa: E402


def build_app(checkpoint: Path) -> FastAPI:
    model, report = load_checkpoint(checkpoint, "native")
    model.eval()
    palette = np.array(dataset_info(report.dataset or "camvid").palette, dtype=np.uint8).tobytes()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(image: UploadFile = File(...)) -> Response:  # noqa: B008  (FastAPI's own idiom)
        img = Image.open(image.file).convert("RGB")
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float()
        x = ((x - mean) / std).unsqueeze(0)
        with torch.inference_mode():
            logits = model(x)["out"]
        labels = logits.argmax(1)[0].to(torch.uint8).numpy()
        mask = Image.fromarray(labels)
        mask.putpalette(palette)
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="native checkpoint (weights/*.pt)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    uvicorn.run(build_app(args.checkpoint), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
