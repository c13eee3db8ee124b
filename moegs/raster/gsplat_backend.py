"""The `gsplat` backend: gsplat 1.5.3's CUDA ``rasterization`` (any channel count).

All K sets go into one call with a leading batch dimension: sets are padded to the same N with
zero-opacity Gaussians placed behind the camera (culled at projection, so they cost nothing), and
gsplat composites each batch entry with its own transmittance. Depth uses render_mode "RGB+D",
i.e. the un-normalised sum_i w_i z_i like the other backends.

contrib needs per-Gaussian sums gsplat does not return; it is the gradient of
sum_p weight(p) * image(p) with respect to a constant ones feature, so it costs one extra
forward + backward of a 1-channel render with detached geometry.

Differences from the reference worth knowing: gsplat clamps alpha at 0.999 (not 0.99) and bounds
each Gaussian by an opacity-aware per-axis box (not 3 sigma of the major axis); both only change
pixels of Gaussians whose opacity exceeds about 0.35.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from moegs.raster.grad_sink import grad_sink
from moegs.raster.projection import EPS2D, TILE
from moegs.raster.structs import GaussianSet, MultiRasterOutput


def _pad_sets(sets: Sequence[GaussianSet], viewmat: Tensor) -> tuple[Tensor, ...]:
    """Stack sets into [K, N_max, ...] tensors; padding sits at camera z = -1 with opacity 0."""
    n_max = max(1, max(s.means.shape[0] for s in sets))
    ref = sets[0].means
    behind = viewmat[:3, :3].T @ (ref.new_tensor([0.0, 0.0, -1.0]) - viewmat[:3, 3])
    c = sets[0].features.shape[1]
    stacked: list[list[Tensor]] = [[], [], [], [], []]
    for s in sets:
        pad = n_max - s.means.shape[0]
        fill = (
            behind.detach().expand(pad, 3),
            ref.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(pad, 4),
            ref.new_full((pad, 3), 1e-3),
            ref.new_zeros(pad),
            ref.new_zeros(pad, c),
        )
        for out, value, padding in zip(stacked, (s.means, s.quats, s.scales, s.opacities, s.features), fill):
            out.append(torch.cat([value, padding]))
    return tuple(torch.stack(x) for x in stacked)


def render_gsplat(
    sets: Sequence[GaussianSet],
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor,
    near: float,
    far: float,
    contrib_weight: Tensor | None,
    retain_means2d_grad: bool,
) -> MultiRasterOutput:
    """K sets through one batched ``gsplat.rasterization`` call; backgrounds is [K, C]."""
    import gsplat

    n_sets = len(sets)
    counts = [s.means.shape[0] for s in sets]
    means, quats, scales, opacities, features = _pad_sets(sets, viewmat)
    c = features.shape[-1]
    viewmats = viewmat[None, None].expand(n_sets, 1, 4, 4)
    ks = K[None, None].expand(n_sets, 1, 3, 3)
    common = dict(
        viewmats=viewmats, Ks=ks, width=width, height=height, near_plane=near, far_plane=far,
        eps2d=EPS2D, sh_degree=None, packed=False, tile_size=TILE, rasterize_mode="classic",
    )
    colors, alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, features,
        backgrounds=backgrounds[:, None, :], render_mode="RGB+D", **common,
    )
    m2d = meta["means2d"]  # [K, 1, N_max, 2]
    radii = meta["radii"]  # [K, 1, N_max] or per axis [K, 1, N_max, 2]
    if radii.dim() == 4:
        radii = radii.max(dim=-1).values
    if retain_means2d_grad and m2d.requires_grad:
        means2d = [grad_sink(m2d[k, 0, :n], m2d, lambda g, k=k, n=n: g[k, 0, :n]) for k, n in enumerate(counts)]
    else:
        means2d = [m2d[k, 0, :n].detach() for k, n in enumerate(counts)]

    contrib = None
    if contrib_weight is not None:
        with torch.enable_grad():
            ones = torch.ones((n_sets, means.shape[1], 1), device=means.device, dtype=means.dtype, requires_grad=True)
            weights, _, _ = gsplat.rasterization(
                means.detach(), quats.detach(), scales.detach(), opacities.detach(), ones,
                render_mode="RGB", **common,
            )
            (per_gaussian,) = torch.autograd.grad((weights[:, 0, ..., 0] * contrib_weight).sum(), ones)
        contrib = [per_gaussian[k, :n, 0] for k, n in enumerate(counts)]

    return MultiRasterOutput(
        image=colors[:, 0, ..., :c],
        alpha=alphas[:, 0, ..., 0],
        depth=colors[:, 0, ..., c],
        means2d=means2d,
        radii=[radii[k, 0, :n] for k, n in enumerate(counts)],
        contrib=contrib,
    )
