"""The CPU HexPlane kernels against grid_sample (values and gradients), borders included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moegs.experts.hexplane import PLANE_AXES, HexPlaneField, sample_plane
from moegs.experts.hexplane_cpu import HexPlaneCPU


def _field(dtype: torch.dtype, features: int = 3) -> HexPlaneField:
    field = HexPlaneField(5, 4, [1, 2], features, torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(p.numel()))
    return field


def _coords(dtype: torch.dtype) -> torch.Tensor:
    """Points inside, outside (border padding) and exactly on the edges of [-1, 1]^3, at one time."""
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(40, 3, generator=g, dtype=dtype) * 2.6 - 1.3
    xyz[0] = torch.tensor([-1.0, 1.0, 0.0])
    xyz[1] = torch.tensor([1.0, -1.0, 1.0])
    return torch.cat([xyz, xyz.new_full((40, 1), 0.37)], dim=1)


def _reference(field: HexPlaneField, coords: torch.Tensor) -> torch.Tensor:
    """The grid_sample path: per level, the product of the 6 planes' samples."""
    levels = []
    for planes in field.levels:
        feat = torch.ones(coords.shape[0], planes[0].shape[1], dtype=coords.dtype)  # type: ignore[index]
        for plane, (i, j) in zip(planes, PLANE_AXES):  # type: ignore[call-overload]
            feat = feat * sample_plane(plane, coords[:, [i, j]]).T
        levels.append(feat)
    return torch.cat(levels, dim=1)


def _kernel(field: HexPlaneField, coords: torch.Tensor) -> torch.Tensor:
    planes = [p for level in field.levels for p in level]  # type: ignore[attr-defined]
    return HexPlaneCPU.apply(coords, np.array(PLANE_AXES, np.int64), len(field.levels), *planes)


@pytest.mark.parametrize("features", [3, 19])  # a few channels, and more than two vector widths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_grid_sample(dtype: torch.dtype, features: int) -> None:
    field = _field(dtype, features)
    upstream = torch.randn(40, 2 * features, generator=torch.Generator().manual_seed(5), dtype=dtype)
    results = []
    for fn in (_reference, _kernel):
        field.zero_grad()
        coords = _coords(dtype).requires_grad_()
        out = fn(field, coords)
        out.backward(upstream)
        results.append((out.detach(), coords.grad, [p.grad.clone() for p in field.parameters()]))
    (ref, ref_coords, ref_planes), (got, got_coords, got_planes) = results
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, ref, atol=tol, rtol=tol)
    assert torch.allclose(got_coords, ref_coords, atol=tol, rtol=tol)
    assert got_coords[:, 3].abs().max() > 0  # the time coordinate gets its gradient too
    for g, r in zip(got_planes, ref_planes):
        assert g.shape == r.shape
        assert torch.allclose(g, r, atol=tol, rtol=tol)


def test_field_forward_on_cpu_is_the_kernel() -> None:
    field = _field(torch.float32)
    coords = _coords(torch.float32)
    assert torch.allclose(field(coords[:, :3], 0.37), _reference(field, coords), atol=1e-6)
