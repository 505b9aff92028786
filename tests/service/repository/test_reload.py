"""Re-reading the repository without a restart: POST /v1/admin/reload (token only) and SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from benchmarks.load.localserver import free_port, stop, wait_ready
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

TOKEN = "reload-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PNG = {"content-type": "image/png", **AUTH}


async def _reload(c: httpx.AsyncClient) -> httpx.Response:
    return await c.post("/v1/admin/reload", headers=AUTH)


async def _names(c: httpx.AsyncClient) -> list[str]:
    return [m["name"] for m in (await c.get("/v1/models", headers=AUTH)).json()["models"]]


@pytest.mark.anyio
async def test_reload_adds_replaces_removes_and_keeps_a_broken_files_old_version(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=5)
    async with serving(tmp_path, auth_token=TOKEN) as c:
        assert (await c.post("/v1/admin/reload")).status_code == 401
        nothing_new = {"loaded": [], "unchanged": ["alpha"], "removed": [], "failed": {}}
        assert (await _reload(c)).json() == nothing_new
        old = c._transport.app.state.service.models["alpha"]  # type: ignore[attr-defined]

        build_tiny_artifact(tmp_path / "b.onnx", name="beta", num_classes=3)
        added = (await _reload(c)).json()
        beta = await c.post("/v1/models/beta/segment", content=png_bytes(), headers=PNG)
        assert added["loaded"] == ["beta"] and added["unchanged"] == ["alpha"]
        assert beta.status_code == 200 and await _names(c) == ["alpha", "beta"]

        time.sleep(0.01)  # a new mtime even on coarse clocks
        build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=4)
        replaced = (await _reload(c)).json()
        info = (await c.get("/v1/models/alpha", headers=AUTH)).json()
        assert replaced["loaded"] == ["alpha"] and len(info["classes"]) == 4 and info["ready"]
        assert not old.accepting  # the replaced version takes nothing new and drains

        (tmp_path / "b.onnx").unlink()
        removed = (await _reload(c)).json()
        assert removed["removed"] == ["beta"]
        assert (await c.get("/v1/models/beta", headers=AUTH)).status_code == 404

        (tmp_path / "a.onnx").write_bytes(b"truncated")
        broken = (await _reload(c)).json()
        served = await c.post("/v1/models/alpha/segment", content=png_bytes(), headers=PNG)
        info = (await c.get("/v1/models/alpha", headers=AUTH)).json()
        assert "a.onnx" in broken["failed"] and served.status_code == 200
        assert info["ready"] and "readable" in info["reload_error"] and len(info["classes"]) == 4


@pytest.mark.anyio
async def test_a_repository_that_cannot_be_served_changes_nothing(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    async with serving(tmp_path, auth_token=TOKEN) as c:
        build_tiny_artifact(tmp_path / "b.onnx", name="alpha")  # a second artifact named alpha
        refused = await _reload(c)
        still = await c.post("/v1/models/alpha/segment", content=png_bytes(), headers=PNG)
    assert refused.status_code == 409 and "a.onnx and b.onnx" in refused.json()["detail"]
    assert still.status_code == 200


@pytest.mark.anyio
async def test_no_token_no_reload_route(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    async with serving(tmp_path) as c:
        assert (await c.post("/v1/admin/reload")).status_code == 404


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    port = free_port()
    env = {**os.environ, "PSPNET_MODEL": str(tmp_path), "PSPNET_HOST": "127.0.0.1", "PSPNET_PORT": str(port),
           "PSPNET_INTRA_OP_THREADS": "1", "PSPNET_WARMUP": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", proc)
        build_tiny_artifact(tmp_path / "b.onnx", name="beta")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        names: list[str] = []
        while time.monotonic() < deadline and names != ["alpha", "beta"]:
            time.sleep(0.1)
            names = [m["name"] for m in httpx.get(base + "/v1/models").json()["models"]]
        assert names == ["alpha", "beta"]
        with urllib.request.urlopen(urllib.request.Request(
                base + "/v1/models/beta/segment", data=png_bytes(), headers={"content-type": "image/png"}),
                timeout=30) as r:
            assert r.status == 200
    finally:
        stop(proc, seconds=30)


@pytest.mark.anyio
async def test_a_replaced_model_finishes_what_it_accepted(tmp_path: Path,
                                                           slow_engine: threading.Event) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=5)
    async with serving(tmp_path, auth_token=TOKEN, warmup=False) as c:
        old = c._transport.app.state.service.models["alpha"]  # type: ignore[attr-defined]
        held = asyncio.create_task(c.post("/v1/models/alpha/segment?mode=whole&output=json",
                                          content=png_bytes(), headers=PNG))
        while old.in_flight == 0:  # accepted, its tile held at the (gated) engine
            await asyncio.sleep(0.01)
        time.sleep(0.01)
        build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=4)
        reload_task = asyncio.create_task(_reload(c))  # warms the new version on the gated engine too
        await asyncio.sleep(0.2)
        slow_engine.set()
        report = (await reload_task).json()
        answer = await held
        info = (await c.get("/v1/models/alpha", headers=AUTH)).json()
    assert report["loaded"] == ["alpha"]
    assert answer.status_code == 200 and answer.json()["model"] == "alpha"
    assert old.stats.inference_count == 1  # the version that accepted it answered it ...
    assert len(info["classes"]) == 4  # ... while the new version serves from now on
    assert not old.accepting and old.in_flight == 0
