"""Fixtures of the model tests: a tiny artifact exported once per session through the CLI."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch

from model.cli import main
from tests.model.tiny import TinyArtifact, build_tiny
from tests.recipe import REFERENCE, recipe_weights


@pytest.fixture(scope="session")
def reference_weights() -> Callable[[str], dict[str, np.ndarray]]:
    """``reference_weights("semseg_pspnet50")``: the fixture's recipe weights, drawn once per session
    (25M draws per PSPNet-50: the sum check and the parity proof share them)."""
    return cache(lambda name: recipe_weights(REFERENCE / name / "keys.tsv"))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    """A tiny PSPNet saved as model/train.py saves, converted by the CLI at CamVid's 360x480 tile.

    360x480 gives a 45x60 feature map, which bins 2 and 6 do not divide: the
    artifact exercises the exact pooling on a non-square tile.
    """
    folder = tmp_path_factory.mktemp("tiny")
    model = build_tiny()
    # the fields model/train.py's `save` writes, optimizer and RNG state included
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    checkpoint = folder / "last.pt"
    torch.save({"format": "pspnet-serving", "dataset": "camvid", "config": model.config.to_dict(),
                "state_dict": model.state_dict(), "train_config": {"epochs": 1, "crop": (288, 288)},
                "state": {"epoch": 1, "iteration": 3, "best_miou": 0.25, "history": [{"epoch": 1}]},
                "optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}, checkpoint)
    out = io.StringIO()
    onnx_path = folder / "tiny.onnx"
    with contextlib.redirect_stdout(out):
        code = main(["convert", "--format", "native", "--checkpoint", str(checkpoint),
                     "--output", str(onnx_path), "--name", "tiny"])
    assert code == 0, out.getvalue()
    return TinyArtifact(onnx_path=onnx_path, checkpoint=checkpoint, model=model, stdout=out.getvalue())
