"""`pspnet-model convert` on checkpoints that do not fit: exit code 2, one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.cli import main
from tests.model.tiny import OFFICIAL, build_tiny, semseg_names


def _convert(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["convert", *args])
    err = capsys.readouterr().err
    # the progress bar redraws with carriage returns; the error is a line of its own
    lines = [part.strip() for line in err.splitlines() for part in line.split("\r") if part.strip()]
    assert "Traceback" not in err
    return code, [line for line in lines if line.startswith("error:")]


@pytest.fixture
def semseg_ckpt(tmp_path: Path) -> Path:
    state = semseg_names(build_tiny(**OFFICIAL))
    del state["module.layer1.0.bn1.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    return path


def test_checkpoint_that_does_not_fit(capsys: pytest.CaptureFixture[str], semseg_ckpt: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code, errors = _convert(capsys, "--format", "semseg", "--checkpoint", str(semseg_ckpt),
                            "--dataset", "camvid", "--output", str(out))
    assert code == 2 and not out.exists()
    assert len(errors) == 1 and "1 missing: module.layer1.0.bn1.weight" in errors[0]


def test_class_count_against_dataset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": semseg_names(build_tiny(**OFFICIAL))}, path)
    code, errors = _convert(capsys, "--format", "semseg", "--checkpoint", str(path), "--dataset", "ade20k",
                            "--output", str(tmp_path / "out.onnx"))
    assert code == 2 and errors == ["error: the checkpoint has 11 classes, ade20k has 150"]


def test_native_without_dataset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = build_tiny()
    path = tmp_path / "native.pt"
    torch.save({"format": "pspnet-serving", "config": model.config.to_dict(),
                "state_dict": model.state_dict()}, path)
    code, errors = _convert(capsys, "--format", "native", "--checkpoint", str(path),
                            "--output", str(tmp_path / "out.onnx"))
    assert code == 2 and errors == ["error: the checkpoint names no dataset: give --dataset"]


def test_absent_checkpoint_and_bad_tile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, errors = _convert(capsys, "--format", "mmseg", "--checkpoint", str(tmp_path / "none.pth"),
                            "--dataset", "ade20k", "--output", str(tmp_path / "out.onnx"))
    assert code == 2 and errors == [f"error: checkpoint not found: {tmp_path / 'none.pth'}"]
    code, errors = _convert(capsys, "--format", "mmseg", "--checkpoint", str(tmp_path / "none.pth"),
                            "--dataset", "ade20k", "--output", str(tmp_path / "out.onnx"),
                            "--tile", "4", "512")
    assert code == 2 and errors == ["error: --tile 4 512 is too small (at least 8x8)"]
