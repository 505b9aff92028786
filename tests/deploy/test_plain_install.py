"""A user's plain install: ``pip install '.[cpu]'`` (not editable) into a fresh venv, and
``pspnet-serve`` started from another folder serves the shipped default model.

The wheel carries weights/*.onnx as the package data of ``pspnet_weights`` (setup.py);
the serving install holds no torch, no onnx and no httpx. pip may use this machine's
cache and the package index. PSPNET_SKIP_INSTALL_TEST=1 skips it, as test_install.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.load.localserver import stop

from .helpers import ROOT, free_port, http_get, wait_ready

pytestmark = [
    pytest.mark.skipif(os.environ.get("PSPNET_SKIP_INSTALL_TEST") == "1",
                       reason="PSPNET_SKIP_INSTALL_TEST=1"),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
                           f"{ROOT}[cpu]"], capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


def _run_py(venv: Path, code: str, cwd: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_serving_install_holds_no_torch_onnx_or_httpx(venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.util as u, json; "
            "print(json.dumps({m: u.find_spec(m) is not None for m in "
            "['torch', 'onnx', 'httpx', 'onnxruntime', 'service', 'pspnet_weights']}))")
    found = json.loads(_run_py(venv, code, tmp_path))
    assert found == {"torch": False, "onnx": False, "httpx": False, "onnxruntime": True, "service": True,
                     "pspnet_weights": True}


def test_default_model_is_the_packaged_artifact_with_its_card_hash(venv: Path, tmp_path: Path) -> None:
    code = ("import hashlib; from service.settings import DEFAULT_MODEL as m; "
            "print(m); print(hashlib.sha256(m.read_bytes()).hexdigest())")
    path, digest = _run_py(venv, code, tmp_path).split()
    assert Path(path).is_relative_to(venv) and Path(path).parent.name == "pspnet_weights"
    card = (ROOT / "weights" / "README.md").read_text()
    assert digest in card, "the wheel's artifact is not the one the card describes"


def test_bench_without_the_extra_is_a_usage_message(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(venv / "bin" / "pspnet-serve"), "bench", "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "pip install '.[bench]'" in done.stderr and "Traceback" not in done.stderr


def test_serves_the_default_model_from_another_folder(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSPNET_")}
    env.update({"PSPNET_HOST": "127.0.0.1", "PSPNET_PORT": str(port), "PSPNET_INTRA_OP_THREADS": "1",
                "PSPNET_WARMUP": "false"})
    proc = subprocess.Popen([str(venv / "bin" / "pspnet-serve")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        status, text = http_get(base + "/v1/models")
        assert status == 200
        assert "camvid" in text.lower()
        buf = io.BytesIO()
        rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(buf, format="PNG")
        req = urllib.request.Request(base + "/v1/segment?output=label", data=buf.getvalue(),
                                     headers={"Content-Type": "image/png"}, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            labels = np.asarray(Image.open(io.BytesIO(r.read())))
        assert labels.shape == (120, 160) and labels.max() < 11
    finally:
        stop(proc)
