"""E-D3DGS's local embedding smoothness, mean over i and its kNN j of sqrt(w_ij) |z_i - z_j|.

The torch form (a gather of the neighbours' embeddings, the norm and their backward: index_add,
divisions and masks over [N, k, D]) took ~18 ms of a 65 ms embedding training step on two CPU cores
at 8000 Gaussians, for 2.5 M multiply-adds. On the CPU one numba pass computes the value and the
gradient together: per pair the distance and the coefficient sqrt(w_ij) / |z_i - z_j| (0 where
the two coincide, as torch's norm gives a zero gradient there), then one pass in pair order adds
coefficient x (z_i - z_j) to row i and subtracts it from row j. Everything is in a fixed order, so
the result does not depend on the thread count. Other devices use the torch form, which is also
the reference the kernel is tested against.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from moegs.raster.cpu_common import FASTMATH, as_numpy, compute_dtype, threads_for

# Below this many pairs one thread is faster than waking the pool.
_PARALLEL_MIN_PAIRS = 20_000


def knn_smoothness_torch(z: Tensor, idx: Tensor, sqrt_w: Tensor) -> Tensor:
    """Mean of sqrt_w [N, k] * |z_i - z_idx[i, m]| for z [N, D], idx [N, k] (the reference)."""
    # index_select, not z[idx]: the backward of advanced indexing (index_put_ with accumulate)
    # sums in a thread-dependent order on CPU, so two identical runs would drift apart
    neighbours = torch.index_select(z, 0, idx.reshape(-1)).reshape(*idx.shape, z.shape[1])
    dist = torch.linalg.vector_norm(z[:, None, :] - neighbours, dim=-1)  # zero-safe gradient at z_i == z_j
    return (sqrt_w * dist).mean()


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _pair_terms(z, idx, sqrt_w):
    """Per pair (i, m): sqrt_w * distance (float64) and the gradient coefficient sqrt_w / distance."""
    n, k = idx.shape
    weighted = np.empty((n, k))
    coeff = np.empty((n, k), z.dtype)
    for i in prange(n):
        sq = np.zeros(k, z.dtype)
        for c in range(z.shape[1]):
            zi = z[i, c]
            for m in range(k):
                delta = zi - z[idx[i, m], c]
                sq[m] += delta * delta
        for m in range(k):
            dist = np.sqrt(sq[m])
            weighted[i, m] = float(sqrt_w[i, m]) * float(dist)
            coeff[i, m] = sqrt_w[i, m] / dist if dist > 0.0 else 0.0
    return weighted, coeff


@njit(cache=True, fastmath=FASTMATH)
def _scatter(z, idx, coeff, scale):
    """d mean / d z: every pair's coeff * (z_i - z_j) * scale added to row i and taken from row j, in pair order."""
    grad = np.zeros_like(z)
    d = z.shape[1]
    for i in range(idx.shape[0]):
        zi, gi = z[i], grad[i]
        for m in range(idx.shape[1]):
            j = idx[i, m]
            s = coeff[i, m] * scale
            zj, gj = z[j], grad[j]
            for c in range(d):
                g = s * (zi[c] - zj[c])
                gi[c] += g
                gj[c] -= g
    return grad


class KnnSmoothnessCPU(torch.autograd.Function):
    """The smoothness and its gradient in z from the numba passes; idx and sqrt_w are constants."""

    @staticmethod
    def forward(ctx, z: Tensor, idx: Tensor, sqrt_w: Tensor) -> Tensor:
        dtype = compute_dtype(z)
        z_np, idx_np, w_np = as_numpy(z, dtype), as_numpy(idx, torch.int64), as_numpy(sqrt_w, dtype)
        with threads_for(idx_np.size, _PARALLEL_MIN_PAIRS):
            weighted, coeff = _pair_terms(z_np, idx_np, w_np)
        if ctx.needs_input_grad[0]:
            ctx.grad = torch.from_numpy(_scatter(z_np, idx_np, coeff, z_np.dtype.type(1.0 / idx_np.size))).to(z.dtype)
        return torch.tensor(weighted.sum() / idx_np.size, dtype=z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return grad_out * ctx.grad, None, None


def knn_smoothness(z: Tensor, idx: Tensor, sqrt_w: Tensor) -> Tensor:
    """Mean of sqrt_w [N, k] * |z_i - z_idx[i, m]| for z [N, D]: the numba passes on CPU, torch elsewhere."""
    if idx.numel() == 0:
        return z.new_zeros(())
    if z.device.type == "cpu":
        return KnnSmoothnessCPU.apply(z, idx, sqrt_w)
    return knn_smoothness_torch(z, idx, sqrt_w)
