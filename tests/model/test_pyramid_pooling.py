"""The pyramid pooling module, and the matrix pooling that makes any tile export exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.pspnet import PyramidPooling, adaptive_pool_matrix
from tests.bounds import within

# feature sizes of real tiles: 360x480 -> 45x60 (bins 2 and 6 do not divide 45), 473 -> 60,
# 713 -> 90, an odd one, and sizes smaller than the largest bin
SIZES = [(45, 60), (37, 53), (60, 60), (90, 90), (64, 128), (5, 3), (1, 1)]
BINS = (1, 2, 3, 6)
# The matrix form equals adaptive pooling up to summation order. Measured max differences:
# float64 1.3e-15 (a few ulps) on values in [0, 1); float32 module outputs 2.1e-7.
BOUND_F64 = 2e-15
BOUND_F32 = 4e-7


@pytest.mark.parametrize("size", SIZES)
def test_matrix_equals_adaptive_pooling(size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *size, dtype=torch.float64, generator=g)
    for b in BINS:
        ph = adaptive_pool_matrix(size[0], b)
        pw = adaptive_pool_matrix(size[1], b).t()
        want = F.adaptive_avg_pool2d(x, b)
        got = ph @ x @ pw
        assert got.shape == want.shape
        within("pyramid_pooling.matrix_f64", (got - want).abs().max().item(), BOUND_F64)


def test_matrix_rows_are_adaptive_windows() -> None:
    """45 into 6 bins: PyTorch's windows [floor(i*45/6), ceil((i+1)*45/6)) overlap."""
    m = adaptive_pool_matrix(45, 6)
    starts = [int(torch.nonzero(row)[0]) for row in m]
    ends = [int(torch.nonzero(row)[-1]) + 1 for row in m]
    assert starts == [0, 7, 15, 22, 30, 37]
    assert ends == [8, 15, 23, 30, 38, 45]
    assert torch.allclose(m.sum(1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("size", [(45, 60), (37, 53), (6, 6)])
def test_frozen_module_equals_adaptive_module(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ppm = PyramidPooling(16, 4, BINS, align_corners=False).eval()
    x = torch.rand(2, 16, *size)
    with torch.no_grad():
        want = ppm(x)
        ppm.freeze_input_size(*size)
        got = ppm(x)
    assert tuple(got.shape) == (2, 16 + 4 * len(BINS), *size)
    assert torch.equal(got[:, :16], x)  # the input comes first, untouched
    within("pyramid_pooling.frozen_f32", (got - want).abs().max().item(), BOUND_F32)


def test_frozen_module_refuses_other_sizes() -> None:
    ppm = PyramidPooling(8, 2, BINS, align_corners=True).eval()
    ppm.freeze_input_size(45, 60)
    with pytest.raises(ValueError, match="frozen for"):
        ppm(torch.zeros(1, 8, 46, 60))
