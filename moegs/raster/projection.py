"""EWA projection and 16x16 tile binning in plain torch: the reference, used by the `torch` backend.

Projection is differentiable (autograd carries the compositor's gradients on means2d/conics/depth
back to means, quats and scales); binning is index bookkeeping without gradients. The `cpu`
backend has numba twins (`cpu_projection`, `cpu_binning`) tested to give the same values and the
very same tile lists, so both backends composite every tile in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moegs.gaussians import quat_to_rotmat

TILE = 16
EPS2D = 0.3  # dilation added to the 2D covariance (3DGS low-pass filter)
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
# gsplat clamps x/z, y/z used in the Jacobian to the frustum widened by this fraction of tan(fov/2),
# so Gaussians far outside the view do not blow up into huge screen ellipses.
_FRUSTUM_SLACK = 0.3


@dataclass
class Projected:
    """Screen-space quantities of N Gaussians; entries with radii == 0 are culled."""

    means2d: Tensor  # [N, 2] pixel coordinates (pixel centres at +0.5)
    conics: Tensor  # [N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [N] camera-space z
    radii: Tensor  # [N] int32, ceil(3 * sqrt(max eigenvalue)), 0 = culled


@dataclass
class TileBins:
    """Per-tile Gaussian lists, front to back: tile t holds gids[offsets[t]:offsets[t + 1]]."""

    offsets: Tensor  # [tiles_x * tiles_y + 1] int64
    gids: Tensor  # [n_isect] int64
    tiles_x: int
    tiles_y: int


def project_gaussians(
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
    """3DGS/gsplat EWA splatting: Sigma = R S S^T R^T, cov2d = J W Sigma W^T J^T + 0.3 I."""
    rot_w2c, t_w2c = viewmat[:3, :3], viewmat[:3, 3]
    p_cam = means @ rot_w2c.T + t_w2c
    x, y, z = p_cam.unbind(-1)
    in_range = (z >= near) & (z <= far)
    # Culled Gaussians still flow through autograd; a safe z keeps their (unused) values finite.
    zs = torch.where(in_range, z, torch.ones_like(z))

    m = quat_to_rotmat(quats) * scales[:, None, :]
    cov_world = m @ m.transpose(-1, -2)
    cov_cam = rot_w2c @ cov_world @ rot_w2c.T

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + _FRUSTUM_SLACK * 0.5 * width / fx
    lim_x_neg = cx / fx + _FRUSTUM_SLACK * 0.5 * width / fx
    lim_y_pos = (height - cy) / fy + _FRUSTUM_SLACK * 0.5 * height / fy
    lim_y_neg = cy / fy + _FRUSTUM_SLACK * 0.5 * height / fy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_x_neg), lim_x_pos)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_y_neg), lim_y_pos)

    zero = torch.zeros_like(zs)
    jac = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(-1, 2, 3)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    a = cov2d[:, 0, 0] + EPS2D
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + EPS2D
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam_max = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.0))
        radius = torch.ceil(3.0 * torch.sqrt(lam_max))
        mx, my = means2d[:, 0], means2d[:, 1]
        on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        keep = in_range & det_ok & on_screen & torch.isfinite(radius)
        radii = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> TileBins:
    """Assign each visible Gaussian to the tiles its radius box overlaps; within a tile, sort by
    view depth with ties broken by index (a stable sort), like gsplat's isect_tiles."""
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    n_tiles = tiles_x * tiles_y
    device = means2d.device
    with torch.no_grad():
        n = means2d.shape[0]
        r = radii.to(means2d.dtype)
        mx, my = means2d[:, 0], means2d[:, 1]
        x0 = torch.clamp(torch.floor((mx - r) / TILE), 0, tiles_x).long()
        x1 = torch.clamp(torch.ceil((mx + r) / TILE), 0, tiles_x).long()
        y0 = torch.clamp(torch.floor((my - r) / TILE), 0, tiles_y).long()
        y1 = torch.clamp(torch.ceil((my + r) / TILE), 0, tiles_y).long()
        counts = torch.where(radii > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))
        rank = torch.empty(n, dtype=torch.long, device=device)
        rank[torch.argsort(depths.detach(), stable=True)] = torch.arange(n, device=device)

        vis = torch.nonzero(counts > 0).squeeze(1)
        cnt = counts[vis]
        g = torch.repeat_interleave(vis, cnt)
        first = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        local = torch.arange(g.shape[0], device=device) - first
        span = (x1 - x0)[g]
        tile = (y0[g] + local // span) * tiles_x + x0[g] + local % span
        order = torch.argsort(tile * max(n, 1) + rank[g])
        gids = g[order]
        per_tile = torch.bincount(tile, minlength=n_tiles)
        offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=device)
        offsets[1:] = torch.cumsum(per_tile, 0)
    return TileBins(offsets=offsets, gids=gids, tiles_x=tiles_x, tiles_y=tiles_y)
