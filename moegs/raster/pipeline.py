"""Project, bin and composite K Gaussian sets with a pluggable compositor (`torch` or `cpu`).

Depth rides along as one more feature channel (camera z, background 0) and alpha is 1 - final T,
so a compositor only ever computes sum_i w_i f_i and the final transmittance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from moegs.raster.projection import Projected, TileBins, bin_tiles, project_gaussians
from moegs.raster.structs import GaussianSet, MultiRasterOutput

# (means2d, conics, opacities, features, set_ids, n_sets, bins, width, height, contrib_weight)
#   -> (acc [K, H, W, D], final transmittance [K, H, W], contrib [N] or None)
Compositor = Callable[..., tuple[Tensor, Tensor, Tensor | None]]
# (means, quats, scales, viewmat, K, width, height, near, far) -> Projected
Projector = Callable[..., Projected]
# (means2d, radii, depths, width, height) -> TileBins
Binner = Callable[..., TileBins]


def render_sets(
    sets: Sequence[GaussianSet],
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor,
    near: float,
    far: float,
    composite: Compositor,
    contrib_weight: Tensor | None,
    retain_means2d_grad: bool,
    project: Projector = project_gaussians,
    binner: Binner = bin_tiles,
) -> MultiRasterOutput:
    """All sets are binned together (one depth order, one pass over tiles); each set keeps its own
    transmittance inside the compositor. backgrounds is [K, C]. A backend may swap in its own
    projection and binning; they must give the same values (the `cpu` backend's are tested so)."""
    n_sets = len(sets)
    projected = [project(s.means, s.quats, s.scales, viewmat, K, width, height, near, far) for s in sets]
    for p in projected:
        if retain_means2d_grad and p.means2d.requires_grad:
            p.means2d.retain_grad()
    counts = [s.means.shape[0] for s in sets]
    device = sets[0].means.device
    set_ids = torch.repeat_interleave(torch.arange(n_sets, device=device), torch.tensor(counts, device=device))
    means2d = torch.cat([p.means2d for p in projected])
    depths = torch.cat([p.depths for p in projected])
    radii = torch.cat([p.radii for p in projected])
    features = torch.cat([torch.cat([s.features, p.depths[:, None]], dim=1) for s, p in zip(sets, projected)])
    bins = binner(means2d, radii, depths, width, height)

    acc, trans, contrib = composite(
        means2d,
        torch.cat([p.conics for p in projected]),
        torch.cat([s.opacities for s in sets]),
        features,
        set_ids,
        n_sets,
        bins,
        width,
        height,
        contrib_weight,
    )
    image = acc[..., :-1] + trans[..., None] * backgrounds[:, None, None, :]
    return MultiRasterOutput(
        image=image,
        alpha=1.0 - trans,
        depth=acc[..., -1],
        means2d=[p.means2d for p in projected],
        radii=[p.radii for p in projected],
        contrib=list(contrib.split(counts)) if contrib is not None else None,
    )
