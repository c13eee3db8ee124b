"""EWA projection for the `cpu` backend: one numba kernel forward, one analytic backward.

Same contract and values as ``projection.project_gaussians``. The torch version spends most of its
time launching many tiny ops (and autograd recording them) over [N, 3, 3] batches; here each
Gaussian is one loop iteration with its 3x3 matrices held in registers as 9-tuples.

Forward saves only the inputs; backward recomputes the per-Gaussian intermediates (cheaper than
storing and reloading them) and applies the chain rule by hand:

    conic = (c, -b, a) / det  <-  cov2d = V V^T + 0.3 I  <-  V = J W,  W = Rw R(q / |q|) diag(s),

with J the EWA Jacobian at the camera point (x/z, y/z clamped to the widened frustum, so a clamped
coordinate only moves J through z), and means2d = (fx x / z + cx, fy y / z + cy). Out-of-range
Gaussians use z = 1 in J and means2d exactly as the torch code does, so their values and gradients
are finite and equal to torch autograd's. cov2d is formed as V V^T rather than J (Rw Sigma Rw^T) J^T:
the same matrix in exact arithmetic, with fewer roundings.

Speed comes from letting LLVM vectorise the loop over Gaussians (AVX-512 where the CPU has it):
each prange iteration copies a block of _BLOCK Gaussians from the [N, k] tensors into a local
structure-of-arrays buffer (rows at compile-time-constant offsets), runs the math over the block,
and copies the results out. Indexing the [N, k] arrays directly inside the math loop keeps it
scalar (LLVM cannot rule out aliasing with a runtime row stride), ~8x slower here; constants are
unpacked to scalars before the loop for the same reason.

Arithmetic is in float64 for float64 means (gradcheck) and float32 otherwise: numba compiles one
specialisation per dtype, and the constants come in an array of that dtype because a float64
literal (or an int) would promote float32 arithmetic to float64.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from moegs.raster.cpu_common import as_numpy, compute_dtype, threads_for
from moegs.raster.projection import _FRUSTUM_SLACK, EPS2D, Projected, project_gaussians

# Below this many Gaussians one thread is faster: forward + backward take ~10 ns per Gaussian, while
# waking the pool (OMP_WAIT_POLICY=PASSIVE) costs ~50 us per kernel; measured crossover on 2 cores.
_PARALLEL_MIN_GAUSSIANS = 50_000
# quat_to_rotmat's floor on the quaternion norm.
_QUAT_NORM_MIN = 1e-12

# Layout of the constants array (compute dtype).
_FX, _FY, _CX, _CY, _LXN, _LXP, _LYN, _LYP, _NEAR, _FAR, _EPS, _W, _H, _QMIN, _HALF, _ONE, _TWO, _THREE = range(18)
# Gaussians per block buffer; a compile-time constant, so the rows of a buffer lie at constant offsets.
_BLOCK = 512


@njit(cache=True, error_model="numpy")
def _matmul3(a, b):
    """a @ b for row-major 3x3 matrices held as 9-tuples (no allocation)."""
    return (
        a[0] * b[0] + a[1] * b[3] + a[2] * b[6],
        a[0] * b[1] + a[1] * b[4] + a[2] * b[7],
        a[0] * b[2] + a[1] * b[5] + a[2] * b[8],
        a[3] * b[0] + a[4] * b[3] + a[5] * b[6],
        a[3] * b[1] + a[4] * b[4] + a[5] * b[7],
        a[3] * b[2] + a[4] * b[5] + a[5] * b[8],
        a[6] * b[0] + a[7] * b[3] + a[8] * b[6],
        a[6] * b[1] + a[7] * b[4] + a[8] * b[7],
        a[6] * b[2] + a[7] * b[5] + a[8] * b[8],
    )


@njit(cache=True, error_model="numpy")
def _matmul3_tn(a, b):
    """a^T @ b for row-major 3x3 matrices held as 9-tuples."""
    return (
        a[0] * b[0] + a[3] * b[3] + a[6] * b[6],
        a[0] * b[1] + a[3] * b[4] + a[6] * b[7],
        a[0] * b[2] + a[3] * b[5] + a[6] * b[8],
        a[1] * b[0] + a[4] * b[3] + a[7] * b[6],
        a[1] * b[1] + a[4] * b[4] + a[7] * b[7],
        a[1] * b[2] + a[4] * b[5] + a[7] * b[8],
        a[2] * b[0] + a[5] * b[3] + a[8] * b[6],
        a[2] * b[1] + a[5] * b[4] + a[8] * b[7],
        a[2] * b[2] + a[5] * b[5] + a[8] * b[8],
    )


@njit(cache=True, error_model="numpy")
def _dot3(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


@njit(cache=True, error_model="numpy")
def _unpack(cam, consts):
    """Rw and t as tuples, and the constants the loop body uses as scalars (hoisted out of the loop:
    a load from an array inside it could alias an output store and blocks vectorisation)."""
    rw = (cam[0], cam[1], cam[2], cam[3], cam[4], cam[5], cam[6], cam[7], cam[8])
    t = (cam[9], cam[10], cam[11])
    frustum = (
        consts[_FX], consts[_FY], consts[_LXN], consts[_LXP], consts[_LYN], consts[_LYP], consts[_NEAR], consts[_FAR]
    )  # fmt: skip
    return rw, t, frustum


@njit(cache=True, error_model="numpy")
def _camera(p, j, rw, t, frustum, one):
    """Camera point (x, y, z), whether z is in [near, far], the safe z (1 when not), the EWA Jacobian
    entries (j00, j02, j11, j12), and whether x/z and y/z lie strictly inside the frustum clamp."""
    fx, fy, lxn, lxp, lyn, lyp, near, far = frustum
    mx, my, mz = p[0 * _BLOCK + j], p[1 * _BLOCK + j], p[2 * _BLOCK + j]
    x = rw[0] * mx + rw[1] * my + rw[2] * mz + t[0]
    y = rw[3] * mx + rw[4] * my + rw[5] * mz + t[1]
    z = rw[6] * mx + rw[7] * my + rw[8] * mz + t[2]
    in_range = (z >= near) & (z <= far)
    zs = z if in_range else one
    ux, uy = x / zs, y / zs
    tx = zs * min(max(ux, -lxn), lxp)
    ty = zs * min(max(uy, -lyn), lyp)
    zz = zs * zs
    jac = (fx / zs, -fx * tx / zz, fy / zs, -fy * ty / zz)
    return (x, y, z), in_range, zs, jac, (ux > -lxn) & (ux < lxp), (uy > -lyn) & (uy < lyp)


@njit(cache=True, error_model="numpy")
def _rotation(p, j, qmin, one, two):
    """Unit quaternion (w, x, y, z), the norm it was divided by, and R as a 9-tuple (quat_to_rotmat)."""
    qw, qx, qy, qz = p[3 * _BLOCK + j], p[4 * _BLOCK + j], p[5 * _BLOCK + j], p[6 * _BLOCK + j]
    norm = max(np.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), qmin)
    w, x, y, z = qw / norm, qx / norm, qy / norm, qz / norm
    rot = (
        one - two * (y * y + z * z), two * (x * y - w * z), two * (x * z + w * y),
        two * (x * y + w * z), one - two * (x * x + z * z), two * (y * z - w * x),
        two * (x * z - w * y), two * (y * z + w * x), one - two * (x * x + y * y),
    )  # fmt: skip
    return (w, x, y, z), norm, rot


@njit(cache=True, error_model="numpy")
def _cov_factors(p, j, rw, rot, jac):
    """W = Rw R diag(s) [3x3] (camera covariance W W^T) and the rows V0, V1 of V = J W, so that
    cov2d = V V^T before dilation."""
    s0, s1, s2 = p[7 * _BLOCK + j], p[8 * _BLOCK + j], p[9 * _BLOCK + j]
    m = (
        rot[0] * s0, rot[1] * s1, rot[2] * s2,
        rot[3] * s0, rot[4] * s1, rot[5] * s2,
        rot[6] * s0, rot[7] * s1, rot[8] * s2,
    )  # fmt: skip
    w = _matmul3(rw, m)
    j00, j02, j11, j12 = jac
    v0 = (j00 * w[0] + j02 * w[6], j00 * w[1] + j02 * w[7], j00 * w[2] + j02 * w[8])
    v1 = (j11 * w[3] + j12 * w[6], j11 * w[4] + j12 * w[7], j11 * w[5] + j12 * w[8])
    return (s0, s1, s2), w, v0, v1


@njit(cache=True, error_model="numpy")
def _gather(buf, row, a, width, start, m):
    """Columns of a [N, width] (width <= 4, a literal) for Gaussians start..start+m into rows
    row..row+width of the block buffer. Written out per column so that, inlined with a constant
    width, LLVM turns the copy into vector shuffles (a loop over columns would stay scalar)."""
    flat = a.reshape(-1)[start * width : (start + m) * width]
    for j in range(m):
        src = width * j
        buf[row * _BLOCK + j] = flat[src]
        if width > 1:
            buf[(row + 1) * _BLOCK + j] = flat[src + 1]
        if width > 2:
            buf[(row + 2) * _BLOCK + j] = flat[src + 2]
        if width > 3:
            buf[(row + 3) * _BLOCK + j] = flat[src + 3]


@njit(cache=True, error_model="numpy")
def _scatter(buf, row, a, width, start, m):
    """The inverse of _gather: rows row..row+width of the block buffer into the columns of a."""
    flat = a.reshape(-1)[start * width : (start + m) * width]
    for j in range(m):
        dst = width * j
        flat[dst] = buf[row * _BLOCK + j]
        if width > 1:
            flat[dst + 1] = buf[(row + 1) * _BLOCK + j]
        if width > 2:
            flat[dst + 2] = buf[(row + 2) * _BLOCK + j]
        if width > 3:
            flat[dst + 3] = buf[(row + 3) * _BLOCK + j]


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(means, quats, scales, cam, consts, out_means2d, out_conics, out_depths, out_radii):
    """out_means2d [N, 2], out_conics [N, 3], out_depths [N], out_radii [N] int32 from means [N, 3],
    quats [N, 4], scales [N, 3]; cam = (Rw row-major, t) [12]."""
    rw, t, frustum = _unpack(cam, consts)
    fx, fy, cx, cy = consts[_FX], consts[_FY], consts[_CX], consts[_CY]
    eps, width, height, qmin = consts[_EPS], consts[_W], consts[_H], consts[_QMIN]
    half, one, two, three = consts[_HALF], consts[_ONE], consts[_TWO], consts[_THREE]
    zero = one - one
    n = means.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        start = blk * _BLOCK
        m = min(_BLOCK, n - start)
        p = np.empty(10 * _BLOCK, means.dtype)  # rows: means, quats, scales
        _gather(p, 0, means, 3, start, m)
        _gather(p, 3, quats, 4, start, m)
        _gather(p, 7, scales, 3, start, m)
        o = np.empty(6 * _BLOCK, means.dtype)  # rows: means2d, conics, depths
        for j in range(m):
            xyz, in_range, zs, jac, _, _ = _camera(p, j, rw, t, frustum, one)
            _, _, rot = _rotation(p, j, qmin, one, two)
            _, _, v0, v1 = _cov_factors(p, j, rw, rot, jac)
            a = _dot3(v0, v0) + eps
            b = _dot3(v0, v1)
            c = _dot3(v1, v1) + eps
            det = a * c - b * b
            det_ok = det > zero
            det_safe = det if det_ok else one
            mx = fx * xyz[0] / zs + cx
            my = fy * xyz[1] / zs + cy
            o[0 * _BLOCK + j] = mx
            o[1 * _BLOCK + j] = my
            o[2 * _BLOCK + j] = c / det_safe
            o[3 * _BLOCK + j] = -b / det_safe
            o[4 * _BLOCK + j] = a / det_safe
            o[5 * _BLOCK + j] = xyz[2]
            mid = half * (a + c)
            radius = np.ceil(three * np.sqrt(mid + np.sqrt(max(mid * mid - det, zero))))
            on_screen = (mx + radius > zero) & (mx - radius < width) & (my + radius > zero) & (my - radius < height)
            keep = in_range & det_ok & on_screen & np.isfinite(radius)
            out_radii[start + j] = np.int32(radius if keep else zero)
        _scatter(o, 0, out_means2d, 2, start, m)
        _scatter(o, 2, out_conics, 3, start, m)
        _scatter(o, 5, out_depths, 1, start, m)


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_kernel(
    means, quats, scales, grad_means2d, grad_conics, grad_depths, cam, consts, out_means, out_quats, out_scales
):
    """Gradients w.r.t. means [N, 3], quats [N, 4] (un-normalised) and scales [N, 3] from those on
    means2d [N, 2], conics [N, 3] and depths [N]; every intermediate is recomputed."""
    rw, t, frustum = _unpack(cam, consts)
    fx, fy, eps, qmin, one, two = consts[_FX], consts[_FY], consts[_EPS], consts[_QMIN], consts[_ONE], consts[_TWO]
    zero = one - one
    n = means.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        start = blk * _BLOCK
        m = min(_BLOCK, n - start)
        p = np.empty(16 * _BLOCK, means.dtype)  # rows: means, quats, scales, grads of means2d, conics, depths
        _gather(p, 0, means, 3, start, m)
        _gather(p, 3, quats, 4, start, m)
        _gather(p, 7, scales, 3, start, m)
        _gather(p, 10, grad_means2d, 2, start, m)
        _gather(p, 12, grad_conics, 3, start, m)
        _gather(p, 15, grad_depths, 1, start, m)
        o = np.empty(10 * _BLOCK, means.dtype)  # rows: gradients of means, quats, scales
        for j in range(m):
            xyz, in_range, zs, jac, free_x, free_y = _camera(p, j, rw, t, frustum, one)
            q, norm, rot = _rotation(p, j, qmin, one, two)
            (s0, s1, s2), w, v0, v1 = _cov_factors(p, j, rw, rot, jac)
            a = _dot3(v0, v0) + eps
            b = _dot3(v0, v1)
            c = _dot3(v1, v1) + eps
            det = a * c - b * b

            # conic = (c, -b, a) / det, det = a c - b^2 (a constant 1 where det <= 0)
            gc0, gc1, gc2 = p[12 * _BLOCK + j], p[13 * _BLOCK + j], p[14 * _BLOCK + j]
            det_ok = det > zero
            det_safe = det if det_ok else one
            g_det = -(gc0 * c - gc1 * b + gc2 * a) / (det_safe * det_safe) if det_ok else zero
            ga = gc2 / det_safe + g_det * c
            gb = -gc1 / det_safe - two * g_det * b
            gc = gc0 / det_safe + g_det * a

            # a = V0.V0 + eps, b = V0.V1, c = V1.V1 + eps
            dv0 = (two * ga * v0[0] + gb * v1[0], two * ga * v0[1] + gb * v1[1], two * ga * v0[2] + gb * v1[2])
            dv1 = (gb * v0[0] + two * gc * v1[0], gb * v0[1] + two * gc * v1[1], gb * v0[2] + two * gc * v1[2])

            # V0 = j00 W[0] + j02 W[2], V1 = j11 W[1] + j12 W[2]
            j00, j02, j11, j12 = jac
            w0, w1, w2 = (w[0], w[1], w[2]), (w[3], w[4], w[5]), (w[6], w[7], w[8])
            g_j00, g_j02, g_j11, g_j12 = _dot3(dv0, w0), _dot3(dv0, w2), _dot3(dv1, w1), _dot3(dv1, w2)
            dw = (
                j00 * dv0[0], j00 * dv0[1], j00 * dv0[2],
                j11 * dv1[0], j11 * dv1[1], j11 * dv1[2],
                j02 * dv0[0] + j12 * dv1[0], j02 * dv0[1] + j12 * dv1[1], j02 * dv0[2] + j12 * dv1[2],
            )  # fmt: skip

            # W = Rw M, M = R diag(s)
            dm = _matmul3_tn(rw, dw)
            o[7 * _BLOCK + j] = dm[0] * rot[0] + dm[3] * rot[3] + dm[6] * rot[6]
            o[8 * _BLOCK + j] = dm[1] * rot[1] + dm[4] * rot[4] + dm[7] * rot[7]
            o[9 * _BLOCK + j] = dm[2] * rot[2] + dm[5] * rot[5] + dm[8] * rot[8]
            g00, g01, g02 = dm[0] * s0, dm[1] * s1, dm[2] * s2
            g10, g11, g12 = dm[3] * s0, dm[4] * s1, dm[5] * s2
            g20, g21, g22 = dm[6] * s0, dm[7] * s1, dm[8] * s2

            # R(q) for the unit quaternion q = (qw, qx, qy, qz)
            qw, qx, qy, qz = q
            gw = two * (qz * (g10 - g01) + qy * (g02 - g20) + qx * (g21 - g12))
            gx = two * (qy * (g01 + g10) + qz * (g02 + g20) + qw * (g21 - g12) - two * qx * (g11 + g22))
            gy = two * (qx * (g01 + g10) + qz * (g12 + g21) + qw * (g02 - g20) - two * qy * (g00 + g22))
            gz = two * (qx * (g02 + g20) + qy * (g12 + g21) + qw * (g10 - g01) - two * qz * (g00 + g11))
            # q = quats / max(|quats|, 1e-12): project out the radial part unless the floor is active
            radial = (qw * gw + qx * gx + qy * gy + qz * gz) if norm > qmin else zero
            o[3 * _BLOCK + j] = (gw - radial * qw) / norm
            o[4 * _BLOCK + j] = (gx - radial * qx) / norm
            o[5 * _BLOCK + j] = (gy - radial * qy) / norm
            o[6 * _BLOCK + j] = (gz - radial * qz) / norm

            # J = [[fx / zs, 0, -fx tx / zs^2], [0, fy / zs, -fy ty / zs^2]], means2d = (fx x, fy y) / zs + c;
            # tx = x inside the clamp (then -fx tx / zs^2 also moves with x), tx = zs * limit outside.
            x, y, _ = xyz
            gm0, gm1 = p[10 * _BLOCK + j], p[11 * _BLOCK + j]
            zz = zs * zs
            g_x = gm0 * j00 - (g_j02 * fx / zz if free_x else zero)
            g_y = gm1 * j11 - (g_j12 * fy / zz if free_y else zero)
            k_x = two if free_x else one
            k_y = two if free_y else one
            g_jz = g_j00 * j00 + g_j11 * j11 + k_x * g_j02 * j02 + k_y * g_j12 * j12
            g_zs = -(gm0 * fx * x + gm1 * fy * y) / zz - g_jz / zs
            g_z = p[15 * _BLOCK + j] + (g_zs if in_range else zero)

            # camera point = Rw mean + t
            o[0 * _BLOCK + j] = rw[0] * g_x + rw[3] * g_y + rw[6] * g_z
            o[1 * _BLOCK + j] = rw[1] * g_x + rw[4] * g_y + rw[7] * g_z
            o[2 * _BLOCK + j] = rw[2] * g_x + rw[5] * g_y + rw[8] * g_z
        _scatter(o, 0, out_means, 3, start, m)
        _scatter(o, 3, out_quats, 4, start, m)
        _scatter(o, 7, out_scales, 3, start, m)


def _constants(
    viewmat: Tensor, K: Tensor, width: int, height: int, near: float, far: float, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """(cam, consts) in the compute dtype: cam = (Rw row-major, t) [12], consts as laid out above.

    The frustum limits follow the torch expressions op by op in the compute dtype (x / fx for a
    Python float x is reciprocal(fx) * x there), so the clamp bounds agree bit for bit."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    vm = viewmat.detach().to(dtype).numpy()
    cam = np.concatenate([vm[:3, :3].reshape(-1), vm[:3, 3]])
    k = K.detach().to(dtype).numpy()
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    one = np_dtype(1.0)
    slack_x = np_dtype(_FRUSTUM_SLACK * 0.5 * width) * (one / fx)
    slack_y = np_dtype(_FRUSTUM_SLACK * 0.5 * height) * (one / fy)
    lims = (cx / fx + slack_x, (np_dtype(width) - cx) / fx + slack_x,
            cy / fy + slack_y, (np_dtype(height) - cy) / fy + slack_y)  # fmt: skip
    consts = np.array(
        [fx, fy, cx, cy, *lims, near, far, EPS2D, width, height, _QUAT_NORM_MIN, 0.5, 1.0, 2.0, 3.0], np_dtype
    )
    return cam, consts


class _ProjectCPU(torch.autograd.Function):
    """Differentiable in means, quats and scales; cam and consts are numpy constants in the
    compute dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, means, quats, scales, cam, consts, dtype):
        n = means.shape[0]
        means2d = torch.empty((n, 2), dtype=dtype)
        conics = torch.empty((n, 3), dtype=dtype)
        depths = torch.empty(n, dtype=dtype)
        radii = torch.empty(n, dtype=torch.int32)
        with threads_for(n, _PARALLEL_MIN_GAUSSIANS):
            _forward_kernel(
                as_numpy(means, dtype), as_numpy(quats, dtype), as_numpy(scales, dtype), cam, consts,
                means2d.numpy(), conics.numpy(), depths.numpy(), radii.numpy(),
            )  # fmt: skip
        ctx.save_for_backward(means, quats, scales)
        ctx.cam, ctx.consts, ctx.dtype = cam, consts, dtype
        ctx.mark_non_differentiable(radii)
        ctx.set_materialize_grads(False)  # unused outputs arrive as None; zero-filled in backward
        return means2d.to(means.dtype), conics.to(means.dtype), depths.to(means.dtype), radii

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _grad_radii):
        means, quats, scales = ctx.saved_tensors
        dtype = ctx.dtype
        n = means.shape[0]
        upstream = [
            np.zeros(shape, ctx.consts.dtype) if g is None else as_numpy(g, dtype)
            for g, shape in ((grad_means2d, (n, 2)), (grad_conics, (n, 3)), (grad_depths, (n,)))
        ]
        grads = [torch.empty((n, k), dtype=dtype) for k in (3, 4, 3)]
        with threads_for(n, _PARALLEL_MIN_GAUSSIANS):
            _backward_kernel(
                as_numpy(means, dtype), as_numpy(quats, dtype), as_numpy(scales, dtype), *upstream, ctx.cam, ctx.consts,
                *(g.numpy() for g in grads),
            )  # fmt: skip
        needed = zip(grads, (means, quats, scales), ctx.needs_input_grad)
        return (*(g.to(x.dtype) if need else None for g, x, need in needed), None, None, None)


def project_gaussians_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
) -> Projected:
    """``project_gaussians`` with numba kernels: same outputs, gradients w.r.t. means, quats, scales.

    viewmat and K are treated as constants here, so when either requires grad (camera optimisation)
    or any tensor is off the CPU this simply calls the torch ``project_gaussians``, which keeps the
    camera gradients right. Computes in float64 for float64 means, else in float32.
    """
    tensors = (means, quats, scales, viewmat, K)
    if viewmat.requires_grad or K.requires_grad or any(t.device.type != "cpu" for t in tensors):
        return project_gaussians(means, quats, scales, viewmat, K, width, height, near, far)
    dtype = compute_dtype(means)
    cam, consts = _constants(viewmat, K, width, height, near, far, dtype)
    means2d, conics, depths, radii = _ProjectCPU.apply(means, quats, scales, cam, consts, dtype)
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii)
