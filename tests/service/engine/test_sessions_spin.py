"""ONNX Runtime sessions do not busy-wait unless asked (service.engine.sessions.session_options)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import service.repository.runtime
from service.engine.sessions import Engine, session_options
from tests.service.api_client import serving
from tests.service.tiny_model import build_tiny_artifact

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def test_session_options_turn_spinning_off_by_default() -> None:
    so = session_options(0, 1)
    assert [so.get_session_config_entry(k) for k in SPIN_KEYS] == ["0", "0"]


def test_spin_true_leaves_onnx_runtimes_default() -> None:
    so = session_options(2, 1, spin=True)
    for key in SPIN_KEYS:
        with pytest.raises(RuntimeError, match="does not have configuration"):
            so.get_session_config_entry(key)
    assert so.intra_op_num_threads == 2


@pytest.mark.parametrize("spin", [False, True])
def test_engine_runs_either_way(tmp_path: Path, spin: bool) -> None:
    engine = Engine(build_tiny_artifact(tmp_path / "tiny.onnx"), provider="cpu", max_batch=2, spin=spin)
    out = engine.run(np.full((2, 3, 32, 48), 100.0, dtype=np.float32))
    assert out.shape == (2, 5, 32, 48) and np.isfinite(out).all()


@pytest.mark.parametrize("setting", [False, True])
def test_the_setting_reaches_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        setting: bool) -> None:
    """PSPNET_ORT_SPIN is what the served engine's sessions get (default: off)."""
    seen: list[bool] = []

    class Recording(Engine):
        def __init__(self, *args: object, spin: bool = False, **kwargs: object) -> None:
            seen.append(spin)
            super().__init__(*args, spin=spin, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.repository.runtime, "Engine", Recording)
    overrides = {"ort_spin": True} if setting else {}

    async def body() -> None:
        async with serving(build_tiny_artifact(tmp_path / "tiny.onnx"), **overrides) as client:
            assert (await client.get("/readyz")).status_code == 200

    asyncio.run(body())
    assert seen == [setting]
