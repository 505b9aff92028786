"""Protocol parity: ``slide`` and ``multiscale`` (+flip) reproduce the official test code itself.

``fixtures/reference/semseg_protocol`` holds probabilities that hszhao/semseg's own
``scale_process`` / ``net_process`` computed for one image with an official PSPNet-50
(19 classes, weights by the recipe of ``semseg_pspnet50/README.md``, seed 0), tile
233x233, base size 256, stride rate 2/3, flip on. Here the same checkpoint is built in
the official format, converted, exported at 233x233 and run by the service's engine
(ONNX Runtime, CPU) on the tiles of :func:`service.protocol.plan.plan_tiles`; the stitched
probabilities must match. The runner is any ``run(tiles) -> logits`` callable, so the
same body also checks eager PyTorch (which isolates the protocol from the export).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.engine.runners import LogitsFn
from service.protocol.plan import TilePlan, plan_tiles
from tests.bounds import within
from tests.service.stitch_oracle import stitch_float32

torch = pytest.importorskip("torch")  # the model side builds the network; a slim service install skips

from model.convert import load_checkpoint  # noqa: E402
from model.export import export_onnx  # noqa: E402
from service.contract.artifact import ArtifactMeta, InferenceProtocol, Mode  # noqa: E402
from service.engine.sessions import Engine  # noqa: E402
from tests.recipe import recipe_weights  # noqa: E402

REFERENCE = Path(__file__).parents[2] / "fixtures" / "reference"
PROTOCOL = REFERENCE / "semseg_protocol"
CLASSES = 19
TILE = (233, 233)
BASE_SIZE = 256
# exactly the official test.py values: Python floats, [0.485, 0.456, 0.406] * 255 etc.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Measured max |ours - official| (2-core x86 CPU, ONNX Runtime and torch 2.13 CPU):
#   slide: ONNX 1.12e-7, eager 1.27e-7; multiscale: ONNX 5.96e-8.
# The model's float32 arithmetic is all of it (ONNX vs eager logits differ by 1.2e-6).
# Protocol mistakes are far larger: resizing the image as uint8 gives 2.1e-5, no flip 1.2e-2.
BOUND = 2e-7


def _memoised(run: LogitsFn, batch: int) -> LogitsFn:
    """Run each distinct tile once: slide's tiles are multiscale's scale-1.0 tiles."""
    seen: dict[bytes, np.ndarray] = {}

    def cached(tiles: np.ndarray) -> np.ndarray:
        keys = [hashlib.sha1(t.tobytes()).digest() for t in tiles]
        todo = [i for i, k in enumerate(keys) if k not in seen]
        for start in range(0, len(todo), batch):
            idx = todo[start:start + batch]
            for i, out in zip(idx, run(np.ascontiguousarray(tiles[idx])), strict=True):
                seen[keys[i]] = out
        return np.stack([seen[k] for k in keys])

    return cached


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The recipe weights with a 19-class head, saved as hszhao/semseg saves them."""
    folder = tmp_path_factory.mktemp("semseg19")
    lines = (REFERENCE / "semseg_pspnet50" / "keys.tsv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            continue
        key, dims = line.split("\t")
        if key.startswith(("cls.4.", "aux.4.")):  # the classifier convs and their biases
            dims = "x".join([str(CLASSES), *dims.split("x")[1:]])
        rows.append(f"{key}\t{dims}")
    keys = folder / "keys19.tsv"
    keys.write_text("\n".join(rows) + "\n")
    weights = recipe_weights(keys, seed=0)
    path = folder / "train_epoch_200.pth"
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in weights.items()}}, path)
    return path, weights


@pytest.fixture(scope="session")
def onnx_runner(official_checkpoint: tuple[Path, dict[str, np.ndarray]],
                tmp_path_factory: pytest.TempPathFactory) -> LogitsFn:
    """Convert, export at 233x233 and run with the service's engine on CPU."""
    model, _ = load_checkpoint(official_checkpoint[0], "semseg")
    meta = ArtifactMeta(
        name="semseg-protocol-parity", dataset="cityscapes-layout",
        classes=tuple(f"class{i}" for i in range(CLASSES)),
        palette=tuple((i, 2 * i, 3 * i) for i in range(CLASSES)), tile=TILE,
        mean=MEAN, std=STD, align_corners=True,
        protocol=InferenceProtocol(mode="slide", base_size=BASE_SIZE, scales=(1.0,), stride_rate=2 / 3,
                                   flip=True),
    )
    path = tmp_path_factory.mktemp("parity") / "pspnet50-19.onnx"
    export_onnx(model, meta, path)
    engine = Engine(path, provider="cpu", max_batch=6)
    return _memoised(engine.run, engine.max_batch)


@pytest.fixture(scope="session")
def eager_runner(official_checkpoint: tuple[Path, dict[str, np.ndarray]]) -> LogitsFn:
    """model.pspnet.PSPNet with the recipe weights under our names, normalising as net_process."""
    from model.pspnet import PSPNet, PSPNetConfig

    model = PSPNet(PSPNetConfig(num_classes=CLASSES, depth=50, stem=(64, 64, 128), dilation_scheme="all",
                                align_corners=True))
    state = {(f"backbone.{k}" if k.startswith("layer") else k): torch.from_numpy(v)
             for k, v in official_checkpoint[1].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)

    def run(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits: np.ndarray = model((torch.from_numpy(tiles) - mean) / std)["out"].numpy()
        return logits

    return _memoised(run, 6)


def _image() -> np.ndarray:
    return np.asarray(Image.open(PROTOCOL / "image.png").convert("RGB"))


def _plan(mode: Mode, *, flip: bool = True) -> TilePlan:
    return plan_tiles(_image(), tile=TILE, mode=mode, flip=flip, base_size=BASE_SIZE, stride_rate=2 / 3,
                      mean=MEAN)


@pytest.mark.parametrize(("runner", "mode"), [
    ("onnx_runner", "slide"), ("onnx_runner", "multiscale"),
    ("eager_runner", "slide"),  # multiscale would cost 9x the tiles and add nothing the ONNX run lacks
])
def test_matches_the_official_protocol(runner: str, mode: Mode, request: pytest.FixtureRequest) -> None:
    run: LogitsFn = request.getfixturevalue(runner)
    expected = np.load(PROTOCOL / f"probs_{mode}.npy")
    plan = _plan(mode)
    probs = stitch_float32(plan, run(plan.tiles))
    assert probs.shape == expected.shape == (150, 200, CLASSES)
    error = float(np.abs(probs.astype(np.float64) - expected).max())
    within(f"protocol_parity[{runner} {mode}]", error, BOUND)


def test_the_bound_catches_a_protocol_slip(onnx_runner: LogitsFn) -> None:
    """Dropping flip (same windows, no mirrors) lands far outside the bound: the test can fail."""
    expected = np.load(PROTOCOL / "probs_slide.npy")
    plan = _plan("slide", flip=False)
    error = float(np.abs(stitch_float32(plan, onnx_runner(plan.tiles)).astype(np.float64) - expected).max())
    assert error > 1000 * BOUND
