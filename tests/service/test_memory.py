"""Memory-aware admission: the estimate from the header bounds the real peak; the budget refuses in time."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from service.chain import NO_LIMITS, Chain
from service.engine import Engine
from service.errors import Overloaded, PayloadTooLarge
from service.memory import MemoryBudget
from service.outputs import OutputOptions
from service.params import InferenceParams
from service.settings import Settings
from tests.service.api_client import metric_samples, png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

MB = 2**20


def test_the_budget_admits_what_fits_and_releases_it() -> None:
    rejected: list[int] = []
    budget = MemoryBudget(100 * MB, on_reject=lambda: rejected.append(1))
    with budget.reserve(60 * MB):
        assert budget.in_flight == 60 * MB and budget.requests == 1
        with pytest.raises(Overloaded) as busy:
            budget.check(50 * MB)
        assert busy.value.headers()["Retry-After"] == "1"
        with budget.reserve(40 * MB):
            assert budget.in_flight == 100 * MB
    assert budget.in_flight == 0 and budget.requests == 0
    with pytest.raises(PayloadTooLarge, match="PSPNET_MAX_MEMORY_MB"):
        budget.check(101 * MB)
    assert len(rejected) == 2


def test_a_failed_request_gives_its_reservation_back() -> None:
    budget = MemoryBudget(10 * MB)
    with pytest.raises(RuntimeError), budget.reserve(8 * MB):
        raise RuntimeError("decode failed")
    assert budget.in_flight == 0


@pytest.fixture(scope="module")
def wide_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """40 classes on a 48x64 tile: enough classes for the stitch to matter in the peak."""
    path = build_tiny_artifact(tmp_path_factory.mktemp("mem") / "m.onnx", tile=(48, 64), num_classes=40)
    return Engine(path, provider="cpu", intra_op_threads=1, max_batch=4)


CASES = [
    ((300, 400), InferenceParams("slide", (1.0,), False), "color"),
    ((300, 400), InferenceParams("multiscale", (0.5, 1.0, 1.75), True), "overlay"),
    ((900, 700), InferenceParams("whole", (1.0,), True), "json"),
    ((1200, 1600), InferenceParams("slide", (1.0,), False), "overlay"),
    ((64, 48), InferenceParams("slide", (1.0,), False), "label"),
]


def _traced_peak(fn: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("size", "params", "output"), CASES)
def test_the_estimate_bounds_the_measured_peak(wide_engine: Engine, size: tuple[int, int],
                                               params: InferenceParams, output: str) -> None:
    """numpy's allocations (traced) of one whole request stay under the header's estimate.

    Pillow's own buffers are not traced, so the decode stage is under-counted here; the estimate's
    slack against real RSS is measured by scripts/reliability_memory.py (RELIABILITY.md). Measured
    estimate / traced peak over these cases, with the estimate's RSS factor of 1.25: 1.31 to 2.36
    (the largest where Pillow's untraced frame is most of the request); 1.53 and 1.69 at 6 MP. The
    upper bound keeps the estimate from drifting.
    """
    chain = Chain(wide_engine.meta, NO_LIMITS)
    rng = np.random.default_rng(0)
    data = png_bytes(*size, seed=int(rng.integers(100)))
    estimate = chain.peak_bytes(data, params, output)
    assert estimate is not None
    peak = _traced_peak(lambda: chain.segment(data, params, output, OutputOptions(), run=wide_engine.run,
                                              max_batch=4))
    assert peak <= estimate, f"measured {peak / MB:.1f} MB over the estimate {estimate / MB:.1f} MB"
    assert estimate <= 2.5 * peak, f"estimate {estimate / MB:.1f} MB is loose against {peak / MB:.1f} MB"


def test_an_unreadable_header_is_left_to_the_decoder(wide_engine: Engine) -> None:
    chain = Chain(wide_engine.meta, NO_LIMITS)
    assert chain.peak_bytes(b"not an image", InferenceParams("slide", (1.0,), False), "color") is None


@pytest.mark.anyio
async def test_over_the_budget_is_413_alone_and_503_beside_others(model: Path,
                                                                  slow_engine: threading.Event) -> None:
    body = png_bytes(200, 300)
    meta = Engine(model, provider="cpu").meta
    need = Chain(meta, NO_LIMITS).peak_bytes(body, InferenceParams("slide", (1.0,), False), "color")
    assert need is not None
    limit_mb = -(-int(need * 1.5) // MB)  # room for one such request, not two
    assert Settings(model=model, max_memory_mb=limit_mb).max_memory_mb == limit_mb
    headers = {"content-type": "image/png"}
    async with serving(model, max_memory_mb=limit_mb, warmup=False, max_batch=1) as c:
        first = asyncio.create_task(c.post("/v1/segment?mode=slide", content=body, headers=headers))
        await asyncio.sleep(0.3)
        busy = await c.post("/v1/segment?mode=slide", content=body, headers=headers)
        never = await c.post("/v1/segment?mode=multiscale&scales=1,2,3,4", content=png_bytes(900, 1200),
                             headers=headers)
        slow_engine.set()
        ok = await first
        again = await c.post("/v1/segment?mode=slide", content=body, headers=headers)
        text = (await c.get("/metrics")).text
    assert ok.status_code == 200 and again.status_code == 200, "the reservation is given back"
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert "PSPNET_MAX_MEMORY_MB" not in busy.json()["detail"] and "MB" in busy.json()["detail"]
    assert never.status_code == 413 and "PSPNET_MAX_MEMORY_MB" in never.json()["detail"]
    assert metric_samples(text, "pspnet_rejections_total").get('{model="",reason="memory"}') == 2
