"""A real server and a real browser, for tests/service/api/test_web_browser.py and scripts/screenshot_demo.py.

The server is ``python -m service.cli`` (uvicorn, the real app) on a free loopback port.
The browser is Debian's ``chromium`` driven by Playwright, never one that Playwright
downloads: ``.ci/run`` installs the package with apt-get when it is missing. Without it
the browser tests skip on a developer's machine and fail in CI (``CI=true``), where a
missing browser is a broken setup, not a reason to test less.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: the shipped default model (CamVid classes), a file of the repository
CAMVID = ROOT / "weights" / "pspnet_camvid.onnx"


def require_chromium() -> Path:
    """The browser's path; a skip without it, except in CI where it is a failure."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@contextmanager
def live_server(model: Path, *, seconds: float = 120, **settings: str) -> Iterator[str]:
    """Serve ``model`` on 127.0.0.1 until the block ends; yields the base URL once /readyz is 200.

    ``settings``: more PSPNET_* variables by their lower-case suffix (``auth_token="..."``).
    """
    port = free_port()
    env = {**os.environ, "PSPNET_MODEL": str(model), "PSPNET_HOST": "127.0.0.1", "PSPNET_PORT": str(port),
           "PSPNET_PROVIDER": "cpu", "PSPNET_INTRA_OP_THREADS": "1", "PSPNET_MAX_BATCH": "1",
           "PSPNET_LOG_LEVEL": "warning", **{f"PSPNET_{k.upper()}": v for k, v in settings.items()}}
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + seconds
            while _status(base + "/readyz") != 200:
                if proc.poll() is not None or time.monotonic() > end:
                    log.seek(0)
                    raise RuntimeError(f"server not ready (exit code {proc.poll()}): "
                                       f"{log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def street_png(width: int = 480, height: int = 360, seed: int = 0) -> bytes:
    """A drawn street scene (sky, buildings, trees, road, pavement, a car): no dataset pixels."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    horizon = int(height * 0.55)
    for y in range(horizon):  # sky, lighter towards the horizon
        t = y / horizon
        d.line([(0, y), (width, y)], fill=(int(110 + 100 * t), int(160 + 70 * t), int(225 + 25 * t)))
    x = 0
    while x < width:  # a row of buildings with windows
        w = int(rng.integers(50, 110))
        top = int(rng.integers(int(height * 0.12), int(height * 0.35)))
        shade = int(rng.integers(90, 170))
        d.rectangle([x, top, x + w, horizon], fill=(shade, shade - 10, shade - 25))
        for wy in range(top + 8, horizon - 12, 18):
            for wx in range(x + 6, x + w - 10, 16):
                d.rectangle([wx, wy, wx + 8, wy + 10], fill=(60, 70, 90))
        x += w + 2
    for cx in (int(width * 0.15), int(width * 0.8)):  # trees
        d.rectangle([cx - 4, horizon - 40, cx + 4, horizon + 10], fill=(80, 55, 30))
        d.ellipse([cx - 35, horizon - 110, cx + 35, horizon - 30], fill=(50, 110, 40))
    d.polygon([(0, horizon + 5), (width, horizon + 5), (width, height), (0, height)], fill=(170, 165, 160))
    d.polygon([(int(width * 0.1), height), (int(width * 0.42), horizon + 5), (int(width * 0.58), horizon + 5),
               (int(width * 0.9), height)], fill=(75, 75, 80))  # road
    for k in range(5):  # lane markings
        y0 = horizon + 12 + k * (height - horizon) // 5
        d.rectangle([width // 2 - 2 - k, y0, width // 2 + 2 + k, y0 + 10 + 3 * k], fill=(235, 235, 235))
    d.rectangle([int(width * 0.55), height - 110, int(width * 0.78), height - 60], fill=(170, 30, 35))  # car
    d.rectangle([int(width * 0.58), height - 135, int(width * 0.74), height - 108], fill=(120, 20, 25))
    for wx in (0.59, 0.74):
        d.ellipse([int(width * wx) - 12, height - 72, int(width * wx) + 12, height - 48], fill=(20, 20, 20))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()
