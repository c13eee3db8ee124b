"""The `cpu` backend: numba kernels for compositing forward and backward, parallel over tiles.

The kernels see only projected quantities (means2d, conics, opacities, features with the depth
channel appended) wrapped in one torch.autograd.Function, so the projection stays outside and
the gradient on means2d (densification's screen-space gradient) comes out of autograd for free.

Forward stores, per pixel and per set, the final transmittance and the list position just past
the last composited Gaussian; backward walks each tile list back to front (as 3DGS does),
recovering T_i = T_{i+1} / (1 - alpha_i). Each Gaussian carries a set index and every pixel keeps
K transmittances, so the multi-expert pass is the same kernel. Gradients are accumulated per
tile-list entry (one writer per entry, no races) and summed per Gaussian afterwards. When only
the features need a gradient (the router over frozen experts), backward is instead the forward's
front-to-back walk summing w_p dL/dacc_p (`_feature_grad_kernel`): about 0.6x the full backward.

Arithmetic is in the caller's dtype (float32 in training, like the torch reference; float64 for
gradcheck): numba compiles one specialisation per dtype, and the constants come in an array of
that dtype because a float64 literal would promote float32 arithmetic to float64.

Speed comes from SIMD: the loops are Gaussian-major, and each tile-list entry, in list order,
updates the pixels of its tile within its {alpha >= 1/255} ellipse's rows and 8-column tile
halves (entries whose ellipse misses the tile are skipped) as one branch-free loop over them:
every test is a select and per-pixel state lives in tile-local arrays, so LLVM vectorises it.
libm's exp would stop that, so `_exp_neg` evaluates exp on [-10, 0] with Cody-Waite reduction,
a Taylor polynomial of degree 7 in float32 (8.6e-8 relative, as exact as libm's expf) and 12 in
float64 (5e-16), and 2^-n built from its exponent bits. The same code is fast on AVX2 (8 float32
lanes, 16 registers) and AVX-512: tile state in one buffer (no run-time alias checks), tags and
counts in the compute dtype (no int64 lanes), no select chains, and conditional state updates as
selects (masked stores) only where masked stores are cheap (`FAST_MASKED_STORES`: AVX-512), as
exact 0/1-mask arithmetic elsewhere (AVX2's vmaskmovps store is microcoded on AMD: the AVX2
backward took 1.4x as long with it on the demo scene). fastmath allows only
contraction (fused multiply-adds), never reassociation (cached and fresh code then differed)
nor finite-math assumptions. A running sum would then keep its loop scalar, so no pixel loop has
one: the backward's per-entry sums over a span (gradient moments, feature dot products, the
contributions) are `cpu_lanes` vector intrinsics in a fixed order, and the saturation count adds
exact 0/1 values (`_count`). Measured on 2 cores at 256x192 with 20k Gaussians: `python -m moegs.raster.bench`;
AVX2 code is generated on any x86 machine with NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""
(the name alone keeps the host's AVX-512 features).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from moegs.errors import InputError
from moegs.raster.cpu_common import FAST_MASKED_STORES, FASTMATH, as_numpy, compute_dtype, threads_for
from moegs.raster.cpu_lanes import lane_dot, lane_sum
from moegs.raster.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, TileBins

# Below this many tile-list entries (~ a 64x48 image of a few hundred Gaussians) one thread is faster.
_PARALLEL_MIN_ISECT = 4096
# `_ellipses` takes a few ns per Gaussian: below this many, waking the pool costs more than it saves.
_PARALLEL_MIN_GAUSSIANS = 50_000
# Tile-local arrays hold the left and right 8 columns of a tile as two row-major blocks, so an
# entry whose ellipse stays in one half visits only rows x 8 pixels (a third fewer in all).
_HALF = TILE // 2
_NPIX = TILE * TILE
# Per-set tile state: one buffer of fields _NPIX long at these offsets (see `_composite_span`).
# Tags ("last": list position + 1) are stored in the compute dtype, exact below 2^24 entries per
# tile even in float32 (`_MAX_TILE_ENTRIES`).
_XS, _YS, _TRANS, _LAST, _W = (f * _NPIX for f in range(5))
_DONE = 5 * _NPIX  # forward: 1 where the pixel saturated (or lies outside the image)
_FWD_FIELDS = 6
_REST, _FG = 5 * _NPIX, 6 * _NPIX  # backward: sum of later terms; f . dL/dacc of the current entry
_TERMS = 7 * _NPIX  # backward: the current entry's 6 per-pixel gradient terms, summed by `lane_sum`
_BWD_FIELDS = 13
_MAX_TILE_ENTRIES = 2**24
# Slack on the power below which alpha < 1/255: far above float32 rounding of power (~1e-6).
_BOUND_MARGIN = 1e-4
# exp(x) = 2^-n exp(r), n = round(-x log2 e) <= 15 for x >= -10; ln 2 split so n * _LN2_HI is exact.
_EXP_CLAMP = -10.0
_LN2_HI = 0.693359375
_LN2_LO = math.log(2.0) - _LN2_HI
# Taylor degree of exp(r) on |r| <= ln(2) / 2: the remainder r^(d+1) / (d+1)! is 7e-9 for d = 7
# (below float32's half ulp, 6e-8) and 6e-16 for d = 12 (float64, for gradcheck).
_TAYLOR_DEGREE = 12


def _consts(dtype: np.dtype) -> np.ndarray:
    """The kernels' constants in the compute dtype (see the module docstring): compositing
    (0.5, 1, ALPHA_MIN, ALPHA_MAX, T_MIN), then `_exp_neg`'s (clamp, log2 e, ln2 hi, ln2 lo,
    1/12!, ..., 1/1!)."""
    taylor = [1.0 / math.factorial(k) for k in range(_TAYLOR_DEGREE, 0, -1)]
    return np.array(
        [0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN, _EXP_CLAMP, 1.0 / math.log(2.0), _LN2_HI, _LN2_LO] + taylor,
        dtype,
    )


@njit(cache=True)
def _exp_tuple(consts):
    """`_exp_neg`'s constants as a tuple: scalars in registers, so a row loop that reads them
    needs no loads (loads from an array it might alias would block vectorisation)."""
    return (
        consts[5], consts[6], consts[7], consts[8], consts[9], consts[10], consts[11], consts[12],
        consts[13], consts[14], consts[15], consts[16], consts[17], consts[18], consts[19], consts[20],
        consts[1], consts[0],
    )


@intrinsic
def _times_pow2_neg(typingctx, y, n):
    """y * 2^-n for an integer-valued n in [0, 126] of y's float type: 2^-n is built from its
    exponent bits (convert, shift, bit cast), which vectorises on AVX2 and AVX-512 alike, where a
    chain of selects cost ~16 instructions per value. The conversion goes through int32 because
    AVX2 has no packed float64 -> int64 conversion."""
    if not isinstance(y, types.Float) or y != n:
        return None

    def codegen(context, builder, signature, args):
        value, count = args
        bits = ir.IntType(y.bitwidth)
        bias, shift = (127, 23) if y.bitwidth == 32 else (1023, 52)
        k = builder.fptosi(count, ir.IntType(32))
        if y.bitwidth == 64:
            k = builder.sext(k, bits)
        exponent = builder.shl(builder.sub(ir.Constant(bits, bias), k), ir.Constant(bits, shift))
        return builder.fmul(value, builder.bitcast(exponent, context.get_value_type(y)))

    return y(y, n), codegen


def _exp_poly(r, ec):
    """exp(r) for |r| <= ln(2) / 2 as a Taylor polynomial whose degree suits r's dtype (numba only)."""
    raise TypeError("_exp_poly runs inside numba kernels only")


@overload(_exp_poly, inline="always", jit_options={"fastmath": FASTMATH})
def _exp_poly_numba(r, ec):
    if isinstance(r, types.Float) and r.bitwidth == 32:

        def degree_7(r, ec):  # ec[9] = 1/7!
            y = ec[9] * r + ec[10]
            y = y * r + ec[11]
            y = y * r + ec[12]
            y = y * r + ec[13]
            y = y * r + ec[14]
            y = y * r + ec[15]
            return y * r + ec[16]

        return degree_7

    def degree_12(r, ec):  # ec[4] = 1/12!
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
        return y * r + ec[16]

    return degree_12


@njit(cache=True, fastmath=FASTMATH)
def _exp_neg(x, ec):
    """exp(x) for x in [-10, 0] (clamped to it) without a libm call, so pixel loops vectorise.

    Written out in full: a loop over the tuple here would keep the caller's loop scalar."""
    one = ec[16]
    zero = one - one
    x = min(max(x, ec[0]), zero)
    n = np.floor(-x * ec[1] + ec[17])  # round(-x / ln 2), 0..15
    r = x + n * ec[2] + n * ec[3]  # x + n ln 2, in [-0.35, 0.35]
    return _times_pow2_neg(_exp_poly(r, ec), n)


@njit(cache=True, fastmath={"contract", "nsz", "reassoc"})
def _count(total, flag):
    """total + flag for 0/1 counts in a float dtype: sums of small integers are exact in any order,
    so this one addition may be reassociated, which lets LLVM vectorise the loop that counts."""
    return total + flag


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


@njit(cache=True)
def _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses):
    """Contiguous copies of one tile's Gaussians (the inner loops then stream through memory):
    g = (mx, my, a, b, c, opacity, power bound, list position j) in the compute dtype, half extents
    (width, height) of the ellipses in float64."""
    d = feats.shape[1]
    g = np.empty((n, 8), feats.dtype)
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
        g[j, 7] = j
        half[j, 0] = ellipses[gid, 1]
        half[j, 1] = ellipses[gid, 2]
        s[j] = set_ids[gid]
        for c in range(d):
            f[j, c] = feats[gid, c]
    return g, half, f, s


@njit(cache=True)
def _pixel_range(centre, half, lo, end):
    """Pixels [r0, r1) (rows or columns) within [lo, end) whose centres r + 0.5 lie in centre +- half."""
    p0 = max(float(lo), np.ceil(centre - half - 0.5))
    p1 = min(float(end - 1), np.floor(centre + half - 0.5))
    if p1 < p0:
        return 0, 0
    return int(p0), int(p1) + 1


@njit(cache=True)
def _slot(ly, lx):
    """Where tile pixel (row ly, column lx) lives in the tile-local arrays: the left 8 columns,
    row-major, then the right 8 (see `_HALF`)."""
    return (lx // _HALF) * (TILE * _HALF) + ly * _HALF + lx % _HALF


@njit(cache=True)
def _init_state(state, x0, y0, n_fields, n_sets, one):
    """Per set: the pixel centres in `_slot` order (in the compute dtype: an int + float32 sum
    would be float64), transmittance 1 and last 0; other fields are left to the caller."""
    for k in range(n_sets):
        v = state[k * n_fields * _NPIX:]
        for ly in range(TILE):
            for lx in range(TILE):
                p = _slot(ly, lx)
                v[_XS + p] = x0 + lx + 0.5
                v[_YS + p] = y0 + ly + 0.5
                v[_TRANS + p] = one
                v[_LAST + p] = one - one


@njit(cache=True)
def _tile_box(t, tiles_x, width, height):
    """Tile t's first column and row, its width in the image (partial at the right edge) and the
    row past its last one in the image."""
    x0 = (t % tiles_x) * TILE
    y0 = (t // tiles_x) * TILE
    return x0, y0, min(x0 + TILE, width) - x0, min(y0 + TILE, height)


@njit(cache=True)
def _open_tile(it, order, offsets, gids, means2d, conics, opac, feats, set_ids, ellipses, tiles_x, width, height):
    """The it-th tile of the schedule: its first list entry and entry count, the gathered
    Gaussians of `_gather_tile` and the box of `_tile_box`."""
    t = order[it]
    start = offsets[t]
    n = offsets[t + 1] - start
    g, half, f, s = _gather_tile(gids, start, n, means2d, conics, opac, feats, set_ids, ellipses)
    x0, y0, m, y_end = _tile_box(t, tiles_x, width, height)
    return start, n, g, half, f, s, x0, y0, m, y_end


@njit(cache=True)
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


@njit(cache=True, fastmath=FASTMATH)
def _composite_span(v, n, mx, my, a, b, c, o, bound, tag, consts, ec):
    """Composite one Gaussian into n consecutive tile pixels (whole rows): v is the set's state
    from the span's first pixel on (fields at the constant offsets `_XS`..`_DONE`). Sets
    w[p] = alpha_p T_p (0 where it is not composited), updates T, the saturation flags and last;
    returns how many pixels saturated.

    One buffer with fields at compile-time offsets, rather than one array per field, spares the
    pairwise run-time alias checks LLVM puts before a vector loop over several arrays (they made
    short spans cost 3-5x per pixel). The loop runs over range(n) of a view: a range(p0, p1) index
    might be negative as far as numba knows, and its wraparound select keeps the loop scalar."""
    half, one, alpha_min, alpha_max, t_min = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero = one - one
    n_sat = zero  # counted in the compute dtype: an int64 count halves the vector width on AVX2
    for p in range(n):
        dx = mx - v[_XS + p]
        dy = my - v[_YS + p]
        power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
        raw = o * _exp_neg(power, ec)
        alpha = raw if raw < alpha_max else alpha_max
        t_now = v[_TRANS + p]
        t_next = t_now * (one - alpha)
        ok = (power <= zero) & (power >= bound) & (alpha >= alpha_min) & (v[_DONE + p] == zero)
        sat = ok & (t_next < t_min)
        use = ok & (t_next >= t_min)
        if FAST_MASKED_STORES:  # "x if c else v[...]" becomes a masked store (see cpu_common)
            v[_W + p] = alpha * t_now if use else zero
            v[_TRANS + p] = t_next if use else t_now
            v[_LAST + p] = tag if use else v[_LAST + p]
            v[_DONE + p] = one if sat else v[_DONE + p]
            n_sat = _count(n_sat, one if sat else zero)
        else:  # the same as exact arithmetic with 0/1 masks: plain stores
            u = one if use else zero
            s = one if sat else zero
            v[_W + p] = alpha * t_now * u
            v[_TRANS + p] = t_now * (one - alpha * u)
            v[_LAST + p] += (tag - v[_LAST + p]) * u
            v[_DONE + p] += (one - v[_DONE + p]) * s
            n_sat = _count(n_sat, s)
    return int(n_sat)


@njit(cache=True)
def _forward_state(x0, y0, m, y_end, n_sets, one, dtype):
    """Per-set compositing state of a tile in `_slot` order; pixels outside the image start
    saturated, so they are never composited nor counted."""
    zero = one - one
    state = np.empty(n_sets * _FWD_FIELDS * _NPIX, dtype)
    _init_state(state, x0, y0, _FWD_FIELDS, n_sets, one)
    for k in range(n_sets):
        v = state[k * _FWD_FIELDS * _NPIX:]
        for p in range(_NPIX):
            v[_DONE + p] = one
        for ly in range(y_end - y0):
            for i in range(m):
                v[_DONE + _slot(ly, i)] = zero
    return state


@njit(cache=True)
def _tile_pixels(image, n_sets, x0, y0, m, y_end, dtype):
    """The tile's pixels of the first n_sets images of image [K, H, W, C] as [n_sets, C, _NPIX]
    in `_slot` order (each channel a contiguous span, as the lane sums read it), 0 outside the image."""
    out = np.zeros((n_sets, image.shape[3], _NPIX), dtype)
    for k in range(n_sets):
        for ly in range(y_end - y0):
            for i in range(m):
                for ch in range(image.shape[3]):
                    out[k, ch, _slot(ly, i)] = image[k, y0 + ly, x0 + i, ch]
    return out


@njit(parallel=True, cache=True, error_model="numpy", fastmath=FASTMATH)
def _forward_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, contrib_weight, want_contrib, out_acc, out_trans, out_last, out_contrib,
):
    """out_acc[K,H,W,D], out_trans[K,H,W], out_last[K,H,W] (int32) are fully written for every
    non-empty tile (preset them for the empty ones: 0, 1, 0); out_contrib[n_isect] preset to 0, from
    the pixel weights contrib_weight [K, H, W, 1] (read only when want_contrib)."""
    d = feats.shape[1]
    one = consts[1]
    zero = one - one
    ec = _exp_tuple(consts)
    for it in prange(order.shape[0]):
        start, n, g, half, f, s, x0, y0, m, y_end = _open_tile(
            it, order, offsets, gids, means2d, conics, opac, feats, set_ids, ellipses, tiles_x, width, height)
        state = _forward_state(x0, y0, m, y_end, n_sets, one, feats.dtype)
        acc = np.zeros((n_sets, d, _NPIX), feats.dtype)
        weight = _tile_pixels(contrib_weight, n_sets if want_contrib else 0, x0, y0, m, y_end, feats.dtype)
        alive = n_sets * m * (y_end - y0)  # (set, pixel) pairs not yet saturated
        for j in range(n):
            h0, h1, q0, q1 = _entry_spans(g, half, j, x0, y0, m, y_end)
            if h1 < h0:
                continue
            k, bound = s[j], g[j, 6]
            tag = g[j, 7] + one
            contrib = zero
            for hf in range(h0, h1 + 1):
                p0 = hf * TILE * _HALF + q0
                v = state[k * _FWD_FIELDS * _NPIX + p0:]
                alive -= _composite_span(
                    v, q1 - q0, g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5], bound, tag, consts, ec,
                )
                w_span = v[_W:_W + q1 - q0]
                for ch in range(d):
                    fj = f[j, ch]
                    acc_span = acc[k, ch, p0:p0 + q1 - q0]
                    for q in range(q1 - q0):
                        acc_span[q] += w_span[q] * fj
                if want_contrib:
                    contrib += lane_dot(w_span, weight[k, 0, p0:], q1 - q0)
            if want_contrib:
                out_contrib[start + j] = contrib
            if alive == 0:
                break
        for k in range(n_sets):
            v = state[k * _FWD_FIELDS * _NPIX:]
            for ly in range(y_end - y0):
                for i in range(m):
                    p = _slot(ly, i)
                    out_trans[k, y0 + ly, x0 + i] = v[_TRANS + p]
                    out_last[k, y0 + ly, x0 + i] = int(v[_LAST + p])
                    for ch in range(d):
                        out_acc[k, y0 + ly, x0 + i, ch] = acc[k, ch, p]


@njit(parallel=True, cache=True, error_model="numpy", fastmath=FASTMATH)
def _feature_grad_kernel(
    means2d, conics, opac, feats, set_ids, offsets, gids, order, width, height, tiles_x, n_sets,
    ellipses, consts, grad_acc, out_grad,
):
    """out_grad[n_isect, D] (preset to 0): dL/d(features) per tile-list entry when nothing else
    needs a gradient (the router: frozen geometry). d acc_p / d f_j = w_pj = alpha_pj T_pj, so this
    is the forward's front-to-back walk (same `_composite_span`, same early exit) summing
    w_pj dL/dacc_p, without the backward's recovery of T and its geometry terms."""
    d = feats.shape[1]
    one = consts[1]
    ec = _exp_tuple(consts)
    for it in prange(order.shape[0]):
        start, n, g, half, _, s, x0, y0, m, y_end = _open_tile(
            it, order, offsets, gids, means2d, conics, opac, feats, set_ids, ellipses, tiles_x, width, height)
        state = _forward_state(x0, y0, m, y_end, n_sets, one, feats.dtype)
        g_acc = _tile_pixels(grad_acc, n_sets, x0, y0, m, y_end, feats.dtype)
        alive = n_sets * m * (y_end - y0)
        for j in range(n):
            h0, h1, q0, q1 = _entry_spans(g, half, j, x0, y0, m, y_end)
            if h1 < h0:
                continue
            k, bound = s[j], g[j, 6]
            tag = g[j, 7] + one
            out = out_grad[start + j]
            for hf in range(h0, h1 + 1):
                p0 = hf * TILE * _HALF + q0
                v = state[k * _FWD_FIELDS * _NPIX + p0:]
                alive -= _composite_span(
                    v, q1 - q0, g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5], bound, tag, consts, ec,
                )
                w_span = v[_W:_W + q1 - q0]
                for ch in range(d):
                    out[ch] += lane_dot(w_span, g_acc[k, ch, p0:], q1 - q0)
            if alive == 0:
                break


@njit(cache=True, fastmath=FASTMATH)
def _backprop_span(v, n, mx, my, a, b, c, o, bound, j, consts, ec):
    """One Gaussian's gradient terms from n consecutive tile pixels (v as in `_composite_span`,
    fields `_XS`..`_TERMS`), walking back to front: recovers its T_p (updating T and rest), sets
    w[p] = alpha_p T_p (0 where not composited) and returns the sums of d/d(mx, my, a, b, c, opacity)."""
    half, one, alpha_min, alpha_max = consts[0], consts[1], consts[2], consts[3]
    zero = one - one
    # d/d(mx, my, a, b, c) are linear in the moments of d_power over (dx, dy): the per-pixel terms
    # go to the `_TERMS` fields (so this loop has no running sums and vectorises) and `lane_sum` adds
    # them; the conic is applied to the moments afterwards (half the multiplies per pixel)
    for p in range(n):
        dx = mx - v[_XS + p]
        dy = my - v[_YS + p]
        power = -half * (a * dx * dx + c * dy * dy) - b * dx * dy
        gauss = _exp_neg(power, ec)
        raw = o * gauss
        alpha = raw if raw < alpha_max else alpha_max
        used = (j < v[_LAST + p]) & (power <= zero) & (power >= bound) & (alpha >= alpha_min)
        inv = one / (one - alpha)
        t_after = v[_TRANS + p]
        t_i = t_after * inv
        w = alpha * t_i
        r = v[_REST + p]
        fg = v[_FG + p]
        d_alpha = t_i * fg - r * inv
        if FAST_MASKED_STORES:  # T and rest change only where used (see `_composite_span`)
            v[_TRANS + p] = t_i if used else t_after
            v[_REST + p] = r + w * fg if used else r
            v[_W + p] = w if used else zero
        else:
            u = one if used else zero
            v[_TRANS + p] = t_i * u + t_after * (one - u)
            v[_REST + p] = r + w * fg * u
            v[_W + p] = w * u
        smooth = used & (raw <= alpha_max)  # alpha = o * gauss, not the 0.99 clamp
        d_power = alpha * d_alpha if smooth else zero
        dp_x = d_power * dx
        v[_TERMS + p] = dp_x
        v[_TERMS + _NPIX + p] = d_power * dy
        v[_TERMS + 2 * _NPIX + p] = dp_x * dx
        v[_TERMS + 3 * _NPIX + p] = dp_x * dy
        v[_TERMS + 4 * _NPIX + p] = d_power * dy * dy
        v[_TERMS + 5 * _NPIX + p] = gauss * d_alpha if smooth else zero
    s_x = lane_sum(v[_TERMS:], n)
    s_y = lane_sum(v[_TERMS + _NPIX:], n)
    s_xx = lane_sum(v[_TERMS + 2 * _NPIX:], n)
    s_xy = lane_sum(v[_TERMS + 3 * _NPIX:], n)
    s_yy = lane_sum(v[_TERMS + 4 * _NPIX:], n)
    g_opac = lane_sum(v[_TERMS + 5 * _NPIX:], n)
    return -(a * s_x + b * s_y), -(b * s_x + c * s_y), -half * s_xx, -s_xy, -half * s_yy, g_opac


@njit(parallel=True, cache=True, error_model="numpy", fastmath=FASTMATH)
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
        start, n, g, half, f, s, x0, y0, m, y_end = _open_tile(
            it, order, offsets, gids, means2d, conics, opac, feats, set_ids, ellipses, tiles_x, width, height)
        # per-set state in `_slot` order; rest = sum_{j>i} w_j (f_j . dL/dacc) + T_final dL/dT_final;
        # pixels outside the image keep last = 0, so no entry is ever used there
        state = np.empty(n_sets * _BWD_FIELDS * _NPIX, feats.dtype)
        _init_state(state, x0, y0, _BWD_FIELDS, n_sets, one)
        g_acc = np.zeros((n_sets, d, _NPIX), feats.dtype)
        j_end = 0
        for k in range(n_sets):
            v = state[k * _BWD_FIELDS * _NPIX:]
            for p in range(_NPIX):
                v[_REST + p] = zero
            for ly in range(y_end - y0):
                for i in range(m):
                    p = _slot(ly, i)
                    t_final = trans_final[k, y0 + ly, x0 + i]
                    v[_TRANS + p] = t_final
                    v[_REST + p] = t_final * grad_trans[k, y0 + ly, x0 + i]
                    v[_LAST + p] = last_final[k, y0 + ly, x0 + i]
                    j_end = max(j_end, last_final[k, y0 + ly, x0 + i])
                    for ch in range(d):
                        g_acc[k, ch, p] = grad_acc[k, y0 + ly, x0 + i, ch]
        for j in range(j_end - 1, -1, -1):
            h0, h1, q0, q1 = _entry_spans(g, half, j, x0, y0, m, y_end)
            if h1 < h0:
                continue
            k, bound = s[j], g[j, 6]
            out = out_grad[start + j]  # preset to 0; the halves add up
            for hf in range(h0, h1 + 1):
                p0 = hf * TILE * _HALF + q0
                v = state[k * _BWD_FIELDS * _NPIX + p0:]
                fg_span = v[_FG:_FG + q1 - q0]
                for q in range(q1 - q0):
                    fg_span[q] = zero
                for ch in range(d):
                    fj = f[j, ch]
                    g_span = g_acc[k, ch, p0:p0 + q1 - q0]
                    for q in range(q1 - q0):
                        fg_span[q] += fj * g_span[q]
                sums = _backprop_span(
                    v, q1 - q0, g[j, 0], g[j, 1], g[j, 2], g[j, 3], g[j, 4], g[j, 5], bound,
                    g[j, 7], consts, ec,
                )
                for q in range(6):
                    out[q] += sums[q]
                w_span = v[_W:_W + q1 - q0]
                for ch in range(d):
                    out[6 + ch] += lane_dot(w_span, g_acc[k, ch, p0:], q1 - q0)


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
        longest = int(np.diff(arrays[5]).max(initial=0))
        if longest >= _MAX_TILE_ENTRIES:
            raise InputError(f"one 16x16 tile holds {longest} Gaussians; the cpu backend takes at most {_MAX_TILE_ENTRIES - 1}")
        consts = _consts(arrays[3].dtype)
        d = features.shape[1]
        acc = np.zeros((n_sets, height, width, d), consts.dtype)
        trans = np.ones((n_sets, height, width), consts.dtype)
        last = np.zeros((n_sets, height, width), np.int32)
        n_isect = arrays[6].shape[0]
        want_contrib = contrib_weight is not None
        contrib_isect = np.zeros(n_isect if want_contrib else 0, consts.dtype)
        weight = as_numpy(contrib_weight, dtype)[..., None] if want_contrib else np.zeros((1, 1, 1, 1), consts.dtype)
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
        if not any(ctx.needs_input_grad[:3]):  # frozen geometry (the router): the features' walk alone
            per_entry = np.zeros((gids_np.shape[0], d), feats_np.dtype)
            with threads_for(gids_np.shape[0], _PARALLEL_MIN_ISECT, chunksize=1):
                _feature_grad_kernel(*ctx.arrays, width, height, tiles_x, n_sets, ctx.ellipses, ctx.consts, g_acc, per_entry)
            grads = torch.from_numpy(_sum_per_gaussian(gids_np, per_entry, n)).to(device=ctx.device, dtype=ctx.dtype)
            return None, None, None, grads, None, None, None, None, None, None
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
