"""The exported artifact: contract, metadata round trip, dynamic batch, self-check."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import model.export as export
from model.cli import main
from model.convert import file_sha256
from model.datasets import dataset_info
from model.pspnet import PSPNetConfig
from model.quantize import without_labels
from service.contract.artifact import ArtifactMeta, read_meta, read_outputs
from tests.bounds import within
from tests.model.tiny import TinyArtifact, build_tiny
from tests.service.tiny_model import build_tiny_artifact

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
    (image,), (logits, labels) = proto.graph.input, proto.graph.output
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (image, logits, labels)]
    assert (image.name, logits.name, labels.name) == ("image", "logits", "labels")
    assert isinstance(dims[0][0], str) and dims[0][0] == dims[1][0] == dims[2][0]  # one symbolic batch
    assert dims[0][1:] == [3, 360, 480] and dims[1][1:] == [11, 360, 480] and dims[2][1:] == [360, 480]
    assert labels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert read_outputs(tiny_artifact.onnx_path).labels_dtype is np.uint8


def test_labels_are_a_float_argmax_first_class_on_ties(tiny_artifact: TinyArtifact) -> None:
    """The two nodes of the contract, as written: nothing but a Cast reads the ArgMax."""
    proto = onnx.load(str(tiny_artifact.onnx_path), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    cast = producer["labels"]
    argmax = producer[cast.input[0]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in argmax.attribute}
    assert (cast.op_type, argmax.op_type, list(argmax.input)) == ("Cast", "ArgMax", ["logits"])
    assert attrs == {"axis": 1, "keepdims": 0, "select_last_index": 0}
    assert [n.op_type for n in proto.graph.node if argmax.output[0] in n.input] == ["Cast"]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch(tiny_artifact: TinyArtifact, batch: int) -> None:
    rng = np.random.default_rng(batch)
    images = (rng.random((batch, 3, 360, 480), dtype=np.float32) * 255).astype(np.float32)
    got, labels = export.run_onnx_outputs(tiny_artifact.onnx_path, images)
    meta = read_meta(tiny_artifact.onnx_path)
    with torch.no_grad():  # eager model, adaptive pooling not frozen
        want = export.ServingGraph(tiny_artifact.model, meta.mean, meta.std)(torch.from_numpy(images)).numpy()
    assert got.shape == want.shape == (batch, 11, 360, 480)
    within(f"export.tiny_ort_vs_torch[batch {batch}]", np.abs(got - want).max(), TINY_BOUND)
    assert labels.dtype == np.uint8 and np.array_equal(labels, got.argmax(axis=1))
    # PyTorch's argmax too, but where the best two logits are within 2 x TINY_BOUND a flip is legitimate
    top2 = np.sort(want, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= 2 * TINY_BOUND
    assert np.array_equal(labels[~near_tie], want.argmax(axis=1)[~near_tie])
    assert np.count_nonzero(near_tie) < 1e-3 * near_tie.size  # the exemption is a handful of pixels


def test_cli_reports_what_it_found(tiny_artifact: TinyArtifact) -> None:
    out = tiny_artifact.stdout
    assert "layout: pspnet-serving, ResNet-18 (basic blocks), 11 classes" in out
    assert "widths: stem 8/8/16, base 8, ppm 4x16, head 16, aux 8" in out
    assert "dataset: camvid (11 classes), tile 360x480" in out
    line = next(line for line in out.splitlines() if line.startswith("parity:"))
    within("export.tiny_cli_parity", float(line.split("max |diff| ")[1].split()[0]), TINY_BOUND)
    line = next(line for line in out.splitlines() if line.startswith("labels:"))
    equal, total = (int(v) for v in line.split("argmax on ")[1].split(" pixels")[0].split(" of "))
    assert total == 2 * 360 * 480 and equal >= total - 1e-3 * total


def _meta(model: object, tile: tuple[int, int]) -> ArtifactMeta:
    return export.artifact_meta(model, dataset_info("camvid"), name="t", tile=tile,  # type: ignore[arg-type]
                                source={"format": "native", "checkpoint_sha256": "0" * 64})


def _patch_ort(monkeypatch: pytest.MonkeyPatch,
               change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    real = export.run_onnx_outputs
    monkeypatch.setattr(export, "run_onnx_outputs", lambda blob, batch: change(*real(blob, batch)))


def test_export_refuses_a_graph_beyond_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_ort(monkeypatch, lambda logits, labels: (logits + 1e-3, labels))
    out = tmp_path / "bad.onnx"
    with pytest.raises(export.ExportError, match=r"differs from PyTorch by 0\.001 "):
        export.export_onnx(build_tiny(), _meta(build_tiny(), (64, 96)), out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_refuses_labels_that_are_not_the_argmax(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def one_pixel_off(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = labels.copy()
        labels[1, 5, 7] = (labels[1, 5, 7] + 1) % 11
        return logits, labels

    _patch_ort(monkeypatch, one_pixel_off)
    out = tmp_path / "bad.onnx"
    with pytest.raises(export.ExportError, match="'labels' differs from the argmax of 'logits' on 1 pixels"):
        export.export_onnx(build_tiny(), _meta(build_tiny(), (64, 96)), out)
    _patch_ort(monkeypatch, lambda logits, labels: (logits, labels.astype(np.int64)))
    with pytest.raises(export.ExportError, match="'labels' is int64"):
        export.export_onnx(build_tiny(), _meta(build_tiny(), (64, 96)), out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_allows_a_label_flip_at_a_near_tie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logit noise may swap the two best classes of a pixel whose gap is within twice the error.

    (A flip is never unexplained when the labels are ORT's own argmax and every logit is within
    the error: it needs a gap of at most twice that. The check states the end-to-end property.)
    """
    model = build_tiny()

    def swap_closest(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top2 = np.sort(logits, axis=1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        n, y, x = np.unravel_index(int(gap.argmin()), gap.shape)
        best, second = np.argsort(logits[n, :, y, x])[-1:-3:-1]
        logits = logits.copy()
        logits[n, best, y, x] -= 0.6 * gap[n, y, x]
        logits[n, second, y, x] += 0.6 * gap[n, y, x]
        return logits, logits.argmax(axis=1).astype(np.uint8)

    _patch_ort(monkeypatch, swap_closest)
    # the tiny model's closest two logits are 0.14 apart on this batch: a tolerance that admits the swap
    report = export.export_onnx(model, _meta(model, (64, 96)), tmp_path / "ok.onnx", atol=1.0)
    assert (report.label_pixels, report.label_flips) == (2 * 64 * 96, 1)
    assert 0 < report.max_abs_error < report.tolerance


def test_dynamo_exporter_also_meets_the_contract(tmp_path: Path) -> None:
    model = build_tiny(align_corners=True)
    out = tmp_path / "dynamo.onnx"
    # 100x132 -> 13x17 features: odd, and not divisible by any bin but 1
    report = export.export_onnx(model, _meta(model, (100, 132)), out, exporter="dynamo")
    within("export.tiny_report", report.max_abs_error, TINY_BOUND)
    assert report.bytes == out.stat().st_size
    meta = read_meta(out)
    assert meta.tile == (100, 132) and meta.align_corners is True
    assert json.loads(json.dumps(meta.extra["architecture"])) == meta.extra["architecture"]
    assert read_outputs(out).names == ("logits", "labels")


def test_more_than_256_classes_give_uint16_labels(tmp_path: Path) -> None:
    model = build_tiny(num_classes=300)
    meta = dataclasses.replace(_meta(build_tiny(), (64, 96)), classes=tuple(f"c{i}" for i in range(300)),
                               palette=tuple((i % 256, i // 256, 0) for i in range(300)))
    out = tmp_path / "wide.onnx"
    export.export_onnx(model, meta, out)
    assert read_outputs(out).labels_dtype is np.uint16
    logits, labels = export.run_onnx_outputs(out, np.full((1, 3, 64, 96), 100.0, np.float32))
    assert labels.dtype == np.uint16 and np.array_equal(labels, logits.argmax(axis=1))


def test_metadata_must_match_the_model() -> None:
    with pytest.raises(ValueError, match="the model has 5 classes, camvid has 11"):
        _meta(build_tiny(num_classes=5), (64, 64))


def test_add_labels_upgrades_an_old_artifact_and_nothing_else(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    old = build_tiny_artifact(tmp_path / "old.onnx", tile=(32, 48))  # logits only, as before labels
    new = tmp_path / "new.onnx"
    assert main(["add-labels", "--model", str(old), "--output", str(new)]) == 0
    assert "logits bit-identical" in capsys.readouterr().out
    assert read_outputs(new).labels_dtype is np.uint8 and read_meta(new) == read_meta(old)
    # the old file's bytes, exactly, once the two nodes and the output are taken off again
    assert without_labels(onnx.load(str(new))).SerializeToString() == old.read_bytes()
    assert new.read_bytes() == build_tiny_artifact(tmp_path / "built.onnx", tile=(32, 48),
                                                   with_labels=True).read_bytes()
    assert main(["add-labels", "--model", str(new), "--output", str(tmp_path / "twice.onnx")]) == 2
    assert "already has a 'labels' output" in capsys.readouterr().err
    assert not (tmp_path / "twice.onnx").exists()
