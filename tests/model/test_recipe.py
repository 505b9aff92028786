"""The fixtures' recipes reproduce their documented checksums (README "Check:" lines)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests.recipe import (
    MMSEG_MEAN,
    MMSEG_STD,
    REFERENCE,
    SEMSEG_MEAN,
    SEMSEG_STD,
    float_sum,
    read_keys,
    recipe_image,
    recipe_input,
)

# (fixture, documented float64 sum of all float tensors); README: "to ~1e-6 relative"
WEIGHT_SUMS = [("semseg_pspnet50", 66427.49096023398), ("mmseg_pspnet_r50", 66191.68537472798)]
# (size, mean, std, documented float64 sum of the normalised input)
INPUT_SUMS = [(473, SEMSEG_MEAN, SEMSEG_STD, 151845.19724355027),
              (512, MMSEG_MEAN, MMSEG_STD, 177981.4087621753)]


@pytest.mark.parametrize(("name", "total"), WEIGHT_SUMS)
def test_weight_recipe(name: str, total: float,
                       reference_weights: Callable[[str], dict[str, np.ndarray]]) -> None:
    weights = reference_weights(name)
    keys = read_keys(REFERENCE / name / "keys.tsv")
    assert len(keys) == 370 and [k for k, _ in keys] == list(weights)
    assert all(weights[k].shape == shape for k, shape in keys)
    # the same numpy draws give the same float32 values: the sum matches to the last digit here
    assert float_sum(weights) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize(("size", "mean", "std", "total"), INPUT_SUMS)
def test_input_recipe(size: int, mean: np.ndarray, std: np.ndarray, total: float) -> None:
    x = recipe_input(recipe_image(size), mean, std)
    assert x.shape == (1, 3, size, size) and x.dtype == np.float32
    assert float(x.astype(np.float64).sum()) == pytest.approx(total, rel=1e-12)


def test_input_statistics_are_the_readmes() -> None:
    """semseg's mean/std are ImageNet's times 255 in float32; a float64 product changes the
    normalised input's sum in the 8th digit, which the documented sum tells apart."""
    alt_std = (np.array([0.229, 0.224, 0.225]) * 255).astype(np.float32)
    x = recipe_input(recipe_image(473), SEMSEG_MEAN, alt_std)
    assert float(x.astype(np.float64).sum()) != pytest.approx(151845.19724355027, rel=1e-12)
