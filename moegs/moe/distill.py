"""Distilling a mixture into one expert: the teacher's targets and the student's fine-tune settings.

L = L_rec(I_student, I_gt) + beta * L_rec(I_student, stopgrad(I_moe)), optionally weighting the
teacher term per pixel by (1 - gate of the student's own expert), i.e. trusting the mixture most
where the router preferred other experts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from moegs.artifacts import Artifact, load_artifact
from moegs.cache import ByteLRUCache, budget_bytes
from moegs.camera_path import orbit_path, rig_shape, spiral_path
from moegs.cameras import Camera
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.data.dataset import FRAME_CACHE_MB, Dataset
from moegs.errors import InputError
from moegs.evaluation import EVAL_FRAMES
from moegs.experts import family_names
from moegs.experts.base import Expert, ExpertConfig
from moegs.moe.model import MoEModel
from moegs.moe.render import DEFORMED_CACHE_MB


TEACHER_CACHE_MB = 512
"""Default budget of the teacher's targets (one N3V image at 1352x1014 in float32 is 16 MB)."""


@dataclass
class DistillConfig:
    """The ``distill`` section."""

    steps: int = bounded(1000, ge=1)
    """Fine-tuning steps (for the distilled student and for the GT-only baseline alike)."""
    beta: float = bounded(1.0, ge=0.0)
    gate_weighting: bool = False
    """Weight the teacher term per pixel by 1 - gate of the student's own expert in the MoE."""
    baseline: bool = True
    """Also fine-tune the same student on ground truth only (the fair comparison)."""
    novel_views: int = bounded(16, ge=0)
    """Extra views on a spiral inside the rig where only the MoE supervises (0 = training views only)."""
    novel_radius: float = bounded(0.5, gt=0.0)
    """Size of that spiral relative to the rig (forward-facing rigs; a surround rig gets an orbit)."""
    checkpoint_every: int = bounded(500, ge=1)
    """Fine-tuning steps between checkpoints for --resume (not part of the id)."""
    teacher_cache_mb: float = bounded(TEACHER_CACHE_MB, ge=0.0)
    """Budget of the teacher's rendered targets (LRU; 0 renders every target again)."""
    deformed_cache_mb: float = bounded(DEFORMED_CACHE_MB, ge=0.0)
    """Budget of the frozen experts' deformed Gaussians (LRU)."""
    frame_cache_mb: float = bounded(FRAME_CACHE_MB, ge=0.0)
    """Budget of the dataset's decoded frames (LRU)."""
    eval_frames: int = bounded(EVAL_FRAMES, ge=0)
    """Test frames scored after fine-tuning, spread evenly (0 = every frame)."""
    device: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_config(self)


class MoETeacher:
    """The frozen MoE's images of the training views, rendered on demand and kept on the device in an
    LRU cache of ``cfg.teacher_cache_mb`` megabytes."""

    def __init__(self, model: MoEModel, dataset: Dataset, cfg: DistillConfig, ctx: RenderContext, student_index: int | None) -> None:
        self.model = model
        self.dataset = dataset
        self.beta = cfg.beta
        self.ctx = ctx
        self.student_index = student_index if cfg.gate_weighting else None
        self.novel_cameras = (
            _novel_views(dataset.train_cameras, cfg) if cfg.novel_views else []
        )
        self._cache: ByteLRUCache[tuple[Tensor, Tensor | None]] = ByteLRUCache(
            budget_bytes(cfg.teacher_cache_mb, "teacher_cache_mb"))

    @torch.no_grad()
    def target(self, camera: Camera, frame: int) -> tuple[Tensor, Tensor | None]:
        return self._cache.get_or_create((camera.name, frame), lambda: self._render(camera, frame))

    def _render(self, camera: Camera, frame: int) -> tuple[Tensor, Tensor | None]:
        out = self.model.blend(camera, float(self.dataset.times[frame]), self.ctx)
        weight = None if self.student_index is None else 1.0 - out.gates[self.student_index]
        return out.image.clamp(0, 1), weight


def resolve_student(moe: Artifact, student: str, workspace: Path) -> tuple[Artifact, int | None]:
    """The student expert artifact and its index in the MoE (None if it is not one of the MoE's experts)."""
    experts = [moe.resolve_input(e) for e in moe.input_refs("expert")]
    if student in family_names():
        matches = [k for k, a in enumerate(experts) if a.compat.get("family") == student]
        if not matches:
            names = ", ".join(a.compat.get("family", "?") for a in experts)
            raise InputError(f"the MoE has no {student} expert (it has: {names}); pass an expert artifact instead")
        return experts[matches[0]], matches[0]
    artifact = load_artifact(student, workspace, expected_kind="expert")
    if artifact.compat.get("dataset_id") != moe.compat.get("dataset_id"):
        raise InputError(
            f"student {artifact.short_id} was trained on dataset {str(artifact.compat.get('dataset_id'))[:12]}, "
            f"the MoE on {str(moe.compat.get('dataset_id'))[:12]}"
        )
    index = next((k for k, a in enumerate(experts) if a.id == artifact.id), None)
    return artifact, index


def finetune_config(expert: Expert) -> ExpertConfig:
    """Continue at the end of the original schedule: final learning rates, no densification, full SH."""
    c = expert.config
    return dataclasses.replace(c, lr_means=c.lr_means_final, lr_fields=c.lr_fields_final,
                               densify=dataclasses.replace(c.densify, stop=0), sh_every=0)


def _novel_views(cameras: list[Camera], cfg: DistillConfig) -> list[Camera]:
    """Pseudo-views inside the rig: a spiral in front of a forward-facing rig, an orbit around a surround one."""
    if rig_shape(cameras) == "forward":
        return spiral_path(cameras, cfg.novel_views, radius_scale=cfg.novel_radius)
    return orbit_path(cameras, cfg.novel_views)
