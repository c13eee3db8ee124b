"""Rendering an expert at (camera, time) in a context (training views: ``moegs.data.views``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moegs.cameras import Camera
from moegs.context import RenderContext
from moegs.raster import RasterOutput, rasterize
from moegs.raster.projection import ALPHA_MIN

if TYPE_CHECKING:
    from moegs.experts.base import Expert


def camera_center(camera: Camera, device: torch.device | str = "cpu") -> Tensor:
    return torch.as_tensor(camera.center, dtype=torch.float32, device=device)


def render_expert(
    expert: Expert,
    camera: Camera,
    t: float,
    ctx: RenderContext,
    background: Tensor | None = None,
    *,
    sh_degree: int | None = None,
    retain_grad: bool = False,
    cull_transparent: bool = False,
) -> RasterOutput:
    """The expert's image of ``camera`` at normalised time ``t`` (the expert lives on ``ctx.device``).

    ``cull_transparent``: report radius 0 for Gaussians whose opacity is below the compositing
    threshold (no pixel can see them; the image is the same). Densification counts a view for a
    Gaussian only where its radius is positive, so a temporal family's Gaussian is then judged on
    the instants it exists at instead of having its gradient averaged with every other frame's zero.
    """
    if background is None:
        background = ctx.tensor(expert.config.background)
    g = expert.gaussians_at(t, camera_center(camera, ctx.device), sh_degree)
    out = rasterize(g.means, g.quats, g.scales, g.opacities, g.features,
                    camera.viewmat_tensor(ctx.device), camera.K_tensor(ctx.device), camera.width, camera.height,
                    background, near=camera.near, far=camera.far, backend=ctx.backend, retain_means2d_grad=retain_grad)
    if cull_transparent:
        out.radii = torch.where(g.opacities.detach() >= ALPHA_MIN, out.radii, torch.zeros_like(out.radii))
    return out
