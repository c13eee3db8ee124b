"""The cpu backend's lane sums: exactly the fixed-order arithmetic they promise, in both dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from moegs.raster.cpu_lanes import LANES, lane_dot, lane_sum


@njit(cache=True)
def _sum_from(x, start, n):
    return lane_sum(x[start:], n)


@njit(cache=True)
def _dot_rows(a, b, row, start, n):
    return lane_dot(a[row, start:], b[row, start:], n)


def _fixed_order(terms: np.ndarray) -> float:
    """Lane l sums terms[l], terms[l + 8], ... in order; the 8 lanes are then added pairwise."""
    lanes = np.zeros(LANES, terms.dtype)
    for row in terms.reshape(-1, LANES):
        lanes = lanes + row  # one addition per lane, in the dtype
    while lanes.size > 1:
        lanes = lanes[0::2] + lanes[1::2]
    return lanes[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [8, 24, 128])
def test_lane_sums_follow_their_fixed_order(dtype, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(140).astype(dtype) * 1e3  # large values, so a different order would show
    a, b = (rng.standard_normal((3, 140)).astype(dtype) for _ in range(2))
    assert _sum_from(x, 5, n) == _fixed_order(x[5:5 + n])
    # the products may be fused into the additions (FASTMATH's contract), a rounding apart
    products = a[2, 3:3 + n] * b[2, 3:3 + n]
    ulps = 4 * np.finfo(dtype).eps * float(np.abs(products).sum())
    assert abs(_dot_rows(a, b, 2, 3, n) - _fixed_order(products)) <= ulps
    assert _sum_from(x, 5, n) == pytest.approx(float(x[5:5 + n].astype(np.float64).sum()), rel=1e-5, abs=1e-2)


def test_lane_sums_read_nothing_past_whole_rows():
    """n counts whole 8-value rows; values past them (the next field of a tile buffer) are not read."""
    x = np.arange(20, dtype=np.float32)
    assert _sum_from(x, 0, 16) == float(np.arange(16).sum())
    assert _sum_from(x, 0, 0) == 0.0
