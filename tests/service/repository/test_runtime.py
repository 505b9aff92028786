"""A model whose batches keep failing stops being ready and says why; a probe batch brings it back;
liveness fails only when every model fails (the fault-injecting engine of test_faults.py's kind)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine.sessions import Engine
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


@pytest.fixture
def broken_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Engine.run_outputs raises a CUDA-like error for the models named in the returned set."""
    broken: set[str] = set()
    original = Engine.run_outputs

    def run(self: Engine, tiles: np.ndarray, names: Sequence[str], *, session: int = 0) -> dict[str, Any]:
        if self.meta.name in broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, tiles, names, session=session)

    monkeypatch.setattr(Engine, "run_outputs", run)
    yield broken


async def _until(predicate: Any, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def test_failing_batches_unready_the_model_and_a_probe_restores_it(tmp_path: Path,
                                                                          broken_models: set[str]) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    build_tiny_artifact(tmp_path / "b.onnx", name="beta")
    async with serving(tmp_path, max_consecutive_failures=2, probe_interval_s=0.05,
                       default_model="alpha", raise_app_exceptions=False) as c:
        broken_models.add("alpha")
        for seed in range(2):
            r = await c.post("/v1/segment?mode=whole", content=png_bytes(seed=seed), headers=PNG)
            assert r.status_code == 500
        ready = await c.get("/readyz")
        v2_ready = await c.get("/v2/models/alpha/ready")
        refused = await c.post("/v1/segment?mode=whole", content=png_bytes(), headers=PNG)
        other = await c.post("/v1/models/beta/segment?mode=whole", content=png_bytes(), headers=PNG)
        live = await c.get("/healthz")
        text = (await c.get("/metrics")).text
        broken_models.clear()  # the device recovers: the next probe batch succeeds

        async def ready_again() -> bool:
            return (await c.get("/readyz")).status_code == 200

        await _until(ready_again)
        back = await c.post("/v1/segment?mode=whole", content=png_bytes(), headers=PNG)
    assert ready.status_code == 503
    alpha = next(m for m in ready.json()["models"] if m["name"] == "alpha")
    assert not alpha["ready"] and "2 batches failed in a row" in alpha["reason"] and "CUDA" in alpha["reason"]
    assert "alpha" in ready.json()["detail"]
    assert v2_ready.status_code == 503 and "alpha" in v2_ready.json()["error"]
    assert refused.status_code == 503 and "retry-after" in refused.headers
    assert other.status_code == 200  # the healthy model keeps serving
    assert live.status_code == 200  # not every model fails: no restart
    assert 'pspnet_batch_failures_total{model="alpha"} 2.0' in text
    assert 'pspnet_ready{model="alpha"} 0.0' in text and 'pspnet_ready{model="beta"} 1.0' in text
    assert back.status_code == 200


async def test_liveness_fails_when_every_model_fails(tmp_path: Path, broken_models: set[str]) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    # probes far apart: the failure stays while the test looks
    async with serving(tmp_path, max_consecutive_failures=1, probe_interval_s=600,
                       raise_app_exceptions=False) as c:
        broken_models.add("alpha")
        assert (await c.post("/v1/segment", content=png_bytes(), headers=PNG)).status_code == 500
        live = await c.get("/healthz")
        v2_live = await c.get("/v2/health/live")
    assert live.status_code == 503 and "every model is failing" in live.json()["detail"]
    assert v2_live.status_code == 503 and v2_live.json()["live"] is False
