"""The numba kNN smoothness (E-D3DGS's embedding regulariser) against its torch reference."""

from __future__ import annotations

import numba
import pytest
import torch

from moegs.experts.embedding import knn_graph
from moegs.experts.knn_smoothness import KnnSmoothnessCPU, knn_smoothness, knn_smoothness_torch


def _case(n: int, dim: int, k: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx, sqrt_w = knn_graph(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3, k, 2000.0)
    z = torch.randn(n, dim, generator=g, dtype=dtype) * 0.01
    z[: n // 10] = z[idx[: n // 10, 0]]  # coincident pairs: |z_i - z_j| = 0, whose gradient is 0
    return z.requires_grad_(), idx, sqrt_w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_match_the_torch_reference(dtype):
    z, idx, sqrt_w = _case(3000, 16, 20, dtype)
    fast = knn_smoothness(z, idx, sqrt_w)
    (g_fast,) = torch.autograd.grad(fast, z)
    ref = knn_smoothness_torch(z, idx, sqrt_w)
    (g_ref,) = torch.autograd.grad(ref, z)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    fast, ref = fast.detach(), ref.detach()
    assert float(ref) > 0.0 and torch.isfinite(g_fast).all()
    assert abs(float(fast) - float(ref)) <= tol * float(ref)
    assert float(knn_smoothness(z.detach(), idx, sqrt_w)) == float(fast)  # no gradient asked: the same value
    assert float((g_fast - g_ref).abs().max()) <= tol * float(g_ref.abs().max())


def test_gradcheck_in_float64():
    z, idx, sqrt_w = _case(40, 5, 4, torch.float64)
    with torch.no_grad():
        z += 0.01 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # no ties
    assert torch.autograd.gradcheck(lambda x: KnnSmoothnessCPU.apply(x, idx, sqrt_w), (z,), eps=1e-7, atol=1e-8)


def test_the_result_does_not_depend_on_the_thread_count():
    z, idx, sqrt_w = _case(8000, 16, 20, torch.float32)
    previous = numba.get_num_threads()
    results = []
    try:
        for threads in (1, previous):
            numba.set_num_threads(threads)
            value = knn_smoothness(z, idx, sqrt_w)
            results.append((value.detach(), torch.autograd.grad(value, z)[0]))
    finally:
        numba.set_num_threads(previous)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_no_neighbours_gives_zero():
    z = torch.randn(1, 4, requires_grad=True)
    empty = torch.zeros(1, 0, dtype=torch.long)
    assert float(knn_smoothness(z, empty, torch.zeros(1, 0))) == 0.0
