"""``stitch_peak_bytes`` bounds what ``stitch_labels`` allocates, and that follows the working resolution.

tracemalloc sees numpy's allocations (and OpenCV's output arrays, which numpy
allocates), so its peak over a call that starts with the logits alive is what
the bound counts: the logits, the stitcher's arrays and the labels.

Measured bound / peak on the 2-core machine, with noise-like logits (the
stitcher's most expensive way; with smooth logits its bounded route can skip
the dense bands the bound allows for, and peaks lower: up to 1.6x below the
bound, on 200 classes):

    slide 360x480, 11 classes (one window)                  1.06
    whole 360x480 + flip, 11 classes (one window)           1.05
    multiscale + flip 180x240, 11 classes (full size)       1.00
    slide 720x960 from a 360x480 tile, 11 classes           1.19
    slide 600x800 + flip, 150 classes                       1.06
    multiscale + flip 450x600, 150 classes                  1.01
    multiscale 1500x2000, 5 classes                         1.08
    whole 450x600, 200 classes                              1.15
    slide 800x1000, 2 classes                               1.47
    slide 800x1000, 3 classes (IPP's class count: full size) 1.01
    multiscale + flip 100x130, 20 classes                   1.02
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from service.protocol.peak_bytes import stitch_peak_bytes
from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.stitch import stitch_labels
from service.protocol.windows import plan_geometry

MIB = 2**20


def _plan(size: tuple[int, int], tile: tuple[int, int], mode: str, base: int, flip: bool,
          scales: list[float] | None = None) -> TilePlan:
    return plan_tiles(np.zeros((*size, 3), np.uint8), tile=tile, mode=mode, base_size=base,  # type: ignore[arg-type]
                      flip=flip, scales=scales)


def _peak(plan: TilePlan, classes: int, kind: str = "random", seed: int = 0) -> tuple[int, int]:
    """tracemalloc's peak of stitch_labels, the logits (made inside the trace) included; and the logits."""
    rng = np.random.default_rng(seed)
    tracemalloc.start()
    try:
        shape = (plan.num_tiles, classes, *plan.tile)
        if kind == "random":
            logits = rng.standard_normal(shape, dtype=np.float32) * 2
        else:  # confident regions, as a trained network: one class far ahead, a coarse layout
            field = rng.integers(0, classes, size=(plan.num_tiles, 4, 4))
            field = field.repeat(-(-plan.tile[0] // 4), axis=1).repeat(-(-plan.tile[1] // 4), axis=2)
            logits = np.zeros(shape, np.float32)
            np.put_along_axis(logits, field[:, None, :plan.tile[0], :plan.tile[1]], 8.0, axis=1)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        stitch_labels(plan, logits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, base


@pytest.mark.parametrize(("size", "tile", "mode", "base", "flip", "scales", "classes"), [
    ((360, 480), (360, 480), "slide", 480, False, None, 11),
    ((360, 480), (360, 480), "whole", 480, True, None, 11),
    ((180, 240), (180, 240), "multiscale", 240, True, None, 11),
    ((720, 960), (360, 480), "slide", 480, False, None, 11),
    ((600, 800), (97, 97), "slide", 128, True, None, 150),
    ((450, 600), (97, 97), "multiscale", 128, True, [0.5, 1.0, 1.5], 150),
    ((1500, 2000), (97, 97), "multiscale", 128, False, None, 5),
    ((450, 600), (97, 97), "whole", 128, False, None, 200),
    ((800, 1000), (97, 97), "slide", 128, False, None, 2),
    ((800, 1000), (97, 97), "slide", 128, False, None, 3),
    ((100, 130), (48, 64), "multiscale", 64, True, None, 20),
])
def test_the_bound_holds_and_is_tight(size: tuple[int, int], tile: tuple[int, int], mode: str, base: int,
                                      flip: bool, scales: list[float] | None, classes: int) -> None:
    plan = _plan(size, tile, mode, base, flip, scales)
    bound = stitch_peak_bytes(plan.scales, plan.image_size, classes, plan.tile)
    peak, _ = _peak(plan, classes)
    print(f"{size} {mode} flip={flip} {classes} classes: bound / peak {bound / peak:.2f}")
    assert peak <= bound <= 1.5 * peak, f"peak {peak / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB"


def test_the_bound_needs_only_the_header() -> None:
    """Admission runs before decoding: the geometry of the header's size is all the bound needs."""
    plan = _plan((300, 400), (97, 97), "multiscale", 128, True)
    geometry = plan_geometry(300, 400, tile=(97, 97), mode="multiscale", base_size=128, flip=True)
    assert geometry == plan.scales
    assert stitch_peak_bytes(geometry, (300, 400), 150, (97, 97)) == stitch_peak_bytes(
        plan.scales, plan.image_size, 150, plan.tile)
    with pytest.raises(ValueError):
        stitch_peak_bytes((), (300, 400), 150, (97, 97))


def test_a_4_megapixel_150_class_stitch_follows_the_working_resolution() -> None:
    """2000x2000 from a 128-pixel working size: the peak is the logits, the working-size float64
    probabilities and fixed-size bands, not 8 x 150 bytes per pixel (the full-size route: 4.8 GB
    for one float64 array, twice that with a resized scale)."""
    plan = _plan((2000, 2000), (97, 97), "slide", 128, False)
    (geom,) = plan.scales
    working = 150 * geom.size[0] * geom.size[1] * 8
    full_size = 2 * 2000 * 2000 * 150 * 8  # the sum and a resized scale, what the full-size route holds
    peak, logits = _peak(plan, 150, "confident")
    stitch_only = peak - logits - 2000 * 2000  # minus the logits and the uint8 labels
    # measured: 24 MiB for 14 MiB of working probabilities (noise-like logits, which take the dense
    # bands: 42 MiB, and 5 s here, so not run; the bound test above covers that way)
    assert stitch_only < 2 * working + 16 * MIB, f"{stitch_only / MIB:.1f} MiB"
    assert peak < full_size / 100
    assert peak <= stitch_peak_bytes(plan.scales, plan.image_size, 150, plan.tile)


def test_the_brief_12_megapixel_ade20k_request() -> None:
    """A 4000x3000 photo, PSPNet-50 ADE20K (150 classes, tile 473, base 512, slide): the full-size
    float64 stitch held 14.6 GB; the bound is the two tiles' logits, the working-size probabilities,
    a softmax strip and bands: about 0.55 GB."""
    geometry = plan_geometry(3000, 4000, tile=(473, 473), mode="slide", base_size=512)
    bound = stitch_peak_bytes(geometry, (3000, 4000), 150, (473, 473))
    logits = 2 * 150 * 473 * 473 * 4
    working = 150 * 384 * 512 * 8
    assert logits + working < bound < logits + working + 64 * MIB
