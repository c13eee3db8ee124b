"""The mixture in memory: frozen experts + router + temperature, rendered like any expert."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moegs.artifacts import Artifact
from moegs.cameras import Camera
from moegs.context import RenderContext
from moegs.moe.render import FrozenExperts, MoEOutput, render_moe
from moegs.moe.router import PixelRouter
from moegs.renderable import Frame


@dataclass
class MoEModel:
    """A :class:`moegs.renderable.Renderable` over K experts (their artifacts kept for reporting)."""

    experts: FrozenExperts
    router: PixelRouter
    tau: float
    expert_artifacts: list[Artifact]

    @property
    def families(self) -> list[str]:
        return [e.family for e in self.experts.experts]

    @property
    def gaussians_per_expert(self) -> list[int]:
        return [e.num_gaussians for e in self.experts.experts]

    @property
    def num_gaussians(self) -> int:
        return sum(self.gaussians_per_expert)

    def num_floats(self) -> int:
        experts = sum(e.num_floats() for e in self.experts.experts)
        return experts + sum(p.numel() for p in self.router.parameters())

    def megabytes(self) -> float:
        return self.num_floats() * 4 / 1e6

    def blend(self, camera: Camera, t: float, ctx: RenderContext, *, tau: float | None = None,
              single_pass: bool = True, rays: tuple[Tensor, Tensor] | None = None) -> MoEOutput:
        """The blended render with its gates and logits (differentiable in the router)."""
        return render_moe(self.experts, self.router, camera, t, ctx, tau=self.tau if tau is None else tau,
                          single_pass=single_pass, rays=rays)

    @torch.no_grad()
    def render_frame(self, camera: Camera, t: float, ctx: RenderContext, *,
                     rays: tuple[Tensor, Tensor] | None = None, cache: bool = True) -> Frame:
        cached = self.experts.use_cache
        self.experts.use_cache = cache
        try:
            out = self.blend(camera, t, ctx, rays=rays)
        finally:
            self.experts.use_cache = cached
        return Frame(out.image, out.expert_images, out.gates)

    def export_at(self, t: float) -> list[tuple[str, dict[str, Tensor]]]:
        return [(f"{k}_{e.family}", e.export_params_at(t)) for k, e in enumerate(self.experts.experts)]
