"""The exported artifact: contract, metadata round trip, dynamic batch, self-check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import model.export as export
from model.convert import file_sha256
from model.datasets import dataset_info
from model.pspnet import PSPNetConfig
from service.artifact import ArtifactMeta, read_meta
from tests.model.tiny import TinyArtifact, build_tiny

# ONNX Runtime vs eager PyTorch on the tiny model (logits up to 0.34): measured max |diff|
# 1.2e-7 (TorchScript exporter, batches of 1, 2 and 3 at 360x480), 8.9e-8 (dynamo, 100x132)
TINY_BOUND = 2.5e-7


def test_metadata_round_trip(tiny_artifact: TinyArtifact) -> None:
    meta = read_meta(tiny_artifact.onnx_path)  # the service's reader, signature checks included
    camvid = dataset_info("camvid")
    assert (meta.name, meta.dataset, meta.classes, meta.palette) == ("tiny", "camvid", camvid.classes,
                                                                    camvid.palette)
    assert meta.tile == (360, 480) and meta.align_corners is False
    assert (meta.protocol.mode, meta.protocol.base_size, meta.protocol.scales) == ("slide", 480, (1.0,))
    assert meta.mean == (123.675, 116.28, 103.53) and meta.std == (58.395, 57.12, 57.375)
    assert meta.source == {"format": "native", "checkpoint": "last.pt",
                           "checkpoint_sha256": file_sha256(tiny_artifact.checkpoint)}
    assert PSPNetConfig.from_dict(meta.extra["architecture"]) == tiny_artifact.model.config


def test_one_file_fixed_tile_dynamic_batch(tiny_artifact: TinyArtifact) -> None:
    proto = onnx.load(str(tiny_artifact.onnx_path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    (image,), (logits,) = proto.graph.input, proto.graph.output
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (image, logits)]
    assert (image.name, logits.name) == ("image", "logits")
    assert isinstance(dims[0][0], str) and dims[0][0] == dims[1][0]  # one symbolic batch
    assert dims[0][1:] == [3, 360, 480] and dims[1][1:] == [11, 360, 480]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch(tiny_artifact: TinyArtifact, batch: int) -> None:
    rng = np.random.default_rng(batch)
    images = (rng.random((batch, 3, 360, 480), dtype=np.float32) * 255).astype(np.float32)
    got = export.run_onnx(tiny_artifact.onnx_path, images)
    meta = read_meta(tiny_artifact.onnx_path)
    with torch.no_grad():  # eager model, adaptive pooling not frozen
        want = export.ServingGraph(tiny_artifact.model, meta.mean, meta.std)(torch.from_numpy(images)).numpy()
    assert got.shape == want.shape == (batch, 11, 360, 480)
    assert np.abs(got - want).max() <= TINY_BOUND


def test_cli_reports_what_it_found(tiny_artifact: TinyArtifact) -> None:
    out = tiny_artifact.stdout
    assert "layout: pspnet-serving, ResNet-18 (basic blocks), 11 classes" in out
    assert "widths: stem 8/8/16, base 8, ppm 4x16, head 16, aux 8" in out
    assert "dataset: camvid (11 classes), tile 360x480" in out
    line = next(line for line in out.splitlines() if line.startswith("parity:"))
    assert float(line.split("max |diff| ")[1].split()[0]) <= TINY_BOUND


def _meta(model: object, tile: tuple[int, int]) -> ArtifactMeta:
    return export.artifact_meta(model, dataset_info("camvid"), name="t", tile=tile,  # type: ignore[arg-type]
                                source={"format": "native", "checkpoint_sha256": "0" * 64})


def test_export_refuses_a_graph_beyond_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export.run_onnx
    monkeypatch.setattr(export, "run_onnx", lambda blob, batch: real(blob, batch) + 1e-3)
    out = tmp_path / "bad.onnx"
    with pytest.raises(export.ExportError, match=r"differs from PyTorch by 0\.001 "):
        export.export_onnx(build_tiny(), _meta(build_tiny(), (64, 96)), out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dynamo_exporter_also_meets_the_contract(tmp_path: Path) -> None:
    model = build_tiny(align_corners=True)
    out = tmp_path / "dynamo.onnx"
    # 100x132 -> 13x17 features: odd, and not divisible by any bin but 1
    report = export.export_onnx(model, _meta(model, (100, 132)), out, exporter="dynamo")
    assert report.max_abs_error <= TINY_BOUND and report.bytes == out.stat().st_size
    meta = read_meta(out)
    assert meta.tile == (100, 132) and meta.align_corners is True
    assert json.loads(json.dumps(meta.extra["architecture"])) == meta.extra["architecture"]


def test_metadata_must_match_the_model() -> None:
    with pytest.raises(ValueError, match="the model has 5 classes, camvid has 11"):
        _meta(build_tiny(num_classes=5), (64, 64))
