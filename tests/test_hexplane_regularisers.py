"""The closed-form CPU plane regularisers (4DGaussians' smoothness and L1-to-one) against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moegs.experts.hexplane import HexPlaneConfig, HexPlaneExpert
from moegs.experts.hexplane_regularisers import PlaneRegularisers, plane_regularisers, plane_regularisers_torch

WEIGHTS = (2e-4, 1e-3, 1e-4)
# widths off and on the 8-lane runs, a 3-row plane (one second difference) and 2-row planes (none)
SPATIAL_SHAPES = [(1, 3, 9, 13), (1, 5, 16, 16), (1, 2, 2, 7)]
SPACE_TIME_SHAPES = [(1, 3, 3, 9), (1, 5, 7, 16), (1, 2, 2, 13)]


def _planes(dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    spatial = [(torch.rand(s, generator=g, dtype=dtype) * 0.4 + 0.1).requires_grad_() for s in SPATIAL_SHAPES]
    space_time = []
    for s in SPACE_TIME_SHAPES:
        p = 1.0 + 0.2 * torch.randn(s, generator=g, dtype=dtype)
        p.view(-1)[::5] = 1.0  # exactly at the L1 kink: subgradient 0, as torch's abs
        space_time.append(p.requires_grad_())
    return spatial, space_time


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_match_autograd(dtype: torch.dtype) -> None:
    spatial, space_time = _planes(dtype)
    planes = spatial + space_time
    fast = plane_regularisers(spatial, space_time, WEIGHTS)
    ref = plane_regularisers_torch(spatial, space_time, WEIGHTS)
    g_fast = torch.autograd.grad(3.0 * fast, planes)  # an upstream factor, to check it is applied
    g_ref = torch.autograd.grad(3.0 * ref, planes)
    fast, ref = fast.detach(), ref.detach()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert fast.dtype == dtype and float(ref) > 0.0
    assert abs(float(fast) - float(ref)) <= tol * float(ref)
    for a, b in zip(g_fast, g_ref):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= tol * float(b.abs().max())
    # 2-row planes have no smoothness; the space-time one still has its L1 gradient
    assert float(g_fast[2].abs().max()) == 0.0 and float(g_fast[5].abs().max()) > 0.0


def test_gradcheck_in_float64() -> None:
    spatial, space_time = _planes(torch.float64, seed=1)
    with torch.no_grad():
        for p in space_time:
            p.view(-1)[::5] += 0.05  # off the kink, where the finite differences are defined
    n = len(spatial)
    assert torch.autograd.gradcheck(lambda *ps: PlaneRegularisers.apply(WEIGHTS, n, *ps), (*spatial, *space_time),
                                    eps=1e-6, atol=1e-9)


def test_a_clip_of_four_frames_trains_with_a_finite_regulariser() -> None:
    """4 frames give time_res 2: the space-time planes have two rows and no second difference
    (the mean over none was NaN, and every loss after the warm-up with it)."""
    rng = np.random.default_rng(0)
    cfg = HexPlaneConfig(warmup=0, base_res=8, feature_dim=4, mlp_width=16)
    expert = HexPlaneExpert.from_points(cfg, rng.uniform(-1, 1, (50, 3)), rng.uniform(0, 1, (50, 3)), np.zeros(50), 4)
    expert.on_step(1)
    for reg in (expert.regularisation(0.5), plane_regularisers_torch(
            expert.fields.hexplane.planes((0, 1, 2)), expert.fields.hexplane.planes((3, 4, 5)), WEIGHTS)):
        assert math.isfinite(float(reg.detach())) and float(reg.detach()) > 0.0
        reg.backward()
