"""``moegs prune``: gate-aware pruning of a MoE -> a smaller ``moe`` artifact that plugs in anywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.evaluation import evaluation_frames
from moegs.models import model_dataset
from moegs.moe.evaluate import evaluate_moe
from moegs.moe.io import load_moe, save_pruned_experts, save_router
from moegs.moe.prune import PruneConfig, apply_pruning, gate_aware_scores, keep_masks, score_views, snapshot
from moegs.moe.train import TrainRouterConfig, train_router
from stages.common import StageResult, artifact_config, run_stage, stage_context

__all__ = ["PruneConfig", "run"]


def run(cfg: PruneConfig, moe_ref: str, workspace: Path, *, force: bool = False, resume: bool = False,
        progress: bool = True) -> StageResult:
    if cfg.threshold is None and cfg.keep_fraction is None:
        cfg = dataclasses.replace(cfg, keep_fraction=0.5)
    source = load_artifact(moe_ref, workspace, expected_kind="moe")
    ctx = stage_context(cfg)
    inputs = [("source", source)] + [(e["role"], source.resolve_input(e)) for e in source.manifest["inputs"]
                                     if e["kind"] in ("dataset", "expert")]
    writer = ArtifactWriter(workspace, source.scene, "moe", stage="prune", config=artifact_config(cfg), inputs=inputs)

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = model_dataset(source)
        model = load_moe(source, ctx)
        frames = evaluation_frames(dataset.n_frames, cfg.eval_frames)
        views = score_views(dataset.train_cameras, dataset.n_frames, cfg.frame_stride, cfg.score_views)
        before = snapshot(model, dataset, ctx, frames)
        trained = _router_training(source)
        router_weight = float(trained.config.get("motion_weight", 0.0))
        strength = router_weight if cfg.motion_weight is None else cfg.motion_weight
        scores = gate_aware_scores(model, dataset, views, ctx, progress, strength)
        apply_pruning(model, keep_masks(scores, cfg), cfg.gate_background)
        if cfg.finetune_steps > 0:
            known = TrainRouterConfig.__dataclass_fields__
            router_cfg = TrainRouterConfig(**{k: v for k, v in trained.config.items() if k in known})
            scale = cfg.finetune_lr_scale
            router_cfg = dataclasses.replace(router_cfg, lr_gates=router_cfg.lr_gates * scale,
                                             lr_time=router_cfg.lr_time * scale, lr_mlp=router_cfg.lr_mlp * scale)
            train_router(model, dataset, router_cfg, ctx, progress=progress, iterations=cfg.finetune_steps,
                         workdir=directory, resume=resume, label="fine-tune router")
        save_router(model.router, directory)
        save_pruned_experts(model.experts.experts, directory)
        metrics = evaluate_moe(model, dataset, directory, ctx, None, eval_frames=cfg.eval_frames, progress=progress)
        after = snapshot(model, dataset, ctx, frames)
        metrics.update(
            {
                "psnr_before": source.metrics.get("psnr"),
                "psnr_change": metrics["psnr"] - source.metrics.get("psnr", float("nan")),
                "gaussians_before": before["gaussians"],
                "gaussians_after": after["gaussians"],
                "megabytes_before": before["megabytes"],
                "megabytes_after": after["megabytes"],
                "fps_before": before["fps"],
                "fps_after": after["fps"],
                "removed_fraction": 1 - sum(after["gaussians"]) / max(sum(before["gaussians"]), 1),
                "scored_views": len(views),
                "score_motion_weight": strength,
                "router_motion_weight": router_weight,
            }
        )
        w.metrics.update(metrics)
        w.compat.update({**source.compat, "pruned": True})

    return run_stage(writer, build, ctx=ctx, force=force, resume=resume)


def _router_training(source: Artifact) -> Artifact:
    """The artifact whose config trained this MoE's router (its motion weight, learning rates): a pruned
    MoE points back through its sources, so a prune of a prune fine-tunes as the first one did."""
    while source.manifest.get("created_by", {}).get("stage") == "prune":
        source = source.resolve_input(next(e for e in source.manifest["inputs"] if e["role"] == "source"))
    return source
