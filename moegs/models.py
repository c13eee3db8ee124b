"""One way to render any model artifact: a single expert or a mixture (what render and bench consume)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moegs.artifacts import Artifact
from moegs.cameras import Camera
from moegs.errors import IncompatibleArtifactError
from moegs.experts.base import Expert
from moegs.experts.io import load_expert
from moegs.moe import MoEModel, load_moe
from moegs.rendering import render_expert
from moegs.router import render_moe


@dataclass
class Frame:
    image: Tensor  # [H, W, 3]
    expert_images: Tensor | None = None  # [K, H, W, 3] for a mixture
    gates: Tensor | None = None  # [K, H, W]


@dataclass
class LoadedModel:
    """An expert or a MoE behind one ``render(camera, t)``."""

    artifact: Artifact
    expert: Expert | None = None
    moe: MoEModel | None = None

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def families(self) -> list[str]:
        if self.moe is not None:
            return [e.family for e in self.moe.experts.experts]
        return [self.expert.family]

    @property
    def num_gaussians(self) -> int:
        return sum(self.moe.num_gaussians) if self.moe is not None else self.expert.num_gaussians

    def megabytes(self) -> float:
        floats = self.moe.num_floats() if self.moe is not None else self.expert.num_floats()
        return floats * 4 / 1e6

    @torch.no_grad()
    def render(self, camera: Camera, t: float, backend: str = "auto", rays: tuple[Tensor, Tensor] | None = None) -> Frame:
        if self.moe is not None:
            out = render_moe(self.moe.experts, self.moe.router, camera, t, tau=self.moe.tau, backend=backend, rays=rays)
            return Frame(out.image, out.expert_images, out.gates)
        return Frame(render_expert(self.expert, camera, t, backend=backend).image)


def load_model(artifact: Artifact, tau: float | None = None) -> LoadedModel:
    """Load an ``expert`` or ``moe`` artifact for rendering (``tau`` overrides a mixture's temperature)."""
    if artifact.kind == "expert":
        return LoadedModel(artifact, expert=load_expert(artifact))
    if artifact.kind == "moe":
        return LoadedModel(artifact, moe=load_moe(artifact, tau=tau))
    raise IncompatibleArtifactError(f"{artifact.path}: expected an expert or moe artifact, found {artifact.kind}")


def dataset_of(artifact: Artifact) -> Artifact:
    """The dataset an expert or MoE was trained on (recorded in its manifest inputs)."""
    refs = artifact.input_refs("dataset")
    if not refs:
        raise IncompatibleArtifactError(f"{artifact.path}: manifest names no dataset input")
    return artifact.resolve_input(refs[0])
