"""``pspnet-serve describe``: the draft is read from the graph and one inference, serves as written,
and is never overwritten unless asked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.contract.artifact import ArtifactError
from service.contract.description import GraphCall, read_description
from service.describe import IMAGENET_MEAN, IMAGENET_STD, draft, write_draft
from tests.service.api_client import png_bytes, serving
from tests.service.described_graphs import build_graph
from tests.service.tiny_model import build_tiny_artifact


def test_the_draft_of_a_fixed_strided_graph(tmp_path: Path) -> None:
    path = build_graph(tmp_path / "net.onnx", kind="strided_logits")
    target, notes = write_draft(path)
    assert target == tmp_path / "net.json"
    d = read_description(path)
    assert d.call == GraphCall(
        input_name="x", normalised_in_graph=False, output_name="out", kind="strided_logits", stride=2
    )
    assert d.meta.tile == (16, 24) and d.meta.classes == ("class_0", "class_1", "class_2")
    assert len(set(d.meta.palette)) == 3 and (d.meta.mean, d.meta.std) == (IMAGENET_MEAN, IMAGENET_STD)
    p = d.meta.protocol
    assert (p.mode, p.base_size, p.scales, p.flip, d.meta.name) == ("slide", 24, (1.0,), False, "net")
    assert any("stride 2" in n for n in notes)


def test_a_dynamic_input_gets_the_chosen_tile(tmp_path: Path) -> None:
    path = build_graph(tmp_path / "dyn.onnx", kind="strided_logits", dynamic_size=True, layout="NHWC")
    description, notes = draft(path)
    assert description.meta.tile == (512, 512) and description.call.layout == "NHWC"
    assert any("a dynamic input: chosen" in n for n in notes)
    description, _ = draft(path, (40, 56))
    assert description.meta.tile == (40, 56) and description.call.stride == 2
    with pytest.raises(ArtifactError, match="takes 16x24 tiles, not --tile 40 56"):
        draft(build_graph(tmp_path / "fixed.onnx"), (40, 56))


def test_labels_uint8_and_fixed_batch_drafts(tmp_path: Path) -> None:
    d, _ = draft(build_graph(tmp_path / "l.onnx", kind="labels", dtype="uint8", batch=1))
    assert (d.call.kind, d.call.dtype, d.call.normalised_in_graph, d.call.batch) == (
        "labels",
        "uint8",
        True,
        1,
    )


def test_it_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build_graph(tmp_path / "m.onnx")
    assert main(["describe", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    edited = {**json.loads((tmp_path / "m.json").read_text()), "name": "mine"}
    (tmp_path / "m.json").write_text(json.dumps(edited))
    assert main(["describe", str(path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text())["name"] == "mine"
    assert main(["describe", str(path), "--force"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["name"] == "m"


def test_a_graph_it_cannot_draft_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["describe", str(tmp_path / "junk.onnx")]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err


def test_a_pspnet_artifact_needs_no_draft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An artifact normalises inside its graph: a draft (ImageNet mean/std applied by the server)
    would normalise twice, so describe refuses and writes nothing."""
    path = build_tiny_artifact(tmp_path / "tiny.onnx", tile=(32, 48), num_classes=5)
    assert main(["describe", str(path)]) == 2
    assert "describes itself" in capsys.readouterr().err and not (tmp_path / "tiny.json").exists()


@pytest.mark.anyio
async def test_the_draft_serves_as_written(tmp_path: Path) -> None:
    """``describe`` then serve the directory: a two-command start."""
    path = build_graph(tmp_path / "model.onnx", kind="strided_logits")
    assert main(["describe", str(path)]) == 0
    async with serving(tmp_path) as c:
        r = await c.post(
            "/v1/segment?output=label", content=png_bytes(40, 60), headers={"content-type": "image/png"}
        )
        assert r.status_code == 200, r.text
        labels = np.asarray(Image.open(io.BytesIO(r.content)))
        assert labels.shape == (40, 60) and labels.max() <= 2
