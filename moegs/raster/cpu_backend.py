"""The `cpu` backend: numba kernels for compositing forward and backward, parallel over tiles.

The kernels see only projected quantities (means2d, conics, opacities, features with the depth
channel appended) wrapped in one torch.autograd.Function, so the projection stays in torch and
the gradient on means2d (densification's screen-space gradient) comes out of autograd for free.

Forward stores, per pixel and per set, the final transmittance and the list position just past
the last composited Gaussian; backward walks each tile list back to front (as 3DGS does),
recovering T_i = T_{i+1} / (1 - alpha_i). Each Gaussian carries a set index and every pixel keeps
K transmittances, so the multi-expert pass is the same kernel. Gradients are accumulated per
tile-list entry (one writer per entry, no races) and summed per Gaussian afterwards. Arithmetic is
float64 inside; one compiled specialisation serves float32 and float64 callers.

Speed comes from not evaluating list entries that cannot reach alpha >= 1/255 at a pixel: per tile
row, each entry's {alpha >= 1/255} ellipse gives the pixel columns it may touch (with a margin, so
the exact per-pixel tests still decide, and the results do not change).
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


@njit(cache=True, inline="always")
def _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids):
    """Contiguous copies of one tile's Gaussians (the inner loops then stream through memory).

    Column 6 is a power below which alpha < 1/255 for sure (the margin dwarfs rounding): it skips
    the exp for entries near the edge of their ellipse and defines the ellipse _row_candidates uses.
    """
    d = feats.shape[1]
    g = np.empty((n, 7))  # mx, my, a, b, c, opacity, power bound
    f = np.empty((n, d))
    s = np.empty(n, np.int64)
    for j in range(n):
        gid = gids[start + j]
        g[j, 0] = means2d[gid, 0]
        g[j, 1] = means2d[gid, 1]
        g[j, 2] = conics[gid, 0]
        g[j, 3] = conics[gid, 1]
        g[j, 4] = conics[gid, 2]
        g[j, 5] = opac[gid]
        g[j, 6] = np.log(ALPHA_MIN) - np.log(opac[gid]) - 1e-9
        s[j] = set_ids[gid]
        for c in range(d):
            f[j, c] = feats[gid, c]
    return g, f, s


@njit(cache=True, inline="always")
def _row_candidates(g, n, cy, x0, lists, lens):
    """For each of the 16 pixel columns of one tile row, the entries (in list order) whose ellipse
    {power >= bound} covers that pixel centre: lists[col, :lens[col]].

    The ellipse meets the line y = cy in an interval of x (a quadratic in dx); it is widened by a
    margin far above rounding, so only entries the exact test would reject anyway are left out.
    """
    lens[:] = 0
    for j in range(n):
        bound = g[j, 6]
        if bound > 0.0:  # opacity below 1/255: never composited
            continue
        a, b, c = g[j, 2], g[j, 3], g[j, 4]
        lo, hi = float(x0), float(x0 + TILE - 1)
        if a > 0.0:
            # a dx^2 + 2 b dy dx + c dy^2 <= -2 bound, with dx = mx - cx and dy = my - cy
            dy = g[j, 1] - cy
            disc = (b * dy) ** 2 - a * (c * dy * dy + 2.0 * bound - 1e-6)
            if disc < 0.0:
                continue
            half = np.sqrt(disc) / a * (1.0 + 1e-6) + 1e-6
            centre = g[j, 0] + b * dy / a
            lo = max(lo, np.ceil(centre - half - 0.5))
            hi = min(hi, np.floor(centre + half - 0.5))
        for px in range(int(lo), int(hi) + 1):
            col = px - x0
            lists[col, lens[col]] = j
            lens[col] += 1


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    contrib_weight, want_contrib, out_acc, out_trans, out_last, out_contrib,
):
    """out_acc[K,H,W,D], out_trans[K,H,W] (preset to 1), out_last[K,H,W], out_contrib[n_isect]."""
    d = feats.shape[1]
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids)
        trans = np.empty(n_sets)
        last = np.empty(n_sets, np.int64)
        done = np.empty(n_sets, np.bool_)
        acc = np.empty((n_sets, d))
        lists = np.empty((TILE, n), np.int64)
        lens = np.empty(TILE, np.int64)
        x0 = (t % tiles_x) * TILE
        y0 = (t // tiles_x) * TILE
        for py in range(y0, min(y0 + TILE, height)):
            cy = py + 0.5
            _row_candidates(g, n, cy, x0, lists, lens)
            for px in range(x0, min(x0 + TILE, width)):
                cx = px + 0.5
                col = px - x0
                trans[:] = 1.0
                last[:] = 0
                done[:] = False
                acc[:, :] = 0.0
                n_done = 0
                for q in range(lens[col]):
                    j = lists[col, q]
                    k = s[j]
                    if done[k]:
                        continue
                    dx = g[j, 0] - cx
                    dy = g[j, 1] - cy
                    power = -0.5 * (g[j, 2] * dx * dx + g[j, 4] * dy * dy) - g[j, 3] * dx * dy
                    if power > 0.0 or power < g[j, 6]:
                        continue
                    alpha = min(ALPHA_MAX, g[j, 5] * np.exp(power))
                    if alpha < ALPHA_MIN:
                        continue
                    next_t = trans[k] * (1.0 - alpha)
                    if next_t < T_MIN:
                        done[k] = True
                        n_done += 1
                        if n_done == n_sets:
                            break
                        continue
                    w = alpha * trans[k]
                    for c in range(d):
                        acc[k, c] += w * f[j, c]
                    if want_contrib:
                        out_contrib[start + j] += contrib_weight[k, py, px] * w
                    trans[k] = next_t
                    last[k] = j + 1
                for k in range(n_sets):
                    out_trans[k, py, px] = trans[k]
                    out_last[k, py, px] = last[k]
                    for c in range(d):
                        out_acc[k, py, px, c] = acc[k, c]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    trans_final, last, grad_acc, grad_trans, out_grad,
):
    """out_grad[n_isect, 6 + D]: d/d(mx, my, a, b, c, opacity, features) per tile-list entry."""
    d = feats.shape[1]
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids)
        trans = np.empty(n_sets)
        rest = np.empty(n_sets)  # sum_{j>i} w_j (f_j . g) + T_final * dL/dT_final, per set
        stop = np.empty(n_sets, np.int64)
        gpix = np.empty((n_sets, d))
        lists = np.empty((TILE, n), np.int64)
        lens = np.empty(TILE, np.int64)
        x0 = (t % tiles_x) * TILE
        y0 = (t // tiles_x) * TILE
        for py in range(y0, min(y0 + TILE, height)):
            cy = py + 0.5
            _row_candidates(g, n, cy, x0, lists, lens)
            for px in range(x0, min(x0 + TILE, width)):
                cx = px + 0.5
                col = px - x0
                j_end = 0
                for k in range(n_sets):
                    trans[k] = trans_final[k, py, px]
                    rest[k] = trans[k] * grad_trans[k, py, px]
                    stop[k] = last[k, py, px]
                    j_end = max(j_end, stop[k])
                    for c in range(d):
                        gpix[k, c] = grad_acc[k, py, px, c]
                q_end = lens[col]
                while q_end > 0 and lists[col, q_end - 1] >= j_end:
                    q_end -= 1
                for q in range(q_end - 1, -1, -1):
                    j = lists[col, q]
                    k = s[j]
                    if j >= stop[k]:
                        continue
                    dx = g[j, 0] - cx
                    dy = g[j, 1] - cy
                    power = -0.5 * (g[j, 2] * dx * dx + g[j, 4] * dy * dy) - g[j, 3] * dx * dy
                    if power > 0.0 or power < g[j, 6]:
                        continue
                    gauss = np.exp(power)
                    raw = g[j, 5] * gauss
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    one_minus = 1.0 - alpha
                    t_i = trans[k] / one_minus
                    trans[k] = t_i
                    w = alpha * t_i
                    fg = 0.0
                    row = out_grad[start + j]
                    for c in range(d):
                        fg += f[j, c] * gpix[k, c]
                        row[6 + c] += w * gpix[k, c]
                    d_alpha = t_i * fg - rest[k] / one_minus
                    rest[k] += w * fg
                    if raw <= ALPHA_MAX:
                        row[5] += gauss * d_alpha
                        d_power = alpha * d_alpha
                        row[0] -= d_power * (g[j, 2] * dx + g[j, 3] * dy)
                        row[1] -= d_power * (g[j, 3] * dx + g[j, 4] * dy)
                        row[2] -= 0.5 * d_power * dx * dx
                        row[3] -= d_power * dx * dy
                        row[4] -= 0.5 * d_power * dy * dy


def _np64(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(device="cpu", dtype=torch.float64).numpy())


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
    """Differentiable in means2d, conics, opacities and features; the rest are constants."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, set_ids, n_sets, bins, width, height, contrib_weight):
        arrays = (
            _np64(means2d), _np64(conics), _np64(opacities), _np64(features),
            np.ascontiguousarray(set_ids.cpu().numpy().astype(np.int64)),
            np.ascontiguousarray(bins.offsets.cpu().numpy()),
            np.ascontiguousarray(bins.gids.cpu().numpy()),
        )
        order = _tile_order(arrays[5])
        d = features.shape[1]
        acc = np.zeros((n_sets, height, width, d))
        trans = np.ones((n_sets, height, width))
        last = np.zeros((n_sets, height, width), np.int64)
        n_isect = arrays[6].shape[0]
        want_contrib = contrib_weight is not None
        contrib_isect = np.zeros(n_isect if want_contrib else 0)
        weight = _np64(contrib_weight) if want_contrib else np.zeros((1, 1, 1))
        with _threads_for(n_isect):
            _forward_kernel(
                *arrays, order, width, height, bins.tiles_x, n_sets,
                weight, want_contrib, acc, trans, last, contrib_isect,
            )
        ctx.arrays = arrays + (order,)
        ctx.geometry = (width, height, bins.tiles_x, n_sets)
        ctx.trans, ctx.last = trans, last
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
        g_acc = _np64(grad_acc) if grad_acc is not None else np.zeros((n_sets, height, width, d))
        g_trans = _np64(grad_trans) if grad_trans is not None else np.zeros((n_sets, height, width))
        per_entry = np.zeros((gids_np.shape[0], 6 + d))
        with _threads_for(gids_np.shape[0]):
            _backward_kernel(
                *ctx.arrays, width, height, tiles_x, n_sets, ctx.trans, ctx.last, g_acc, g_trans, per_entry,
            )
        grads = torch.zeros((n, 6 + d), dtype=torch.float64)
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
