"""A SegFormer and a DeepLabV3-headed MobileViT (Hugging Face ``transformers``, tiny random
configurations, exported at test time: tests/service/foreign_models.py) served through their
description files, held to the library's own forward pass on the same windows.

The served labels (the engine on ONNX Runtime, strided logits resized by the engine, the
service's banded stitch) are compared with the reference (torch forward, ``F.interpolate`` to
the window, the float64 official stitch). Labels may differ only where the reference's top-two
margin (float64 averaged probabilities) is below MARGIN_BOUND. Measured on this host (2 cores,
AVX-512), over slide and multiscale + flip of a 72x96 and a 150x110 image (4 to 140 tiles):
0 differing pixels for both models, share 0 and so no margin at a differing pixel; the tile
logits of ONNX Runtime and torch differ by at most 6.4e-10 (SegFormer, whose random logits stay
within 1.4e-3) and 2.4e-5 (MobileViT, logits up to 11.7). A softmax probability moves by at
most half a logit's change, so a label can flip only where the margin is within that error:
MARGIN_BOUND 5e-5 is just above the larger one; SHARE_BOUND 1e-3 (about 7 of the 7,000 pixels
of the small image) leaves room for another CPU's kernels, where none flipped here.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.contract.artifact import ArtifactError
from service.contract.description import read_description
from service.describe import write_draft
from service.engine.sessions import Engine
from service.offline.evaluate import NO_LIMITS
from service.pipeline.chain import Chain
from service.pipeline.params import resolve
from service.pipeline.runner import EngineRunner
from service.protocol.plan import plan_tiles
from tests.bounds import at_least, within
from tests.service import foreign_models as fm
from tests.service.api_client import serving
from tests.service.tiny_model import build_tiny_artifact

MARGIN_BOUND = 5e-5
SHARE_BOUND = 1e-3
#: largest |ONNX Runtime - torch| of a tile's logits resized to the tile; measured 6.4e-10 (SegFormer,
#: logits up to 1.4e-3) and 2.4e-5 (MobileViT, logits up to 11.7)
LOGIT_BOUNDS = {"segformer": 1.5e-9, "mobilevit": 5e-5}
IMAGES = {"small": (72, 96, 3), "tall": (150, 110, 4)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module]]:
    """One directory: a tiny PSPNet artifact, a SegFormer described by an edited `describe` draft,
    a MobileViT-DeepLabV3 described by hand (align_corners true: the other resize rule)."""
    d = tmp_path_factory.mktemp("repo")
    build_tiny_artifact(d / "pspnet.onnx", tile=(32, 48), name="pspnet")
    models = {"segformer": fm.segformer(), "mobilevit": fm.mobilevit_deeplab()}
    seg = fm.export(models["segformer"], d / "segformer.onnx")
    draft_path, _ = write_draft(seg)
    draft = json.loads(draft_path.read_text())
    draft.update(name="segformer", classes=[f"thing-{i}" for i in range(fm.CLASSES)], dataset="tiny-random")
    draft["protocol"]["base_size"] = 96
    draft_path.write_text(json.dumps(draft))
    fm.export(models["mobilevit"], d / "mobilevit.onnx")
    (d / "mobilevit.json").write_text(json.dumps(fm.description("mobilevit", stride=8, align_corners=True)))
    return d, models


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("name", ["segformer", "mobilevit"])
@pytest.mark.parametrize(("mode", "flip"), [("slide", False), ("multiscale", True)])
def test_served_labels_equal_the_librarys_forward_pass(
    repo: tuple[Path, dict[str, torch.nn.Module]], name: str, mode: str, flip: bool, image: str
) -> None:
    d, models = repo
    engine = Engine(d / f"{name}.onnx", provider="cpu", max_batch=8)
    meta = engine.meta
    rgb = fm.smooth_image(*IMAGES[image])
    params = resolve(meta.protocol, mode=mode, flip=flip, scales=None, max_scales=32)
    served, tiles = Chain(meta, NO_LIMITS).labels_now(rgb, params, runner=EngineRunner(engine, 8))
    labels, probs = fm.reference_labels(models[name], rgb, meta, params.mode, params.scales, flip)
    assert tiles >= (4 if mode == "slide" else 40)
    assert len(np.unique(labels)) >= 2  # the random model labels regions differently: a real check
    share, margin = fm.disagreement(served, labels, probs)
    within(f"{name} {mode} {image}: share of labels differing from the library", share, SHARE_BOUND)
    within(f"{name} {mode} {image}: top-two margin where they differ", margin, MARGIN_BOUND)


@pytest.mark.parametrize("name", ["segformer", "mobilevit"])
def test_tile_logits_equal_the_librarys(repo: tuple[Path, dict[str, torch.nn.Module]], name: str) -> None:
    d, models = repo
    engine = Engine(d / f"{name}.onnx", provider="cpu", max_batch=8)
    meta = engine.meta
    plan = plan_tiles(
        fm.smooth_image(72, 96, 5), tile=meta.tile, mode="slide", flip=True, base_size=96, mean=meta.mean
    )
    mean = torch.tensor(meta.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(meta.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        logits = models[name](pixel_values=(torch.from_numpy(plan.tiles) - mean) / std).logits
        want = torch.nn.functional.interpolate(
            logits, size=meta.tile, mode="bilinear", align_corners=meta.align_corners
        ).numpy()
    got = EngineRunner(engine, 8).run(plan.tiles)
    within(f"{name} tile logits, ONNX Runtime vs torch", np.abs(got - want).max(), LOGIT_BOUNDS[name])


def _png_labels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


@pytest.mark.anyio
async def test_one_directory_serves_pspnet_and_both_foreign_models(
    repo: tuple[Path, dict[str, torch.nn.Module]],
) -> None:
    d, _ = repo
    rgb = fm.smooth_image(72, 96, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    async with serving(d) as c:
        listed = (await c.get("/v1/models")).json()
        names = sorted(m["name"] for m in listed["models"])
        assert names == ["mobilevit", "pspnet", "segformer"]
        for name in ("segformer", "mobilevit"):
            engine = Engine(d / f"{name}.onnx", provider="cpu", max_batch=8)
            for mode, flip in (("slide", False), ("multiscale", True)):
                r = await c.post(
                    f"/v1/models/{name}/segment?output=label&mode={mode}&flip={str(flip).lower()}",
                    content=buf.getvalue(),
                    headers={"content-type": "image/png"},
                )
                assert r.status_code == 200, r.text
                params = resolve(engine.meta.protocol, mode=mode, flip=flip, scales=None, max_scales=32)
                want, _ = Chain(engine.meta, NO_LIMITS).labels_now(
                    rgb, params, runner=EngineRunner(engine, 8)
                )
                np.testing.assert_array_equal(_png_labels(r.content), want)
            meta = (await c.get(f"/v2/models/{name}")).json()
            assert meta["name"] == name
        pspnet = await c.post(
            "/v1/models/pspnet/segment?output=label",
            content=buf.getvalue(),
            headers={"content-type": "image/png"},
        )
        assert pspnet.status_code == 200 and _png_labels(pspnet.content).shape == (72, 96)


def test_a_fixed_batch_of_one_export_serves(
    tmp_path: Path, repo: tuple[Path, dict[str, torch.nn.Module]], caplog: pytest.LogCaptureFixture
) -> None:
    """Exported with batch 1 fixed: "dynamic" is refused naming ``batch``; with ``batch: 1`` it
    serves, its tiles one at a time, the same labels as the dynamic export."""
    d, models = repo
    path = fm.export(models["segformer"], tmp_path / "segformer.onnx", dynamic_batch=False)
    desc = json.loads((d / "segformer.json").read_text())
    (tmp_path / "segformer.json").write_text(json.dumps(desc))
    with pytest.raises(
        ArtifactError, match='batch is "dynamic" but the graph\'s input has a fixed batch of 1'
    ):
        read_description(path)
    (tmp_path / "segformer.json").write_text(json.dumps({**desc, "batch": 1}))
    with caplog.at_level(logging.INFO, logger="service.engine"):
        one = Engine(path, provider="cpu", max_batch=8)
    assert any("fixed batch of 1" in r.getMessage() for r in caplog.records)
    dynamic = Engine(d / "segformer.onnx", provider="cpu", max_batch=8)
    rgb = fm.smooth_image(72, 96, 3)
    params = resolve(one.meta.protocol, mode="multiscale", flip=True, scales=None, max_scales=32)
    got, _ = Chain(one.meta, NO_LIMITS).labels_now(rgb, params, runner=EngineRunner(one, 8))
    want, _ = Chain(dynamic.meta, NO_LIMITS).labels_now(rgb, params, runner=EngineRunner(dynamic, 8))
    agree = float((got == want).mean())
    at_least("fixed-batch-1 export vs dynamic export, labels agreeing", agree, 1.0)
