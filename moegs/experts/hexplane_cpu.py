"""The HexPlane feature on the CPU: every plane of every level sampled in one numba kernel.

``HexPlaneField`` on CPU took 20-40 ms (forward + backward, one thread) of a hexplane training step
at 8000 Gaussians in 12 ``grid_sample`` calls (their backward scatters channel by channel), the
column gathers that feed them and the products between them. Here all planes are copied once
per step into one flat buffer, channel-last ([H, W, F] each: the F channels of a corner are one
contiguous run, so gathers and scatters vectorise over channels); the forward writes the product
of each level's 6 samples straight into its columns of the [N, F * L] feature, and the backward,
from the same samples recomputed, gives

    d feat / d s_k = prod_{k' != k} s_k'    (the other 5 planes of the level),

(prefix times suffix products), the coordinate gradient as the dot product of that with the
sample's derivative along each pixel axis (sums over channels in fixed-order vector lanes,
`cpu_lanes`: a running sum stays scalar without reassociation, and that scalar chain made the
backward 5x the forward on an AVX2 Zen 3), and each plane's gradient as a scatter of its 4 corner
weights (one plane per thread: no two threads write one plane).

Sampling is ``grid_sample``'s bilinear, align_corners=True, padding_mode="border": pixel
x = (u + 1) / 2 (W - 1) clamped to [0, W - 1], with zero gradient where clamped (at the edges too).
Arithmetic is in the planes' dtype except the pixel positions (float64).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from moegs.raster.cpu_common import FASTMATH, as_numpy, compute_dtype
from moegs.raster.cpu_lanes import span_dot

# Points per prange iteration: per-thread scratch arrays are allocated once per chunk, not per point.
_CHUNK = 256


@njit(cache=True, inline="always")
def _corner(coord, size):
    """(first pixel, weight of the next one, d pixel / d coord) of a [-1, 1] coordinate on an axis
    of `size` pixels (align_corners, border clamp); the first pixel is at most size - 2."""
    scale = 0.5 * (size - 1)
    x = (float(coord) + 1.0) * scale
    grad = scale
    if not x > 0.0:  # NaN too: torch clamps it to 0
        x, grad = 0.0, 0.0
    elif x >= size - 1:
        x, grad = float(size - 1), 0.0
    x0 = min(int(np.floor(x)), size - 2)
    return x0, x - x0, grad


@njit(cache=True, inline="always")
def _locate(coords, i, table, axes, p, scratch):
    """Plane p's bilinear footprint at point i: the flat index of its top-left corner, the row
    stride, and in scratch[0:4] the corner weights (00, 01, 10, 11) in the planes' dtype, in
    scratch[4:8] wx, wy, 1 - wx, 1 - wy; returns (corner, row stride, dx/du, dy/dv)."""
    k = p % axes.shape[0]
    offset, h, w, f = table[p, 0], table[p, 1], table[p, 2], table[p, 3]
    x0, wx, gx = _corner(coords[i, axes[k, 0]], w)
    y0, wy, gy = _corner(coords[i, axes[k, 1]], h)
    scratch[0] = (1.0 - wx) * (1.0 - wy)
    scratch[1] = wx * (1.0 - wy)
    scratch[2] = (1.0 - wx) * wy
    scratch[3] = wx * wy
    scratch[4] = wx
    scratch[5] = wy
    scratch[6] = 1.0 - wx
    scratch[7] = 1.0 - wy
    return offset + (y0 * w + x0) * f, w * f, gx, gy


@njit(cache=True, inline="always")
def _rows(buf, base, row, f):
    """The footprint's two rows, 2 f values each (corners 00 01, then 10 11), as views: loops over
    range(f) of a view index it with provably non-negative indices, which numba vectorises (an
    index base + c might be negative as far as it knows, and the wraparound select is scalar)."""
    return buf[base:base + 2 * f], buf[base + row:base + row + 2 * f]


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _sample(buf, base, row, f, scratch, out):
    """out[:f] = the bilinear sample whose corner weights `_locate` left in scratch."""
    w00, w01, w10, w11 = scratch[0], scratch[1], scratch[2], scratch[3]
    top, bottom = _rows(buf, base, row, f)
    for c in range(f):
        out[c] = w00 * top[c] + w01 * top[f + c] + w10 * bottom[c] + w11 * bottom[f + c]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(coords, buf, table, axes, n_levels):
    """feat[N, F * L]: per level l, columns l*F..(l+1)*F hold the product of its planes' samples."""
    n, f, per_level = coords.shape[0], table[0, 3], axes.shape[0]
    out = np.empty((n, f * n_levels), buf.dtype)
    for chunk in prange((n + _CHUNK - 1) // _CHUNK):
        s = np.empty(f, buf.dtype)
        scratch = np.empty(8, buf.dtype)
        for i in range(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK)):
            for lv in range(n_levels):
                feat = out[i, lv * f:(lv + 1) * f]
                for k in range(per_level):
                    base, row, _, _ = _locate(coords, i, table, axes, lv * per_level + k, scratch)
                    _sample(buf, base, row, f, scratch, s)
                    for c in range(f):
                        feat[c] = s[c] if k == 0 else feat[c] * s[c]
    return out


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _level_backward(coords, i, buf, table, axes, lv, g, work, pixel_grads, scratch, grad_s, grad_coords):
    """Point i, level lv with dL/dfeat g [F]: writes dL/d sample of its planes into grad_s and adds
    dL/d coords into grad_coords[i]. work [3, 6, F] holds each plane's sample and its derivatives
    along the plane's two pixel axes, from one read of the corners; pixel_grads [6, 2] the pixel
    positions' derivatives; scratch [8 + F] the footprint weights and a running product."""
    f, per_level = table[0, 3], axes.shape[0]
    samples, d_u, d_v = work[0], work[1], work[2]
    for k in range(per_level):
        base, row, gx, gy = _locate(coords, i, table, axes, lv * per_level + k, scratch)
        w00, w01, w10, w11 = scratch[0], scratch[1], scratch[2], scratch[3]
        wx, wy, vx, vy = scratch[4], scratch[5], scratch[6], scratch[7]
        pixel_grads[k, 0] = gx
        pixel_grads[k, 1] = gy
        top, bottom = _rows(buf, base, row, f)
        s, du, dv = samples[k], d_u[k], d_v[k]
        for c in range(f):
            p00, p01, p10, p11 = top[c], top[f + c], bottom[c], bottom[f + c]
            s[c] = w00 * p00 + w01 * p01 + w10 * p10 + w11 * p11
            du[c] = vy * (p01 - p00) + wy * (p11 - p10)
            dv[c] = vx * (p10 - p00) + wx * (p11 - p01)
    # d feat / d s_k = g * prod_{k' != k} s_k': prefix products down the planes, then suffix
    # products up (2 products per plane and channel, not 5)
    run = scratch[8:8 + f]
    for c in range(f):
        run[c] = g[c]
    for k in range(per_level):
        gs, s = grad_s[lv * per_level + k, i], samples[k]
        for c in range(f):
            gs[c] = run[c]
            run[c] *= s[c]
    for c in range(f):
        run[c] = 1.0
    for k in range(per_level - 1, -1, -1):
        gs, s = grad_s[lv * per_level + k, i], samples[k]
        for c in range(f):
            gs[c] *= run[c]
            run[c] *= s[c]
        # d sample / d (u, v): the bilinear weights' derivatives, through the clamp
        grad_coords[i, axes[k, 0]] += span_dot(gs, d_u[k], f) * pixel_grads[k, 0]
        grad_coords[i, axes[k, 1]] += span_dot(gs, d_v[k], f) * pixel_grads[k, 1]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_samples(coords, buf, table, axes, n_levels, grad_feat):
    """dL/d sample [P, N, F] per plane and point, and dL/d coords [N, 4]."""
    n, f, per_level = coords.shape[0], table[0, 3], axes.shape[0]
    grad_s = np.empty((table.shape[0], n, f), buf.dtype)
    grad_coords = np.zeros((n, coords.shape[1]), buf.dtype)
    for chunk in prange((n + _CHUNK - 1) // _CHUNK):
        work = np.empty((3, per_level, f), buf.dtype)
        pixel_grads = np.empty((per_level, 2), np.float64)
        scratch = np.empty(8 + f, buf.dtype)
        for i in range(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK)):
            for lv in range(n_levels):
                g = grad_feat[i, lv * f:(lv + 1) * f]
                _level_backward(coords, i, buf, table, axes, lv, g, work, pixel_grads, scratch, grad_s, grad_coords)
    return grad_s, grad_coords


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_planes(coords, buf, table, axes, grad_s):
    """dL/d buf: per plane (one per thread), the scatter of grad_s by its corner weights."""
    n, f = coords.shape[0], table[0, 3]
    out = np.zeros_like(buf)
    for p in prange(table.shape[0]):
        scratch = np.empty(8, buf.dtype)
        for i in range(n):
            base, row, _, _ = _locate(coords, i, table, axes, p, scratch)
            w00, w01, w10, w11 = scratch[0], scratch[1], scratch[2], scratch[3]
            gs = grad_s[p, i]
            top, bottom = _rows(out, base, row, f)
            for c in range(f):
                top[c] += w00 * gs[c]
                top[f + c] += w01 * gs[c]
                bottom[c] += w10 * gs[c]
                bottom[f + c] += w11 * gs[c]
    return out


def _flat_planes(planes: tuple[Tensor, ...], dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The planes [1, F, H, W] channel-last in one flat array, and the table of (offset, H, W, F)."""
    flat = [p.detach()[0].permute(1, 2, 0).reshape(-1) for p in planes]
    sizes = np.array([0] + [t.numel() for t in flat], np.int64)
    table = np.array([(o, p.shape[2], p.shape[3], p.shape[1]) for o, p in zip(np.cumsum(sizes)[:-1], planes)], np.int64)
    return as_numpy(torch.cat(flat), dtype), table


class HexPlaneCPU(torch.autograd.Function):
    """feat [N, F * L] from coords [N, 4] in [-1, 1] and L levels of planes [1, F, H, W] (len(axes)
    per level, plane k sampled at coords (axes[k, 0], axes[k, 1])); differentiable in coords and planes."""

    @staticmethod
    def forward(ctx, coords: Tensor, axes: np.ndarray, n_levels: int, *planes: Tensor) -> Tensor:
        dtype = compute_dtype(coords)
        coords_np = as_numpy(coords, dtype)
        buf, table = _flat_planes(planes, dtype)
        ctx.saved = (coords_np, buf, table, axes, n_levels)
        ctx.dtype = coords.dtype
        return torch.from_numpy(_forward(coords_np, buf, table, axes, n_levels)).to(coords.dtype)

    @staticmethod
    def backward(ctx, grad_feat: Tensor):
        coords_np, buf, table, axes, n_levels = ctx.saved
        grad_np = as_numpy(grad_feat, torch.from_numpy(buf[:0]).dtype)
        grad_s, grad_coords = _backward_samples(coords_np, buf, table, axes, n_levels, grad_np)
        grad_buf = torch.from_numpy(_backward_planes(coords_np, buf, table, axes, grad_s)).to(ctx.dtype)
        plane_grads = []
        for offset, h, w, f in table.tolist():
            plane_grads.append(grad_buf[offset:offset + h * w * f].view(1, h, w, f).permute(0, 3, 1, 2))
        return (torch.from_numpy(grad_coords).to(ctx.dtype), None, None, *plane_grads)
