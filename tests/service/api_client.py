"""Run the real app (lifespan included) against a tiny ONNX model, in-process over httpx."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.api.app import create_app
from service.settings import Settings


def png_bytes(height: int = 40, width: int = 60, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@asynccontextmanager
async def serving(model: Path, *, wait_ready: bool = True, raise_app_exceptions: bool = True,
                  **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``raise_app_exceptions=False``: a 500 reaches the client as a response, as over a socket
    (Starlette answers an unhandled error, then re-raises it for the server to log)."""
    settings = Settings(model=model, **overrides)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            if wait_ready:
                for _ in range(600):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise TimeoutError("service never became ready")
            yield client


def metric_samples(text: str, name: str) -> dict[str, float]:
    """Prometheus text -> {label string: value} for one sample name."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out
