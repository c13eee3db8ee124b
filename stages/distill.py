"""``moegs distill``: fine-tune one expert towards the MoE's blend -> an ordinary ``expert`` artifact.

The fair baseline, trained in the same run, is the same student fine-tuned for the same steps on
ground truth only; both are written as expert artifacts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.expert_output import finish_expert
from moegs.experts.io import load_expert
from moegs.moe.distill import DistillConfig, MoETeacher, finetune_config, resolve_student
from moegs.models import model_dataset
from moegs.moe.io import load_moe
from moegs.train import train_expert
from stages.common import StageResult, artifact_config, run_stage, stage_context

__all__ = ["DistillConfig", "run"]
log = logging.getLogger("moegs")


def run(cfg: DistillConfig, moe_ref: str, student: str, workspace: Path, *, force: bool = False, resume: bool = False,
        progress: bool = True) -> tuple[StageResult, StageResult | None]:
    """Write the distilled student (and the GT-only baseline) as expert artifacts."""
    moe = load_artifact(moe_ref, workspace, expected_kind="moe")
    student_artifact, index = resolve_student(moe, student, workspace)
    dataset_artifact = student_artifact.resolve_input(student_artifact.input_refs("dataset")[0])
    ctx = stage_context(cfg)
    dataset = model_dataset(student_artifact, cfg.frame_cache_mb)
    settings = {k: v for k, v in artifact_config(cfg).items() if k != "baseline"}
    baseline = None
    if cfg.baseline:
        baseline = _finetune(student_artifact, dataset, dataset_artifact, workspace, ctx, cfg,
                             {"teacher": None, **settings, "beta": 0.0}, None, [], force, resume, progress, "baseline")
    teacher = MoETeacher(load_moe(moe, ctx, cache_mb=cfg.deformed_cache_mb), dataset, cfg, ctx, index)
    distilled = _finetune(student_artifact, dataset, dataset_artifact, workspace, ctx, cfg,
                          {"teacher": moe.id, **settings}, teacher, [("teacher", moe)], force, resume, progress,
                          "distill" if cfg.novel_views else "distill-train-views")
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
    ctx: RenderContext,
    cfg: DistillConfig,
    recipe: dict,
    teacher: MoETeacher | None,
    extra_inputs: list[tuple[str, Artifact]],
    force: bool,
    resume: bool,
    progress: bool,
    label: str,
) -> StageResult:
    writer = ArtifactWriter(
        workspace, student.scene, "expert", stage="distill", config=dict(student.config),
        inputs=[("dataset", dataset_artifact), ("student", student)] + extra_inputs, id_extra={"finetune": recipe},
    )

    def build(directory: Path, w: ArtifactWriter) -> None:
        expert = load_expert(student, ctx)
        original_config = expert.config
        expert.config = finetune_config(expert)
        result = train_expert(expert, dataset, directory, ctx, progress=progress, steps=cfg.steps, resume=resume,
                              checkpoint_every=cfg.checkpoint_every,
                              step_offset=student.config["iterations"], teacher=teacher,
                              label=f"{label} {expert.family}")
        expert.config = original_config  # the artifact keeps the family's own config
        finish_expert(expert, dataset, dataset_artifact, directory, w, ctx, progress=progress,
                      export_ply=False, train_seconds=student.metrics.get("train_seconds", 0.0) + result.seconds,
                      eval_frames=cfg.eval_frames)
        w.metrics.update({"finetune": label, "psnr_student_before": student.metrics.get("psnr"),
                          "finetune_steps": cfg.steps})
        w.extra["finetune"] = recipe

    return run_stage(writer, build, ctx=ctx, force=force, resume=resume)
