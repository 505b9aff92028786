"""Soft outputs of the stitcher (``Stitcher.soft``): every value is the oracle's float64 probability.

The oracle (tests/service/stitch_oracle.py) holds the official full-size float64 probabilities; the
confidence is their maximum over classes, a class's probability its plane, the probabilities all
planes in float16. Each route gets there its own way (the one window's float32 softmax, the
image-size sum, the bounded route's pointwise and dense values), and each must give the oracle's
numbers exactly, rounded only to the output's type.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.contract.soft import Soft
from service.protocol.stitch import Stitcher
from tests.service.protocol.test_stitch import PLANS, _plan, make_logits
from tests.service.stitch_oracle import stitch_float64

# the routes: one window (a slide image inside one tile), and the plans of test_stitch (full-size, bounded)
SOFT_PLANS = {"one-window": (((20, 30), (32, 48), "slide", 30, None, True), None),
              **{k: PLANS[k] for k in ("multiscale-down-flip", "multiscale-up-and-down", "slide-up",
                                       "multiscale-up-flip")}}


@pytest.mark.parametrize("classes", [5, 150])
@pytest.mark.parametrize("name", sorted(SOFT_PLANS))
def test_soft_outputs_are_the_oracles_probabilities(name: str, classes: int) -> None:
    plan = _plan(*SOFT_PLANS[name][0])
    logits = make_logits("smooth", plan.num_tiles, classes, plan.tile, seed=classes)
    stitcher = Stitcher(plan.scales, plan.image_size, classes, plan.tile)
    stitcher.add(logits, 0)
    labels = stitcher.labels()
    oracle = stitch_float64(plan, logits)  # (H, W, C) float64
    route = {"one-window": "lone", "multiscale-down-flip": "full", "multiscale-up-and-down": "full"}
    assert stitcher.route == route.get(name, "bounded")
    confidence = stitcher.soft(Soft("confidence"), labels)
    assert confidence.dtype == np.float32 and confidence.shape == plan.image_size
    np.testing.assert_array_equal(confidence, oracle.max(axis=2).astype(np.float32))
    for c in (0, classes - 1):
        np.testing.assert_array_equal(stitcher.soft(Soft("probability", c), labels),
                                      oracle[:, :, c].astype(np.float32))
    every = stitcher.soft(Soft("probabilities"), labels)
    assert every.dtype == np.float16 and every.shape == (classes, *plan.image_size)
    np.testing.assert_array_equal(every, oracle.transpose(2, 0, 1).astype(np.float16))
    with pytest.raises(ValueError):
        stitcher.soft(Soft("probability", classes), labels)
