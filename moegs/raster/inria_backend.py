"""The `inria` backend: graphdeco-inria's ``diff_gaussian_rasterization`` (CUDA, 3 channels a call).

Per set, the channels [features (C), ones (-> alpha), camera z (-> depth)] are padded to a multiple
of 3 and rendered ceil((C + 2) / 3) times with the same geometry; there is no single pass over the
K sets, they are rendered one after another. The projection matrix encodes the full K (also an
off-centre principal point) so pixel positions match the other backends; Inria evaluates pixels at
integer coordinates, hence the -0.5 shift folded into it.

Differences from the reference: Inria culls Gaussians closer than z = 0.2 (hard-coded) and never
culls far ones, and clamps x/z, y/z in the Jacobian symmetrically (1.3 tan(fov/2)). Its screen-space
gradient is in NDC units; it is converted to pixels for ``means2d.grad``. contrib is computed like
in the gsplat backend (gradient of a weighted ones channel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from moegs.raster.grad_sink import grad_sink
from moegs.raster.projection import project_gaussians
from moegs.raster.structs import GaussianSet, MultiRasterOutput


def _settings(viewmat: Tensor, K: Tensor, width: int, height: int, near: float, far: float, bg: Tensor):
    """GaussianRasterizationSettings for an OpenCV camera (row-vector, transposed matrices)."""
    from diff_gaussian_rasterization import GaussianRasterizationSettings

    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    proj = torch.zeros((4, 4), dtype=viewmat.dtype, device=viewmat.device)
    proj[0, 0], proj[0, 2] = 2 * fx / width, 2 * cx / width - 1
    proj[1, 1], proj[1, 2] = 2 * fy / height, 2 * cy / height - 1
    proj[2, 2], proj[2, 3] = far / (far - near), -far * near / (far - near)
    proj[3, 2] = 1.0
    fields = dict(
        image_height=height, image_width=width, tanfovx=0.5 * width / fx, tanfovy=0.5 * height / fy,
        bg=bg, scale_modifier=1.0, viewmatrix=viewmat.T.contiguous(),
        projmatrix=(proj @ viewmat).T.contiguous(), sh_degree=0,
        campos=torch.linalg.inv(viewmat)[:3, 3].contiguous(), prefiltered=False, debug=False,
    )
    if "antialiasing" in GaussianRasterizationSettings._fields:  # 2024 upstream
        fields["antialiasing"] = False
    return GaussianRasterizationSettings(**fields)


def _render_channels(
    s: GaussianSet, channels: Tensor, bg: Tensor, dummy2d: Tensor, camera: tuple
) -> tuple[Tensor, Tensor]:
    """channels [N, D] -> ([H, W, D] with background, radii) via ceil(D / 3) 3-channel calls."""
    from diff_gaussian_rasterization import GaussianRasterizer

    d = channels.shape[1]
    pad = 3 * math.ceil(d / 3) - d
    channels = torch.cat([channels, channels.new_zeros(channels.shape[0], pad)], dim=1)
    bg = torch.cat([bg, bg.new_zeros(pad)])
    images, radii = [], None
    for i in range(0, d + pad, 3):
        raster = GaussianRasterizer(raster_settings=_settings(*camera, bg=bg[i : i + 3].contiguous()))
        out = raster(
            means3D=s.means, means2D=dummy2d, opacities=s.opacities[:, None],
            colors_precomp=channels[:, i : i + 3].contiguous(), scales=s.scales,
            rotations=torch.nn.functional.normalize(s.quats, dim=-1),  # the CUDA kernel does not normalise
        )
        images.append(out[0])
        radii = out[1]
    return torch.cat(images, dim=0)[:d].permute(1, 2, 0), radii


def render_inria(
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
    """Each set rendered separately; backgrounds is [K, C]."""
    camera = (viewmat, K, width, height, near, far)
    ndc_per_pixel = viewmat.new_tensor([0.5 * width, 0.5 * height])
    images, alphas, depths, means2d, radii, contribs = [], [], [], [], [], []
    for k, s in enumerate(sets):
        proj = project_gaussians(s.means, s.quats, s.scales, viewmat, K, width, height, near, far)
        dummy2d = torch.zeros_like(s.means, requires_grad=True)  # Inria's gradient receiver [N, 3]
        ones, z = s.features.new_ones(s.means.shape[0], 1), proj.depths[:, None]
        bg = torch.cat([backgrounds[k], backgrounds.new_zeros(2)])
        out, r = _render_channels(s, torch.cat([s.features, ones, z], dim=1), bg, dummy2d, camera)
        c = s.features.shape[1]
        images.append(out[..., :c])
        alphas.append(out[..., c])
        depths.append(out[..., c + 1])
        radii.append(r)
        if retain_means2d_grad:
            means2d.append(grad_sink(proj.means2d, dummy2d, lambda g: g[:, :2] / ndc_per_pixel))
        else:
            means2d.append(proj.means2d.detach())
        if contrib_weight is not None:
            with torch.enable_grad():
                geometry = GaussianSet(*(x.detach() for x in (s.means, s.quats, s.scales, s.opacities, s.features)))
                unit = s.features.new_ones(s.means.shape[0], 1).requires_grad_(True)
                w, _ = _render_channels(geometry, unit, bg.new_zeros(1), torch.zeros_like(s.means), camera)
                (per_gaussian,) = torch.autograd.grad((w[..., 0] * contrib_weight[k]).sum(), unit)
            contribs.append(per_gaussian[:, 0])
    return MultiRasterOutput(
        image=torch.stack(images),
        alpha=torch.stack(alphas),
        depth=torch.stack(depths),
        means2d=means2d,
        radii=radii,
        contrib=contribs if contrib_weight is not None else None,
    )
