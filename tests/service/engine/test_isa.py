"""int8 artifacts and the CPU: the warning for full-range int8 weights without VNNI."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

import service.engine.sessions as sessions
from service.contract.artifact import ArtifactMeta, read_meta
from service.contract.description import read_description
from service.engine.isa import cpu_flags, int8_warning
from service.engine.sessions import Engine
from tests.service.tiny_model import build_tiny_artifact

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
VNNI = AVX2 | {"avx512f", "avx512_vnni"}


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> ArtifactMeta:
    return read_meta(build_tiny_artifact(tmp_path_factory.mktemp("isa") / "t.onnx", tile=(32, 48)))


def _quantised(meta: ArtifactMeta, **quantization: object) -> ArtifactMeta:
    return dataclasses.replace(meta, source={**meta.source, "quantization": quantization})


def test_full_range_int8_weights_warn_only_without_vnni(meta: ArtifactMeta) -> None:
    before = _quantised(meta, weights="int8, per channel")  # what quantize wrote before reduce_range
    message = int8_warning(before, AVX2)
    assert message is not None and "no VNNI" in message and "pspnet-model quantize" in message
    assert int8_warning(_quantised(meta, weight_type="int8", reduce_range=False), AVX2) is not None
    for flags in (VNNI, AVX2 | {"avx_vnni"}, AVX2 | {"amx_int8"}):
        assert int8_warning(before, flags) is None


@pytest.mark.parametrize("quantization", [{"weight_type": "int8", "reduce_range": True},
                                          {"weight_type": "uint8", "reduce_range": False}])
def test_weights_that_hold_everywhere_never_warn(meta: ArtifactMeta, quantization: dict[str, object]) -> None:
    assert int8_warning(_quantised(meta, **quantization), AVX2) is None


def test_a_float_artifact_or_unknown_flags_never_warn(meta: ArtifactMeta) -> None:
    assert int8_warning(meta, AVX2) is None
    assert int8_warning(_quantised(meta, reduce_range=False), None) is None


def test_cpu_flags_read_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") is None


def test_the_engine_logs_the_warning_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = build_tiny_artifact(tmp_path / "t.onnx", tile=(32, 48))
    full_range = _quantised(read_meta(path), weights="int8, per channel")
    described = dataclasses.replace(read_description(path), meta=full_range)
    monkeypatch.setattr(sessions, "read_description", lambda p: described)
    monkeypatch.setattr(sessions, "cpu_flags", lambda: frozenset(AVX2))
    with caplog.at_level(logging.WARNING):
        Engine(path, provider="cpu", max_batch=1)
    assert any("INT8 ON A CPU WITHOUT VNNI" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(sessions, "cpu_flags", lambda: frozenset(VNNI))
    with caplog.at_level(logging.WARNING):
        Engine(path, provider="cpu", max_batch=1)
    assert not any("VNNI" in r.getMessage() for r in caplog.records)
