"""The `cpu` backend: numba kernels for compositing forward and backward, parallel over tiles.

The kernels see only projected quantities (means2d, conics, opacities, features with the depth
channel appended) wrapped in one torch.autograd.Function, so the projection stays outside and
the gradient on means2d (densification's screen-space gradient) comes out of autograd for free.

Forward stores, per pixel and per set, the final transmittance and the list position just past
the last composited Gaussian; backward walks each tile list back to front (as 3DGS does),
recovering T_i = T_{i+1} / (1 - alpha_i). Each Gaussian carries a set index and every pixel keeps
K transmittances, so the multi-expert pass is the same kernel. Gradients are accumulated per
tile-list entry (one writer per entry, no races) and summed per Gaussian afterwards.

Arithmetic is in the caller's dtype (float32 in training, like the torch reference; float64 for
gradcheck): numba compiles one specialisation per dtype, and the constants come in an array of
that dtype because a float64 literal would promote float32 arithmetic to float64.

Speed comes from SIMD: the loops are Gaussian-major, and each tile-list entry, in list order,
updates the pixels of its tile within its {alpha >= 1/255} ellipse's rows and 8-column tile
halves (entries whose ellipse misses the tile are skipped) as one branch-free loop over them:
every test is a select and per-pixel state lives in tile-local arrays, so LLVM vectorises it.
libm's exp would stop that, so `_exp_neg` evaluates exp on [-10, 0] with Cody-Waite reduction
and a degree-12 Taylor polynomial (float32: ~1e-7 relative, as exact as libm's expf; float64:
~5e-16). fastmath allows only reassociation and contraction (the sums over pixels in the
backward), never finite-math assumptions. Measured on 2 cores at 256x192 with 20k Gaussians:
`python -m moegs.raster.bench`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from moegs.raster.cpu_common import as_numpy, compute_dtype, threads_for
from moegs.raster.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, TileBins

# Below this many tile-list entries (~ a 64x48 image of a few hundred Gaussians) one thread is faster.
_PARALLEL_MIN_ISECT = 4096
# `_ellipses` takes a few ns per Gaussian: below this many, waking the pool costs more than it saves.
_PARALLEL_MIN_GAUSSIANS = 50_000
# Tile-local arrays hold the left and right 8 columns of a tile as two row-major blocks, so an
# entry whose ellipse stays in one half visits only rows x 8 pixels (a third fewer in all).
_HALF = TILE // 2
# Slack on the power below which alpha < 1/255: far above float32 rounding of power (~1e-6).
_BOUND_MARGIN = 1e-4
# Row sums may be reassociated (vectorised) and multiply-adds fused; NaN/inf semantics stay exact.
_FASTMATH = {"reassoc", "contract", "nsz"}
# exp(x) = 2^-n exp(r), n = round(-x log2 e) <= 15 for x >= -10; ln 2 split so n * _LN2_HI is exact.
_EXP_CLAMP = -10.0
_LN2_HI = 0.693359375
_LN2_LO = math.log(2.0) - _LN2_HI
_TAYLOR_DEGREE = 12


def _consts(dtype: np.dtype) -> np.ndarray:
    """The kernels' constants in the compute dtype (see the module docstring): compositing
    (0.5, 1, ALPHA_MIN, ALPHA_MAX, T_MIN), then `_exp_neg`'s (clamp, log2 e, ln2 hi, ln2 lo,
    1/12!, ..., 1/1!, 2^-1, 2^-2, 2^-4, 2^-8)."""
    taylor = [1.0 / math.factorial(k) for k in range(_TAYLOR_DEGREE, 0, -1)]
    return np.array(
        [0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN, _EXP_CLAMP, 1.0 / math.log(2.0), _LN2_HI, _LN2_LO]
        + taylor + [0.5, 0.25, 1.0 / 16.0, 1.0 / 256.0],
        dtype,
    )


@njit(cache=True, inline="always")
def _exp_tuple(consts):
    """`_exp_neg`'s constants as a tuple: scalars in registers, so a row loop that reads them
    needs no loads (loads from an array it might alias would block vectorisation)."""
    return (
        consts[5], consts[6], consts[7], consts[8], consts[9], consts[10], consts[11], consts[12],
        consts[13], consts[14], consts[15], consts[16], consts[17], consts[18], consts[19], consts[20],
        consts[21], consts[22], consts[23], consts[24], consts[1], consts[0],
    )


@njit(cache=True, inline="always", fastmath=_FASTMATH)
def _exp_neg(x, ec):
    """exp(x) for x in [-10, 0] (clamped to it) without a libm call, so pixel loops vectorise.

    Written out in full: a loop over the tuple here would keep the caller's loop scalar."""
    one = ec[20]
    zero = one - one
    two = one + one
    four = two + two
    eight = four + four
    x = min(max(x, ec[0]), zero)
    n = np.floor(-x * ec[1] + ec[21])  # round(-x / ln 2), 0..15
    r = x + n * ec[2] + n * ec[3]  # x + n ln 2, in [-0.35, 0.35]
    y = ec[4] * r + ec[5]
    y = y * r + ec[6]
    y = y * r + ec[7]
    y = y * r + ec[8]
    y = y * r + ec[9]
    y = y * r + ec[10]
    y = y * r + ec[11]
    y = y * r + ec[12]
    y = y * r + ec[13]
    y = y * r + ec[14]
    y = y * r + ec[15]
    y = y * r + one
    # times 2^-n, n = 8 b3 + 4 b2 + 2 b1 + b0, as selects (thresholds in the compute dtype: int
    # literals would promote the comparisons to float64)
    t = n >= eight
    y = y * (ec[19] if t else one)
    n = n - (eight if t else zero)
    t = n >= four
    y = y * (ec[18] if t else one)
    n = n - (four if t else zero)
    t = n >= two
    y = y * (ec[17] if t else one)
    n = n - (two if t else zero)
    return y * (ec[16] if n >= one else one)


@njit(parallel=True, cache=True, error_model="numpy")
def _ellipses(conics, opac):
    """Per Gaussian, in float64: the power below which alpha < 1/255 for sure, and the half width
    and half height of the ellipse {power >= bound} (columns and rows beyond them are skipped; a
    tile the ellipse misses is skipped whole); a degenerate conic (never from a projection) gives
    everything. Widened by a margin far above rounding, so only pixels that the exact per-pixel
    tests would reject anyway are left out."""
    out = np.empty((opac.shape[0], 3))
    for i in prange(opac.shape[0]):
        a, b, c = float(conics[i, 0]), float(conics[i, 1]), float(conics[i, 2])
        bound = np.log(ALPHA_MIN) - np.log(float(opac[i])) - _BOUND_MARGIN
        out[i, 0] = bound
        det = a * c - b * b
        if a > 0.0 and det > 0.0:
            # a dx^2 + 2 b dx dy + c dy^2 <= q reaches |dx| <= sqrt(q c / det), |dy| <= sqrt(q a / det)
            q = 1e-6 - 2.0 * bound
            out[i, 1] = np.sqrt(q * c / det) * (1.0 + 1e-6) + 1e-6
            out[i, 2] = np.sqrt(q * a / det) * (1.0 + 1e-6) + 1e-6
        else:
            out[i, 1] = np.inf
            out[i, 2] = np.inf
    return out


@njit(cache=True, inline="always")
def _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses):
    """Contiguous copies of one tile's Gaussians (the inner loops then stream through memory):
    g = (mx, my, a, b, c, opacity, power bound) in the compute dtype, half extents (width, height)
    of the ellipses in float64."""
    d = feats.shape[1]
    g = np.empty((n, 7), feats.dtype)
    half = np.empty((n, 2))
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
        half[j, 0] = ellipses[gid, 1]
        half[j, 1] = ellipses[gid, 2]
        s[j] = set_ids[gid]
        for c in range(d):
            f[j, c] = feats[gid, c]
    return g, half, f, s


@njit(cache=True, inline="always")
def _pixel_range(centre, half, lo, end):
    """Pixels [r0, r1) (rows or columns) within [lo, end) whose centres r + 0.5 lie in centre +- half."""
    p0 = max(float(lo), np.ceil(centre - half - 0.5))
    p1 = min(float(end - 1), np.floor(centre + half - 0.5))
    if p1 < p0:
        return 0, 0
    return int(p0), int(p1) + 1


@njit(cache=True, inline="always")
def _slot(ly, lx):
    """Where tile pixel (row ly, column lx) lives in the tile-local arrays: the left 8 columns,
    row-major, then the right 8 (see `_HALF`)."""
    return (lx // _HALF) * (TILE * _HALF) + ly * _HALF + lx % _HALF


@njit(cache=True, inline="always")
def _tile_centres(x0, y0, dtype):
    """Pixel centres (x, y) of a tile's 256 pixels in `_slot` order, in the compute dtype (an
    int + float32 sum would be float64)."""
    xs = np.empty(TILE * TILE, dtype)
    ys = np.empty(TILE * TILE, dtype)
    for ly in range(TILE):
        for lx in range(TILE):
            xs[_slot(ly, lx)] = x0 + lx + 0.5
            ys[_slot(ly, lx)] = y0 + ly + 0.5
    return xs, ys


@njit(cache=True, inline="always")
def _tile_box(t, tiles_x, width, height):
    """Tile t's first column and row, its width in the image (partial at the right edge) and the
    row past its last one in the image."""
    x0 = (t % tiles_x) * TILE
    y0 = (t // tiles_x) * TILE
    return x0, y0, min(x0 + TILE, width) - x0, min(y0 + TILE, height)


@njit(cache=True, inline="always")
def _entry_spans(g, half, j, x0, y0, m, y_end):
    """The tile halves entry j's ellipse touches, as slot ranges: (first half, last half, p0 and
    p1 within a half); half h covers slots h * 128 + [p0, p1). Last < first when the entry draws
    nothing here: opacity below 1/255 (power bound > 0) or an ellipse that misses the tile."""
    if g[j, 6] > 0.0:
        return 0, -1, 0, 0
    col_lo, col_hi = _pixel_range(float(g[j, 0]), half[j, 0], x0, x0 + m)
    row_lo, row_hi = _pixel_range(float(g[j, 1]), half[j, 1], y0, y_end)
    if col_hi <= col_lo or row_hi <= row_lo:
        return 0, -1, 0, 0
    return (col_lo - x0) // _HALF, (col_hi - 1 - x0) // _HALF, (row_lo - y0) * _HALF, (row_hi - y0) * _HALF


@njit(cache=True, inline="always", fastmath=_FASTMATH)
def _composite_span(xs, ys, trans, done, last, w_out, mx, my, a, b, c, o, bound, tag, consts, ec):
    """Composite one Gaussian into a span of tile pixels (whole rows; the arrays are views of
    it): w_out[p] = alpha_p T_p (0 where it is not composited); updates T, the saturation flags
    and `last`; returns how many pixels saturated.

    Loops over views from index 0: a range(p0, p1) index might be negative as far as numba
    knows, and its wraparound select keeps the loop scalar."""
    half, one, alpha_min, alpha_max, t_min = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = one - one
    n_sat = 0
    for p in range(xs.shape[0]):
        dx = mx - xs[p]
        dy = my - ys[p]
        power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
        raw = o * _exp_neg(power, ec)
        alpha = raw if raw < alpha_max else alpha_max
        t_now = trans[p]
        t_next = t_now * (one - alpha)
        ok = (power <= zero) & (power >= bound) & (alpha >= alpha_min) & (done[p] == zero)
        sat = ok & (t_next < t_min)
        use = ok & (t_next >= t_min)
        w_out[p] = alpha * t_now if use else zero
        trans[p] = t_next if use else t_now
        last[p] = tag if use else last[p]
        done[p] = one if sat else done[p]
        n_sat += 1 if sat else 0
    return n_sat


@njit(parallel=True, cache=True, error_model="numpy", fastmath=_FASTMATH)
def _forward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, contrib_weight, want_contrib, out_acc, out_trans, out_last, out_contrib,
):
    """out_acc[K,H,W,D], out_trans[K,H,W], out_last[K,H,W] (int32) are fully written for every
    non-empty tile (preset them for the empty ones: 0, 1, 0); out_contrib[n_isect] preset to 0."""
    d = feats.shape[1]
    one = consts[1]
    zero = one - one
    ec = _exp_tuple(consts)
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, half, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses)
        x0, y0, m, y_end = _tile_box(t, tiles_x, width, height)
        xs, ys = _tile_centres(x0, y0, feats.dtype)
        # per-pixel state in `_slot` order; pixels outside the image start saturated, so they
        # are never composited nor counted
        trans = np.ones((n_sets, TILE * TILE), feats.dtype)
        done = np.ones((n_sets, TILE * TILE), feats.dtype)
        for k in range(n_sets):
            for ly in range(y_end - y0):
                for i in range(m):
                    done[k, _slot(ly, i)] = zero
        last = np.zeros((n_sets, TILE * TILE), np.int32)
        acc = np.zeros((n_sets, d, TILE * TILE), feats.dtype)
        w = np.empty(TILE * TILE, feats.dtype)
        alive = n_sets * m * (y_end - y0)  # (set, pixel) pairs not yet saturated
        for j in range(n):
            h0, h1, q0, q1 = _entry_spans(g, half, j, x0, y0, m, y_end)
            if h1 < h0:
                continue
            k, bound = s[j], g[j, 6]
            contrib = zero
            for hf in range(h0, h1 + 1):
                p0, p1 = hf * TILE * _HALF + q0, hf * TILE * _HALF + q1
                w_span = w[p0:p1]
                alive -= _composite_span(
                    xs[p0:p1], ys[p0:p1], trans[k, p0:p1], done[k, p0:p1], last[k, p0:p1], w_span,
                    g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5], bound, j + 1, consts, ec,
                )
                for ch in range(d):
                    fj = f[j, ch]
                    acc_span = acc[k, ch, p0:p1]
                    for q in range(p1 - p0):
                        acc_span[q] += w_span[q] * fj
                if want_contrib:
                    for q in range(q1 - q0):
                        ly, i = (q0 + q) // _HALF, hf * _HALF + (q0 + q) % _HALF
                        if i < m:
                            contrib += contrib_weight[k, y0 + ly, x0 + i] * w_span[q]
            if want_contrib:
                out_contrib[start + j] = contrib
            if alive == 0:
                break
        for k in range(n_sets):
            for ly in range(y_end - y0):
                for i in range(m):
                    p = _slot(ly, i)
                    out_trans[k, y0 + ly, x0 + i] = trans[k, p]
                    out_last[k, y0 + ly, x0 + i] = last[k, p]
                    for ch in range(d):
                        out_acc[k, y0 + ly, x0 + i, ch] = acc[k, ch, p]


@njit(cache=True, inline="always", fastmath=_FASTMATH)
def _backprop_span(xs, ys, trans, rest, last, fg, w_out, mx, my, a, b, c, o, bound, j, consts, ec):
    """One Gaussian's gradient terms from a span of tile pixels (views, as in `_composite_span`),
    walking back to front: recovers its T_p (updating trans and rest), sets w_out[p] = alpha_p T_p
    (0 where not composited) and returns the sums of d/d(mx, my, a, b, c, opacity)."""
    half, one, alpha_min, alpha_max = consts[0], consts[1], consts[2], consts[3]
    zero = one - one
    g_mx, g_my, g_a, g_b, g_c, g_opac = zero, zero, zero, zero, zero, zero
    for p in range(xs.shape[0]):
        dx = mx - xs[p]
        dy = my - ys[p]
        power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
        gauss = _exp_neg(power, ec)
        raw = o * gauss
        alpha = raw if raw < alpha_max else alpha_max
        used = (j < last[p]) & (power <= zero) & (power >= bound) & (alpha >= alpha_min)
        one_minus = one - alpha
        t_after = trans[p]
        t_i = t_after / one_minus
        w = alpha * t_i
        r = rest[p]
        d_alpha = t_i * fg[p] - r / one_minus
        trans[p] = t_i if used else t_after
        rest[p] = r + w * fg[p] if used else r
        w_out[p] = w if used else zero
        smooth = used & (raw <= alpha_max)  # alpha = o * gauss, not the 0.99 clamp
        d_power = alpha * d_alpha if smooth else zero
        g_opac += gauss * d_alpha if smooth else zero
        g_mx -= d_power * (a * dx + b * dy)
        g_my -= d_power * (b * dx + c * dy)
        g_a -= half * d_power * dx * dx
        g_b -= d_power * dx * dy
        g_c -= half * d_power * dy * dy
    return g_mx, g_my, g_a, g_b, g_c, g_opac


@njit(parallel=True, cache=True, error_model="numpy", fastmath=_FASTMATH)
def _backward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, trans_final, last_final, grad_acc, grad_trans, out_grad,
):
    """out_grad[n_isect, 6 + D] (preset to 0): d/d(mx, my, a, b, c, opacity, features) per tile-list entry."""
    d = feats.shape[1]
    one = consts[1]
    zero = one - one
    ec = _exp_tuple(consts)
    for it in prange(order.shape[0]):
        t = order[it]
        start = offsets[t]
        n = offsets[t + 1] - start
        g, half, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses)
        x0, y0, m, y_end = _tile_box(t, tiles_x, width, height)
        xs, ys = _tile_centres(x0, y0, feats.dtype)
        # tile-local copies in `_slot` order; rest = sum_{j>i} w_j (f_j . dL/dacc) + T_final dL/dT_final;
        # pixels outside the image keep last = 0, so no entry is ever used there
        trans = np.ones((n_sets, TILE * TILE), feats.dtype)
        rest = np.zeros((n_sets, TILE * TILE), feats.dtype)
        last = np.zeros((n_sets, TILE * TILE), np.int32)
        g_acc = np.zeros((n_sets, d, TILE * TILE), feats.dtype)
        j_end = 0
        for k in range(n_sets):
            for ly in range(y_end - y0):
                for i in range(m):
                    p = _slot(ly, i)
                    t_final = trans_final[k, y0 + ly, x0 + i]
                    trans[k, p] = t_final
                    rest[k, p] = t_final * grad_trans[k, y0 + ly, x0 + i]
                    last[k, p] = last_final[k, y0 + ly, x0 + i]
                    j_end = max(j_end, last[k, p])
                    for ch in range(d):
                        g_acc[k, ch, p] = grad_acc[k, y0 + ly, x0 + i, ch]
        fg = np.empty(TILE * TILE, feats.dtype)
        w = np.empty(TILE * TILE, feats.dtype)
        for j in range(j_end - 1, -1, -1):
            h0, h1, q0, q1 = _entry_spans(g, half, j, x0, y0, m, y_end)
            if h1 < h0:
                continue
            k, bound = s[j], g[j, 6]
            out = out_grad[start + j]  # preset to 0; the halves add up
            for hf in range(h0, h1 + 1):
                p0, p1 = hf * TILE * _HALF + q0, hf * TILE * _HALF + q1
                fg_span, w_span = fg[p0:p1], w[p0:p1]
                for q in range(p1 - p0):
                    fg_span[q] = zero
                for ch in range(d):
                    fj = f[j, ch]
                    g_span = g_acc[k, ch, p0:p1]
                    for q in range(p1 - p0):
                        fg_span[q] += fj * g_span[q]
                sums = _backprop_span(
                    xs[p0:p1], ys[p0:p1], trans[k, p0:p1], rest[k, p0:p1], last[k, p0:p1], fg_span, w_span,
                    g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5], bound, j, consts, ec,
                )
                for q in range(6):
                    out[q] += sums[q]
                for ch in range(d):
                    g_span = g_acc[k, ch, p0:p1]
                    total = zero
                    for q in range(p1 - p0):
                        total += w_span[q] * g_span[q]
                    out[6 + ch] += total


@njit(cache=True)
def _sum_per_gaussian(gids, per_entry, n):
    """[n, C] sums of the per-entry rows by Gaussian, in entry order (deterministic; torch's index_add_
    took ~0.5 ms of the 20k-Gaussian backward)."""
    out = np.zeros((n, per_entry.shape[1]), per_entry.dtype)
    for e in range(gids.shape[0]):
        for c in range(per_entry.shape[1]):
            out[gids[e], c] += per_entry[e, c]
    return out


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
        dtype = compute_dtype(features)
        arrays = (
            as_numpy(means2d, dtype), as_numpy(conics, dtype), as_numpy(opacities, dtype), as_numpy(features, dtype),
            as_numpy(set_ids, torch.int64), as_numpy(bins.offsets, torch.int64), as_numpy(bins.gids, torch.int64),
        )
        order = _tile_order(arrays[5])
        consts = _consts(arrays[3].dtype)
        d = features.shape[1]
        acc = np.zeros((n_sets, height, width, d), consts.dtype)
        trans = np.ones((n_sets, height, width), consts.dtype)
        last = np.zeros((n_sets, height, width), np.int32)
        n_isect = arrays[6].shape[0]
        want_contrib = contrib_weight is not None
        contrib_isect = np.zeros(n_isect if want_contrib else 0, consts.dtype)
        weight = as_numpy(contrib_weight, dtype) if want_contrib else np.zeros((1, 1, 1), consts.dtype)
        with threads_for(arrays[2].shape[0], _PARALLEL_MIN_GAUSSIANS):
            ellipses = _ellipses(arrays[1], arrays[2])
        with threads_for(n_isect, _PARALLEL_MIN_ISECT, chunksize=1):
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
        g_acc = as_numpy(grad_acc, dtype) if grad_acc is not None else np.zeros((n_sets, height, width, d), feats_np.dtype)
        g_trans = as_numpy(grad_trans, dtype) if grad_trans is not None else np.zeros((n_sets, height, width), feats_np.dtype)
        per_entry = np.zeros((gids_np.shape[0], 6 + d), feats_np.dtype)
        with threads_for(gids_np.shape[0], _PARALLEL_MIN_ISECT, chunksize=1):
            _backward_kernel(
                *ctx.arrays, width, height, tiles_x, n_sets, ctx.ellipses, ctx.consts, ctx.trans, ctx.last, g_acc, g_trans, per_entry,
            )
        grads = torch.from_numpy(_sum_per_gaussian(gids_np, per_entry, n)).to(device=ctx.device, dtype=ctx.dtype)
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
