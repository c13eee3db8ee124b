"""The `cpu` backend: numba kernels for compositing forward and backward, parallel over tiles.

The kernels see only projected quantities (means2d, conics, opacities, features with the depth
channel appended) wrapped in one torch.autograd.Function, so the projection stays in torch and
the gradient on means2d (densification's screen-space gradient) comes out of autograd for free.

Forward stores, per pixel and per set, the final transmittance and the list position just past
the last composited Gaussian; backward walks each tile list back to front (as 3DGS does),
recovering T_i = T_{i+1} / (1 - alpha_i). Each Gaussian carries a set index and every pixel keeps
K transmittances, so the multi-expert pass is the same kernel. Gradients are accumulated per
tile-list entry (one writer per entry, no races) and summed per Gaussian afterwards.

Arithmetic is in the caller's dtype (float32 in training, like the torch reference; float64 for
gradcheck): numba compiles one specialisation per dtype, and the constants come in an array of
that dtype because a float64 literal would promote float32 arithmetic to float64.

The loops are Gaussian-major: each tile-list entry, in list order, visits only the pixels of its
{alpha >= 1/255} ellipse (row by row, with a margin, so the exact per-pixel tests still decide and
results do not change) and updates their per-pixel state. Every pixel still sees its Gaussians in
list order, while an entry's parameters and gradient sums stay in registers across its pixels.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from moegs.raster.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, TileBins

# Below this many tile-list entries (~ a 64x48 image of a few hundred Gaussians) one thread is faster.
_PARALLEL_MIN_ISECT = 4096
# Slack on the power below which alpha < 1/255: far above float32 rounding of power (~1e-6).
_BOUND_MARGIN = 1e-4


@njit(parallel=True, cache=True, error_model="numpy")
def _ellipses(conics, opac):
    """Per Gaussian, in float64: the power below which alpha < 1/255 for sure (it skips the exp near
    the edge of the ellipse), and the ellipse {power >= bound} as row spans see it:
    (bound, b / a, P, Q, y half-extent), where the row at dy = my - cy meets the ellipse in
    |dx - (b / a) dy| <= sqrt(P - Q dy^2), i.e. a dx^2 + 2 b dx dy + c dy^2 <= 1e-6 - 2 bound.

    Computed once per Gaussian, not per tile-list entry and row; a <= 0 (never from a projection)
    gives whole rows.
    """
    out = np.empty((opac.shape[0], 5))
    for i in prange(opac.shape[0]):
        a, b, c = float(conics[i, 0]), float(conics[i, 1]), float(conics[i, 2])
        bound = np.log(ALPHA_MIN) - np.log(float(opac[i])) - _BOUND_MARGIN
        out[i, 0] = bound
        if a > 0.0:
            big_p = (1e-6 - 2.0 * bound) / a
            big_q = (a * c - b * b) / (a * a)
            out[i, 1], out[i, 2], out[i, 3] = b / a, big_p, big_q
            out[i, 4] = np.sqrt(big_p / big_q) * (1.0 + 1e-6) + 1e-6 if big_q > 0.0 else np.inf
        else:
            out[i, 1], out[i, 2], out[i, 3], out[i, 4] = 0.0, np.inf, 0.0, np.inf
    return out


@njit(cache=True, inline="always")
def _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses):
    """Contiguous copies of one tile's Gaussians (the inner loops then stream through memory):
    g = (mx, my, a, b, c, opacity, power bound) in the compute dtype, e = ellipses[:, 1:]."""
    d = feats.shape[1]
    g = np.empty((n, 7), feats.dtype)
    e = np.empty((n, 4))
    f = np.empty((n, d), feats.dtype)
    s = np.empty(n, np.int64)
    for j in range(n):
        gid = gids[start + j]
        g[j, 0] = means2d[gid, 0]
        g[j, 1] = means2d[gid, 1]
        g[j, 2] = conics[gid, 0]
        g[j, 3] = conics[gid, 1]
        g[j, 4] = conics[gid, 2]
        g[j, 5] = opac[gid]
        g[j, 6] = ellipses[gid, 0]
        for c in range(4):
            e[j, c] = ellipses[gid, 1 + c]
        s[j] = set_ids[gid]
        for c in range(d):
            f[j, c] = feats[gid, c]
    return g, e, f, s


@njit(cache=True, inline="always")
def _span(centre, half, lo, end):
    """Integer pixels [p0, p1) within [lo, end) whose centres p + 0.5 lie in centre +- half."""
    p0 = max(float(lo), np.ceil(centre - half - 0.5))
    p1 = min(float(end - 1), np.floor(centre + half - 0.5))
    if p1 < p0:
        return 0, 0
    return int(p0), int(p1) + 1


@njit(cache=True, inline="always")
def _row_span(e, j, mx, my, cy, x0, x_end):
    """Pixel columns [lo, hi) of [x0, x_end) in the row at centre cy that entry j's ellipse covers.

    Solved in float64 and widened by a margin far above rounding, so only pixels the exact test
    would reject anyway are left out.
    """
    dy = my - cy
    q = e[j, 1] - e[j, 2] * dy * dy
    if q < 0.0:
        return 0, 0
    return _span(mx + e[j, 0] * dy, np.sqrt(q) * (1.0 + 1e-6) + 1e-6, x0, x_end)


@njit(cache=True, inline="always")
def _centres(lo, hi, dtype):
    """Pixel centres lo + 0.5, ..., hi - 0.5 in the compute dtype (an int + float32 sum is float64)."""
    out = np.empty(hi - lo, dtype)
    for i in range(hi - lo):
        out[i] = lo + i + 0.5
    return out


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, contrib_weight, want_contrib, out_acc, out_trans, out_last, out_contrib,
):
    """out_acc[K,H,W,D] (preset to 0), out_trans[K,H,W] (preset to 1), out_last[K,H,W] (preset to 0),
    out_contrib[n_isect] (preset to 0); consts = (0.5, 1, ALPHA_MIN, ALPHA_MAX, T_MIN)."""
    d = feats.shape[1]
    half, one, alpha_min, alpha_max, t_min = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = one - one
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, e, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses)
        x0 = (t % tiles_x) * TILE
        y0 = (t // tiles_x) * TILE
        x_end = min(x0 + TILE, width)
        y_end = min(y0 + TILE, height)
        xs = _centres(x0, x_end, feats.dtype)
        ys = _centres(y0, y_end, feats.dtype)
        done = np.zeros((n_sets, TILE, TILE), np.bool_)
        alive = n_sets * (x_end - x0) * (y_end - y0)  # (set, pixel) pairs not yet saturated
        for j in range(n):
            bound = g[j, 6]
            if bound > zero:  # opacity below 1/255: never composited
                continue
            k = s[j]
            contrib = zero
            mx, my, a, b, c, o = g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5]
            row_lo, row_hi = _span(float(my), e[j, 3], y0, y_end)
            for py in range(row_lo, row_hi):
                cy = ys[py - y0]
                dy = my - cy
                lo, hi = _row_span(e, j, float(mx), float(my), float(cy), x0, x_end)
                for px in range(lo, hi):
                    if done[k, py - y0, px - x0]:
                        continue
                    dx = mx - xs[px - x0]
                    power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
                    if power > zero or power < bound:
                        continue
                    alpha = min(alpha_max, o * np.exp(power))
                    if alpha < alpha_min:
                        continue
                    trans = out_trans[k, py, px]
                    next_t = trans * (one - alpha)
                    if next_t < t_min:
                        done[k, py - y0, px - x0] = True
                        alive -= 1
                        continue
                    w = alpha * trans
                    for ch in range(d):
                        out_acc[k, py, px, ch] += w * f[j, ch]
                    if want_contrib:
                        contrib += contrib_weight[k, py, px] * w
                    out_trans[k, py, px] = next_t
                    out_last[k, py, px] = j + 1
            if want_contrib:
                out_contrib[start + j] = contrib
            if alive == 0:
                break


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, trans_final, last, grad_acc, grad_trans, out_grad,
):
    """out_grad[n_isect, 6 + D] (preset to 0): d/d(mx, my, a, b, c, opacity, features) per tile-list entry."""
    d = feats.shape[1]
    half, one, alpha_min, alpha_max = consts[0], consts[1], consts[2], consts[3]
    zero = one - one
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, e, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses)
        x0 = (t % tiles_x) * TILE
        y0 = (t // tiles_x) * TILE
        x_end = min(x0 + TILE, width)
        y_end = min(y0 + TILE, height)
        xs = _centres(x0, x_end, feats.dtype)
        ys = _centres(y0, y_end, feats.dtype)
        trans = np.empty((n_sets, TILE, TILE), feats.dtype)
        rest = np.empty((n_sets, TILE, TILE), feats.dtype)  # sum_{j>i} w_j (f_j . g) + T_final dL/dT_final
        j_end = 0
        for k in range(n_sets):
            for py in range(y0, y_end):
                for px in range(x0, x_end):
                    t_final = trans_final[k, py, px]
                    trans[k, py - y0, px - x0] = t_final
                    rest[k, py - y0, px - x0] = t_final * grad_trans[k, py, px]
                    j_end = max(j_end, last[k, py, px])
        for j in range(j_end - 1, -1, -1):
            bound = g[j, 6]
            if bound > zero:
                continue
            k = s[j]
            g_mx, g_my, g_a, g_b, g_c, g_opac = zero, zero, zero, zero, zero, zero
            row = out_grad[start + j]
            mx, my, a, b, c, o = g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5]
            row_lo, row_hi = _span(float(my), e[j, 3], y0, y_end)
            for py in range(row_lo, row_hi):
                cy = ys[py - y0]
                dy = my - cy
                lo, hi = _row_span(e, j, float(mx), float(my), float(cy), x0, x_end)
                for px in range(lo, hi):
                    if j >= last[k, py, px]:
                        continue
                    dx = mx - xs[px - x0]
                    power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
                    if power > zero or power < bound:
                        continue
                    gauss = np.exp(power)
                    raw = o * gauss
                    alpha = min(alpha_max, raw)
                    if alpha < alpha_min:
                        continue
                    one_minus = one - alpha
                    t_i = trans[k, py - y0, px - x0] / one_minus
                    trans[k, py - y0, px - x0] = t_i
                    w = alpha * t_i
                    fg = zero
                    for ch in range(d):
                        gp = grad_acc[k, py, px, ch]
                        fg += f[j, ch] * gp
                        row[6 + ch] += w * gp
                    r = rest[k, py - y0, px - x0]
                    d_alpha = t_i * fg - r / one_minus
                    rest[k, py - y0, px - x0] = r + w * fg
                    if raw <= alpha_max:
                        g_opac += gauss * d_alpha
                        d_power = alpha * d_alpha
                        g_mx -= d_power * (a * dx + b * dy)
                        g_my -= d_power * (b * dx + c * dy)
                        g_a -= half * d_power * dx * dx
                        g_b -= d_power * dx * dy
                        g_c -= half * d_power * dy * dy
            row[0], row[1], row[2], row[3], row[4], row[5] = g_mx, g_my, g_a, g_b, g_c, g_opac


def _consts(dtype: np.dtype) -> np.ndarray:
    """The kernels' constants in the compute dtype (see the module docstring)."""
    return np.array([0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN], dtype)


def _np(x: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A contiguous CPU array of x in dtype, sharing memory when x already is one."""
    return x.detach().to(device="cpu", dtype=dtype).contiguous().numpy()


@contextmanager
def _threads_for(n_isect: int):
    """All numba threads with dynamic scheduling for real work, one thread for tiny scenes: a
    parallel launch costs a thread wake-up, which on a loaded machine can exceed the work itself."""
    previous = numba.get_num_threads()
    numba.set_num_threads(previous if n_isect >= _PARALLEL_MIN_ISECT else 1)
    try:
        with numba.parallel_chunksize(1):
            yield
    finally:
        numba.set_num_threads(previous)


def _like(a: np.ndarray, ref: Tensor) -> Tensor:
    return torch.from_numpy(a).to(device=ref.device, dtype=ref.dtype)


def _tile_order(offsets: np.ndarray) -> np.ndarray:
    """Non-empty tiles, longest list first, so the dynamic scheduler balances the threads."""
    counts = np.diff(offsets)
    nonempty = np.nonzero(counts)[0]
    return nonempty[np.argsort(-counts[nonempty], kind="stable")].astype(np.int64)


class _CompositeCPU(torch.autograd.Function):
    """Differentiable in means2d, conics, opacities and features; the rest are constants.

    Computes in float64 for float64 features and in float32 otherwise."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, set_ids, n_sets, bins, width, height, contrib_weight):
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        arrays = (
            _np(means2d, dtype), _np(conics, dtype), _np(opacities, dtype), _np(features, dtype),
            _np(set_ids, torch.int64), _np(bins.offsets, torch.int64), _np(bins.gids, torch.int64),
        )
        order = _tile_order(arrays[5])
        consts = _consts(arrays[3].dtype)
        d = features.shape[1]
        acc = np.zeros((n_sets, height, width, d), consts.dtype)
        trans = np.ones((n_sets, height, width), consts.dtype)
        last = np.zeros((n_sets, height, width), np.int64)
        n_isect = arrays[6].shape[0]
        want_contrib = contrib_weight is not None
        contrib_isect = np.zeros(n_isect if want_contrib else 0, consts.dtype)
        weight = _np(contrib_weight, dtype) if want_contrib else np.zeros((1, 1, 1), consts.dtype)
        with _threads_for(n_isect):
            ellipses = _ellipses(arrays[1], arrays[2])
            _forward_kernel(
                *arrays, order, width, height, bins.tiles_x, n_sets,
                ellipses, consts, weight, want_contrib, acc, trans, last, contrib_isect,
            )
        ctx.arrays = arrays + (order,)
        ctx.geometry = (width, height, bins.tiles_x, n_sets)
        ctx.ellipses, ctx.consts, ctx.trans, ctx.last = ellipses, consts, trans, last
        ctx.dtype, ctx.device = features.dtype, features.device
        contrib = None
        if want_contrib:
            per_gaussian = np.bincount(arrays[6], weights=contrib_isect, minlength=features.shape[0])
            contrib = _like(per_gaussian, features)
            ctx.mark_non_differentiable(contrib)
        return _like(acc, features), _like(trans, features), contrib

    @staticmethod
    def backward(ctx, grad_acc, grad_trans, _grad_contrib):
        _, _, _, feats_np, _, _, gids_np, _ = ctx.arrays
        width, height, tiles_x, n_sets = ctx.geometry
        n, d = feats_np.shape
        dtype = torch.from_numpy(feats_np[:0]).dtype
        g_acc = _np(grad_acc, dtype) if grad_acc is not None else np.zeros((n_sets, height, width, d), feats_np.dtype)
        g_trans = _np(grad_trans, dtype) if grad_trans is not None else np.zeros((n_sets, height, width), feats_np.dtype)
        per_entry = np.zeros((gids_np.shape[0], 6 + d), feats_np.dtype)
        with _threads_for(gids_np.shape[0]):
            _backward_kernel(
                *ctx.arrays, width, height, tiles_x, n_sets, ctx.ellipses, ctx.consts, ctx.trans, ctx.last, g_acc, g_trans, per_entry,
            )
        grads = torch.zeros((n, 6 + d), dtype=dtype)
        grads.index_add_(0, torch.from_numpy(gids_np), torch.from_numpy(per_entry))
        grads = grads.to(device=ctx.device, dtype=ctx.dtype)
        return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:], None, None, None, None, None, None


def composite_cpu(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    set_ids: Tensor,
    n_sets: int,
    bins: TileBins,
    width: int,
    height: int,
    contrib_weight: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Same contract as ``composite_torch``: (acc [K,H,W,D], trans [K,H,W], contrib [N] or None)."""
    return _CompositeCPU.apply(
        means2d, conics, opacities, features, set_ids, n_sets, bins, width, height, contrib_weight
    )
