"""``moegs distill``: fine-tune one expert towards the MoE's blend -> an ordinary ``expert`` artifact.

L = L_rec(I_student, I_gt) + beta * L_rec(I_student, stopgrad(I_moe)), optionally weighting the
teacher term per pixel by (1 - gate of the student's own expert), i.e. trusting the mixture most
where the router preferred other experts. The fair baseline, trained in the same run, is the same
student fine-tuned for the same steps on ground truth only; both are written as expert artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.camera_path import spiral_path
from moegs.cameras import Camera
from moegs.config import to_dict
from moegs.data.dataset import Dataset
from moegs.errors import InputError
from moegs.experts import family_names
from moegs.experts.base import Expert
from moegs.experts.io import load_expert
from moegs.moe import MoEModel, load_moe
from moegs.raster import resolve_backend
from moegs.router import render_moe
from moegs.train import train_expert
from stages.common import StageResult, run_stage
from stages.train_experts import finish_expert

log = logging.getLogger("moegs")


@dataclass
class DistillConfig:
    """The ``distill`` section."""

    steps: int = 1000
    """Fine-tuning steps (for the distilled student and for the GT-only baseline alike)."""
    beta: float = 1.0
    gate_weighting: bool = False
    """Weight the teacher term per pixel by 1 - gate of the student's own expert in the MoE."""
    baseline: bool = True
    """Also fine-tune the same student on ground truth only (the fair comparison)."""
    novel_views: int = 16
    """Extra views on a spiral inside the rig where only the MoE supervises (0 = training views only)."""
    novel_radius: float = 0.5
    """Size of that spiral relative to the rig."""
    backend: str = "auto"


class MoETeacher:
    """The frozen MoE's images of the training views, rendered once each and cached."""

    def __init__(self, model: MoEModel, dataset: Dataset, cfg: DistillConfig, backend: str, student_index: int | None) -> None:
        self.model = model
        self.dataset = dataset
        self.beta = cfg.beta
        self.backend = backend
        self.student_index = student_index if cfg.gate_weighting else None
        self.novel_cameras = (
            spiral_path(dataset.train_cameras, cfg.novel_views, radius_scale=cfg.novel_radius) if cfg.novel_views else []
        )
        self._cache: dict[tuple[str, int], tuple[Tensor, Tensor | None]] = {}

    @torch.no_grad()
    def target(self, camera: Camera, frame: int) -> tuple[Tensor, Tensor | None]:
        key = (camera.name, frame)
        if key not in self._cache:
            out = render_moe(self.model.experts, self.model.router, camera,
                             float(self.dataset.times[frame]), tau=self.model.tau, backend=self.backend)
            weight = None if self.student_index is None else 1.0 - out.gates[self.student_index]
            self._cache[key] = (out.image.clamp(0, 1), weight)
        return self._cache[key]


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


def finetune_config(expert: Expert):
    """Continue at the end of the original schedule: final learning rates, no densification, full SH."""
    c = expert.config
    return dataclasses.replace(c, lr_means=c.lr_means_final, lr_fields=c.lr_fields_final, densify_until=0, sh_every=0)


def run(cfg: DistillConfig, moe_ref: str, student: str, workspace: Path, *, force: bool = False, progress: bool = True
        ) -> tuple[StageResult, StageResult | None]:
    """Write the distilled student (and the GT-only baseline) as expert artifacts."""
    if cfg.steps < 1 or cfg.beta < 0:
        raise InputError(f"need steps >= 1 and beta >= 0, got steps={cfg.steps}, beta={cfg.beta}")
    moe = load_artifact(moe_ref, workspace, expected_kind="moe")
    student_artifact, index = resolve_student(moe, student, workspace)
    dataset_artifact = student_artifact.resolve_input(student_artifact.input_refs("dataset")[0])
    backend = resolve_backend(cfg.backend)
    dataset = Dataset.load(dataset_artifact.path)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("backend", "baseline")}
    teacher_model = load_moe(moe)
    baseline = None
    if cfg.baseline:
        baseline = _finetune(student_artifact, dataset, dataset_artifact, workspace, backend, cfg,
                             {"teacher": None, **settings, "beta": 0.0}, None, [], force, progress, "baseline")
    teacher = MoETeacher(teacher_model, dataset, cfg, backend, index)
    distilled = _finetune(student_artifact, dataset, dataset_artifact, workspace, backend, cfg,
                          {"teacher": moe.id, **settings}, teacher, [("teacher", moe)], force, progress, "distill")
    if baseline is not None:
        gain = distilled.artifact.metrics["psnr"] - baseline.artifact.metrics["psnr"]
        log.info("distilled %s: %.2f dB vs GT-only baseline %.2f dB (%+.2f dB)", student_artifact.compat.get("family"),
                 distilled.artifact.metrics["psnr"], baseline.artifact.metrics["psnr"], gain)
    return distilled, baseline


def _finetune(
    student: Artifact,
    dataset: Dataset,
    dataset_artifact: Artifact,
    workspace: Path,
    backend: str,
    cfg: DistillConfig,
    recipe: dict,
    teacher: MoETeacher | None,
    extra_inputs: list[tuple[str, Artifact]],
    force: bool,
    progress: bool,
    label: str,
) -> StageResult:
    writer = ArtifactWriter(
        workspace, student.scene, "expert", stage="distill", config=dict(student.config),
        inputs=[("dataset", dataset_artifact), ("student", student)] + extra_inputs, id_extra={"finetune": recipe},
    )

    def build(directory: Path, w: ArtifactWriter) -> None:
        expert = load_expert(student)
        original_config = expert.config
        expert.config = finetune_config(expert)
        result = train_expert(expert, dataset, directory, backend=backend, progress=progress, steps=cfg.steps,
                              step_offset=student.config["iterations"], teacher=teacher,
                              label=f"{label} {expert.family}")
        expert.config = original_config  # the artifact keeps the family's own config
        finish_expert(expert, dataset, dataset_artifact, directory, w, backend, progress=progress,
                      export_ply=False, train_seconds=student.metrics.get("train_seconds", 0.0) + result.seconds)
        w.metrics.update({"finetune": label, "psnr_student_before": student.metrics.get("psnr"),
                          "finetune_steps": cfg.steps})
        w.extra["finetune"] = recipe

    return run_stage(writer, build, force=force)
