"""Blended rendering of K frozen experts with the router's per-pixel gates.

image = sum_k gate_k * I_k. By default all experts and both channel groups (RGB + gate features)
are rasterised in ONE multi-expert pass, each expert with its own transmittance; the official
code's 2K separate passes remain available (``single_pass=False``) to check that they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from moegs.cache import ByteLRUCache, budget_bytes
from moegs.cameras import Camera
from moegs.context import RenderContext
from moegs.experts.base import Expert
from moegs.moe.router import PixelRouter
from moegs.raster import GaussianSet, rasterize, rasterize_multi
from moegs.rendering import camera_center


@dataclass
class MoEOutput:
    image: Tensor  # [H, W, 3] blended
    expert_images: Tensor  # [K, H, W, 3]
    gates: Tensor  # [K, H, W] softmax weights
    logits: Tensor  # [K, H, W]


DEFORMED_CACHE_MB = 1024
"""Default budget of the deformed-Gaussian cache (3 experts x 300k Gaussians x 300 frames would be ~15 GB)."""


class FrozenExperts:
    """Experts with gradients cut off; their deformed geometry, and the SH coefficients a family
    deforms, are cached per time (they never change) in an LRU cache of ``cache_mb`` megabytes,
    while the view-dependent colour is recomputed per camera (cheap, and caching it would multiply
    memory by the number of cameras). Before 0.3.0 a cache hit coloured the families that change
    colour over time (hexplane, embedding) from their static SH."""

    def __init__(self, experts: Sequence[Expert], cache: bool = True, cache_mb: float = DEFORMED_CACHE_MB) -> None:
        self.experts = list(experts)
        for expert in self.experts:
            expert.eval()
        self._cache: ByteLRUCache[tuple[GaussianSet, dict[str, Tensor]]] = ByteLRUCache(
            budget_bytes(cache_mb, "deformed_cache_mb"))
        self.use_cache = cache
        """Turn off to time rendering honestly (deformation included)."""

    def __len__(self) -> int:
        return len(self.experts)

    @torch.no_grad()
    def at(self, k: int, t: float, camera: Camera) -> GaussianSet:
        expert = self.experts[k]
        center = camera_center(camera, expert.device)
        key = (k, float(t))
        entry = self._cache.get(key) if self.use_cache else None
        if entry is None:
            geometry, sh = expert.deformed_at(t)
            entry = geometry.detach(), {name: v.detach() for name, v in sh.items()}
            if self.use_cache:
                self._cache.put(key, entry)
        return expert.coloured(*entry, center)

    def backgrounds(self, ctx: RenderContext) -> Tensor:
        """Each expert's background colour [K, 3] on the context's device."""
        return ctx.tensor([e.config.background for e in self.experts])

    def clear(self) -> None:
        self._cache.clear()


def render_moe(
    experts: FrozenExperts,
    router: PixelRouter,
    camera: Camera,
    t: float,
    ctx: RenderContext,
    *,
    tau: float = 0.01,
    single_pass: bool = True,
    rays: tuple[Tensor, Tensor] | None = None,
) -> MoEOutput:
    """Blend the K experts' images of ``camera`` at time ``t`` with the router's per-pixel gates."""
    gs = [experts.at(k, t, camera) for k in range(len(experts))]
    features = [torch.cat([g.features, router.gate_features(k, t)], dim=-1) for k, g in enumerate(gs)]
    rgb_bg = experts.backgrounds(ctx)
    backgrounds = torch.cat([rgb_bg, router.gate_background.to(rgb_bg.dtype)], dim=-1)  # [K, 6]
    viewmat, K = camera.viewmat_tensor(ctx.device), camera.K_tensor(ctx.device)
    if single_pass:
        sets = [GaussianSet(g.means, g.quats, g.scales, g.opacities, f) for g, f in zip(gs, features)]
        out = rasterize_multi(sets, viewmat, K, camera.width, camera.height, backgrounds,
                              near=camera.near, far=camera.far, backend=ctx.backend).image  # [K, H, W, 6]
        images, maps = out[..., :3], out[..., 3:]
    else:
        images_list, maps_list = [], []
        for k, g in enumerate(gs):
            for channels, store in ((slice(0, 3), images_list), (slice(3, 6), maps_list)):
                store.append(
                    rasterize(g.means, g.quats, g.scales, g.opacities, features[k][:, channels], viewmat, K,
                              camera.width, camera.height, backgrounds[k, channels],
                              near=camera.near, far=camera.far, backend=ctx.backend).image
                )
        images, maps = torch.stack(images_list), torch.stack(maps_list)
    rays_o, rays_d = rays if rays is not None else camera.rays(ctx.device)
    logits = router.logits(maps, rays_o, rays_d)
    gates = torch.softmax(logits / tau, dim=0)
    blended = (gates.unsqueeze(-1) * images).sum(dim=0)
    return MoEOutput(image=blended, expert_images=images, gates=gates, logits=logits)
