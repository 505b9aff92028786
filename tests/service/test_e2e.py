"""The real server process: start ``pspnet-serve``, segment over a socket, stop it with SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.load.localserver import free_port, wait_ready
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact


def _serve(model: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PSPNET_LOG_LEVEL": "info"}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def test_segment_over_a_socket_then_sigterm(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    port = free_port()
    proc = _serve(model, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", proc)
        r = httpx.post(url + "/v1/segment?output=label", content=png_bytes(50, 70),
                       headers={"content-type": "image/png", "x-request-id": "e2e-1"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (50, 70)
        assert "pspnet_requests_total" in httpx.get(url + "/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    log = out.decode()
    # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM so a
    # supervisor sees how the process ended: -SIGTERM is the graceful exit
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "pspnet.app: stopped" in log
    # one structured line per request, carrying the request id
    assert '"request_id":"e2e-1"' in log and '"status":200' in log


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_missing_or_corrupt_model_stops_startup(tmp_path: Path, content: bytes | None) -> None:
    model = tmp_path / "model.onnx"
    if content is not None:
        model.write_bytes(content)
    proc = _serve(model, free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    text = out.decode()
    assert "model" in text and str(model) in text and "Traceback" not in text


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    proc = _serve(model, free_port(), "--max-batch", "0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "PSPNET_MAX_BATCH" in out.decode() and "Traceback" not in out.decode()
