"""The Volume-aware Pixel Router of MoE-GS and the blended rendering of K frozen experts.

Every Gaussian i of expert k carries gates b_i = (b_i0, b_i1) (init 0.9) and a time coefficient
f_i (init 0). At normalised time t the feature g_i(t) = [b_i0, b_i1, t * f_i] is splatted with the
expert's own frozen geometry and opacity, background 1 ("weight splatting"), giving maps A, S, T.
A 69-weight per-pixel MLP shared by all experts (8 -> 6 -> ReLU -> 3 -> ReLU -> 1, no bias) reads
[S, T, ray origin, unit ray direction]; logit = A + MLP; gate = softmax_k(logit / tau); image =
sum_k gate_k * I_k. By default all experts and both channel groups (RGB + gate features) are
rasterised in ONE multi-expert pass, each expert with its own transmittance; the official code's
2K separate passes remain available (``single_pass=False``) to check that they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moegs import gaussians as core
from moegs.cameras import Camera
from moegs.experts.base import DeformedGaussians, Expert
from moegs.raster import GaussianSet, rasterize, rasterize_multi
from moegs.rendering import camera_center

GATE_INIT = 0.9


class PixelRouter(nn.Module):
    """Per-Gaussian gate tables for each expert plus the shared pixel decoder."""

    def __init__(self, gaussian_counts: Sequence[int], gate_init: float = GATE_INIT) -> None:
        super().__init__()
        self.gates = nn.ParameterList([nn.Parameter(torch.full((n, 2), gate_init)) for n in gaussian_counts])
        self.time_coefs = nn.ParameterList([nn.Parameter(torch.zeros(n, 1)) for n in gaussian_counts])
        self.decoder = nn.Sequential(
            nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)
        )

    @property
    def num_experts(self) -> int:
        return len(self.gates)

    def gate_features(self, k: int, t: float) -> Tensor:
        """g_i(t) = [b_i0, b_i1, t * f_i] for every Gaussian of expert k: [N_k, 3]."""
        return torch.cat([self.gates[k], t * self.time_coefs[k]], dim=-1)

    def logits(self, maps: Tensor, rays_o: Tensor, rays_d: Tensor) -> Tensor:
        """Per-pixel logits [K, H, W] from splatted maps [K, H, W, 3] and rays [H, W, 3] (world frame)."""
        k = maps.shape[0]
        rays = torch.cat([rays_o, rays_d], dim=-1).expand(k, -1, -1, -1)
        decoded = self.decoder(torch.cat([maps[..., 1:3], rays], dim=-1)).squeeze(-1)
        return maps[..., 0] + decoded

    def keep_rows(self, k: int, mask: Tensor) -> None:
        """Drop gate rows of pruned Gaussians of expert k (``mask`` True = keep)."""
        self.gates[k] = nn.Parameter(self.gates[k].detach()[mask].clone())
        self.time_coefs[k] = nn.Parameter(self.time_coefs[k].detach()[mask].clone())


@dataclass
class MoEOutput:
    image: Tensor  # [H, W, 3] blended
    expert_images: Tensor  # [K, H, W, 3]
    gates: Tensor  # [K, H, W] softmax weights
    logits: Tensor  # [K, H, W]


class FrozenExperts:
    """Experts with gradients cut off; their deformed geometry is cached per time (it never changes),
    while the view-dependent colour is recomputed per camera (cheap, and caching it would multiply
    memory by the number of cameras)."""

    def __init__(self, experts: Sequence[Expert], cache: bool = True) -> None:
        self.experts = list(experts)
        for expert in self.experts:
            expert.eval()
        self._cache: dict[tuple[int, float], DeformedGaussians] = {}
        self.use_cache = cache
        """Turn off to time rendering honestly (deformation included) or to save memory."""

    def __len__(self) -> int:
        return len(self.experts)

    @torch.no_grad()
    def at(self, k: int, t: float, camera: Camera) -> DeformedGaussians:
        key = (k, float(t))
        g = self._cache.get(key)
        if g is None:
            g = self.experts[k].gaussians_at(t, camera_center(camera)).detach()
            if self.use_cache:
                self._cache[key] = g
            return g  # its colours are already this camera's
        colors = core.colors(self.experts[k].params, self.experts[k].config.sh_degree, camera_center(camera), means=g.means)
        return DeformedGaussians(g.means, g.quats, g.scales, g.opacities, colors.detach())

    def backgrounds(self) -> Tensor:
        return torch.tensor([e.config.background for e in self.experts], dtype=torch.float32)

    def clear(self) -> None:
        self._cache.clear()


def render_moe(
    experts: FrozenExperts,
    router: PixelRouter,
    camera: Camera,
    t: float,
    *,
    tau: float = 0.01,
    single_pass: bool = True,
    backend: str = "auto",
    rays: tuple[Tensor, Tensor] | None = None,
) -> MoEOutput:
    """Blend the K experts' images of ``camera`` at time ``t`` with the router's per-pixel gates."""
    gs = [experts.at(k, t, camera) for k in range(len(experts))]
    features = [torch.cat([g.colors, router.gate_features(k, t)], dim=-1) for k, g in enumerate(gs)]
    rgb_bg = experts.backgrounds()
    backgrounds = torch.cat([rgb_bg, torch.ones_like(rgb_bg)], dim=-1)  # [K, 6]
    viewmat, K = camera.viewmat_tensor(), camera.K_tensor()
    if single_pass:
        sets = [GaussianSet(g.means, g.quats, g.scales, g.opacities, f) for g, f in zip(gs, features)]
        out = rasterize_multi(sets, viewmat, K, camera.width, camera.height, backgrounds,
                              near=camera.near, far=camera.far, backend=backend).image  # [K, H, W, 6]
        images, maps = out[..., :3], out[..., 3:]
    else:
        images_list, maps_list = [], []
        for k, g in enumerate(gs):
            for channels, store in ((slice(0, 3), images_list), (slice(3, 6), maps_list)):
                store.append(
                    rasterize(g.means, g.quats, g.scales, g.opacities, features[k][:, channels], viewmat, K,
                              camera.width, camera.height, backgrounds[k, channels],
                              near=camera.near, far=camera.far, backend=backend).image
                )
        images, maps = torch.stack(images_list), torch.stack(maps_list)
    rays_o, rays_d = rays if rays is not None else camera.rays()
    logits = router.logits(maps, rays_o, rays_d)
    gates = torch.softmax(logits / tau, dim=0)
    blended = (gates.unsqueeze(-1) * images).sum(dim=0)
    return MoEOutput(image=blended, expert_images=images, gates=gates, logits=logits)
