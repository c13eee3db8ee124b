"""4DGaussians' plane regularisers: second-difference smoothness and L1-to-one, on CPU in closed form.

    R = lambda_tv * sum_spatial S(P) + lambda_time * sum_space-time S(P) + lambda_l1 * sum_space-time mean|1 - P|
    S(P) = mean over channels, columns and rows r of (P[r+2] - 2 P[r+1] + P[r])^2   (along dim -2)

`plane_regularisers_torch` is the reference (the official code's ``compute_plane_smoothness`` and
L1 term written with slices). On a hexplane step it ran ~100 small autograd ops: 5.8 ms forward +
backward of a 90 ms step on an AVX2 Zen 3 at the demo's 12 planes. On CPU, `PlaneRegularisers`
gives the same value and its gradient from one numba pass per plane (dR/dP is the second-difference
stencil of the second differences, and sign(P - 1) / numel for the L1 term).

A plane with fewer than 3 rows has no second difference: its smoothness is 0 (the mean over none
would be NaN, and poison the loss of a clip with fewer than 6 frames: time_res 2).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from moegs.raster.cpu_common import FASTMATH, as_numpy, compute_dtype
from moegs.raster.cpu_lanes import span_dot


def smoothness(plane: Tensor) -> Tensor:
    """Mean squared second difference along the plane's rows (dim -2; time for space-time planes),
    0 for fewer than 3 rows. 4DGaussians' ``compute_plane_smoothness``; the paper calls the spatial
    use "total variation"."""
    if plane.shape[-2] < 3:
        return plane.sum() * 0.0
    d1 = plane[..., 1:, :] - plane[..., :-1, :]
    d2 = d1[..., 1:, :] - d1[..., :-1, :]
    return d2.square().mean()


def plane_regularisers_torch(spatial: list[Tensor], space_time: list[Tensor], weights: tuple[float, float, float]) -> Tensor:
    """R above with autograd (any device): weights = (lambda_tv, lambda_time, lambda_l1)."""
    tv = torch.stack([smoothness(p) for p in spatial]).sum()
    time_smooth = torch.stack([smoothness(p) for p in space_time]).sum()
    time_l1 = torch.stack([(1.0 - p).abs().mean() for p in space_time]).sum()
    return weights[0] * tv + weights[1] * time_smooth + weights[2] * time_l1


@njit(cache=True, fastmath=FASTMATH)
def _smoothness(plane, weight, grad):
    """weight * S(plane) for plane [C, H, W] (H >= 3); adds its gradient into grad [C, H, W]."""
    c_dim, h, w = plane.shape
    scale = 2.0 * weight / (c_dim * (h - 2) * w)
    d = np.empty(w, plane.dtype)
    total = 0.0
    for c in range(c_dim):
        p, g = plane[c], grad[c]
        for r in range(h - 2):
            top, mid, bottom = p[r], p[r + 1], p[r + 2]
            for x in range(w):
                d[x] = bottom[x] - 2.0 * mid[x] + top[x]
            total += span_dot(d, d, w)
            g0, g1, g2 = g[r], g[r + 1], g[r + 2]
            for x in range(w):
                e = scale * d[x]
                g0[x] += e
                g1[x] -= 2.0 * e
                g2[x] += e
    return weight * total / (c_dim * (h - 2) * w)


@njit(cache=True, fastmath=FASTMATH)
def _l1_to_one(plane, weight, grad):
    """weight * mean|1 - plane| for plane [M]; adds its gradient (sign(plane - 1), 0 at 1) into grad [M]."""
    n = plane.shape[0]
    step = weight / n
    total = 0.0
    for i in range(n):
        e = plane[i] - 1.0
        total += abs(e)
        if e > 0.0:
            grad[i] += step
        elif e < 0.0:
            grad[i] -= step
    return weight * total / n


class PlaneRegularisers(torch.autograd.Function):
    """R above on CPU planes [1, C, H, W]: the value in one pass per plane, the gradient kept from it."""

    @staticmethod
    def forward(ctx, weights: tuple[float, float, float], n_spatial: int, *planes: Tensor) -> Tensor:
        dtype = compute_dtype(planes[0])
        total = 0.0
        grads = []
        for k, plane in enumerate(planes):
            p = as_numpy(plane, dtype)[0]
            g = np.zeros_like(p)
            if p.shape[1] >= 3:
                total += _smoothness(p, weights[0] if k < n_spatial else weights[1], g)
            if k >= n_spatial:
                total += _l1_to_one(p.reshape(-1), weights[2], g.reshape(-1))
            grads.append(torch.from_numpy(g).unsqueeze(0).to(plane.dtype))
        ctx.grads = grads
        return planes[0].new_tensor(total)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return (None, None, *(grad_out * g for g in ctx.grads))


def plane_regularisers(spatial: list[Tensor], space_time: list[Tensor], weights: tuple[float, float, float]) -> Tensor:
    """R above: the closed-form kernels on CPU, `plane_regularisers_torch` elsewhere."""
    if spatial[0].device.type == "cpu":
        return PlaneRegularisers.apply(weights, len(spatial), *spatial, *space_time)
    return plane_regularisers_torch(spatial, space_time, weights)
