"""The weight and input recipes of the reference fixtures (tests/fixtures/reference/*/README.md).

The fixtures' expected logits were computed by the original model code with
weights drawn by this recipe, so the tests rebuild exactly those weights and
inputs here, save them in each source's own checkpoint format, and convert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).parent / "fixtures" / "reference"

#: the input statistics each fixture's README gives, in 0..255 (float32 arithmetic)
SEMSEG_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * np.float32(255)
SEMSEG_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * np.float32(255)
MMSEG_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
MMSEG_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def read_keys(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``keys.tsv``: key and shape (``x``-separated, ``scalar`` for 0-d) per line, in order."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        key, dims = line.split("\t")
        rows.append((key, () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))))
    return rows


def recipe_weights(keys_tsv: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of ``keys_tsv`` drawn in file order from PCG64(seed), all in float32."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in read_keys(keys_tsv):
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, dtype=np.int64)
        elif key.endswith("running_mean"):
            out[key] = np.float32(0.1) * rng.standard_normal(shape, dtype=np.float32)
        elif key.endswith("running_var"):
            out[key] = np.float32(1.0) + np.float32(0.5) * rng.random(shape, dtype=np.float32)
        elif len(shape) == 4:  # conv weight, He-like scale from the fan-in
            fan_in = np.float32(shape[1] * shape[2] * shape[3])
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.sqrt(np.float32(1) / fan_in)
        elif key.endswith("weight"):  # BatchNorm gamma
            out[key] = np.float32(1.0) + np.float32(0.1) * rng.standard_normal(shape, dtype=np.float32)
        else:  # BatchNorm beta, conv bias
            out[key] = np.float32(0.1) * rng.standard_normal(shape, dtype=np.float32)
        assert out[key].dtype in (np.float32, np.int64), key
    return out


def float_sum(weights: dict[str, np.ndarray]) -> float:
    """The README's check: float64 sum of all float tensors."""
    return float(sum(v.astype(np.float64).sum() for v in weights.values() if v.dtype == np.float32))


def recipe_image(size: int, seed: int = 1) -> np.ndarray:
    """HWC RGB float32 image in 0..255, as the input recipe draws it."""
    rng = np.random.default_rng(seed)
    img: np.ndarray = rng.random((size, size, 3), dtype=np.float32) * np.float32(255.0)
    return img


def recipe_input(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The normalised 1x3xHxW network input: ``((img - mean) / std)`` in float32, CHW."""
    x: np.ndarray = ((image - mean) / std).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x, dtype=np.float32)
