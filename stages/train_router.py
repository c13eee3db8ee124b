"""``moegs train-router``: K >= 2 frozen experts of one dataset (and one frame range) -> a ``moe`` artifact."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.cameras import Camera
from moegs.data.frame_range import frames_of
from moegs.errors import InputError
from moegs.experts.io import load_expert
from moegs.models import model_dataset
from moegs.moe.evaluate import evaluate_moe, evaluate_moe_psnr
from moegs.moe.io import check_mixable, save_router
from moegs.moe.model import MoEModel
from moegs.moe.render import FrozenExperts
from moegs.moe.router import PixelRouter
from moegs.moe.train import TrainRouterConfig, train_router
from moegs.rig_defaults import rig_render_tau
from stages.common import StageResult, artifact_config, run_stage, stage_context

__all__ = ["TrainRouterConfig", "run"]

log = logging.getLogger("moegs")


def run(
    cfg: TrainRouterConfig,
    expert_refs: list[str],
    workspace: Path,
    dataset_ref: str | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> StageResult:
    """Train the router over frozen experts and evaluate the blend on the test cameras."""
    expert_artifacts = [load_artifact(ref, workspace, expected_kind="expert") for ref in expert_refs]
    dataset_id = check_mixable(expert_artifacts)
    dataset_artifact = _dataset_of(expert_artifacts[0], dataset_ref, workspace, dataset_id)
    frames = frames_of(expert_artifacts[0])
    ctx = stage_context(cfg)
    inputs = [("dataset", dataset_artifact)] + [(f"expert{k}", a) for k, a in enumerate(expert_artifacts)]
    writer = ArtifactWriter(workspace, dataset_artifact.scene, "moe", stage="train-router",
                            config=artifact_config(cfg), inputs=inputs)

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = model_dataset(expert_artifacts[0], cfg.frame_cache_mb)
        experts = FrozenExperts([load_expert(a, ctx) for a in expert_artifacts], cache_mb=cfg.deformed_cache_mb)
        router = PixelRouter([e.num_gaussians for e in experts.experts],
                             gate_background=cfg.gate_background, seed=cfg.seed).to(ctx.device)
        model = MoEModel(experts, router, cfg.tau, expert_artifacts)
        history, seconds = train_router(model, dataset, cfg, ctx, progress=progress, workdir=directory, resume=resume)
        save_router(router, directory)
        (directory / "router_log.json").write_text(json.dumps(history, indent=2))
        shape, model.tau = _render_tau(cfg, dataset.train_cameras)
        w.metrics.update(evaluate_moe(model, dataset, directory, ctx, cfg.official_eval_tau, eval_frames=cfg.eval_frames,
                                      progress=progress))
        if model.tau != cfg.tau:  # what the training temperature would have scored, for comparison
            w.metrics["psnr_train_tau"] = evaluate_moe_psnr(model, dataset, ctx, cfg.tau, cfg.eval_frames, progress)
        w.metrics.update({"train_seconds": seconds, "render_tau": model.tau,
                          "rig": {"shape": shape, "train_cameras": len(dataset.train_cameras)}})  # as an expert's
        w.compat.update(
            {"dataset_id": dataset_id, "n_experts": len(expert_artifacts), "tau": model.tau,
             "n_frames": expert_artifacts[0].compat["n_frames"], "frames": frames.as_list(),
             "families": [a.compat["family"] for a in expert_artifacts]}
        )

    return run_stage(writer, build, ctx=ctx, force=force, resume=resume)


def _render_tau(cfg: TrainRouterConfig, train_cameras: list[Camera]) -> tuple[str, float]:
    """The rig shape and the temperature the mixture renders at (the config's, else the rig's default)."""
    shape, tau = rig_render_tau(train_cameras, cfg.tau)
    if cfg.render_tau is not None:
        return shape, cfg.render_tau
    if tau != cfg.tau:
        log.info("%s rig of %d training cameras, so the mixture renders at tau %g (trained at %g; softer gates "
                 "carry over to new views better; set render_tau to override)", shape, len(train_cameras), tau, cfg.tau)
    return shape, tau


def _dataset_of(expert: Artifact, dataset_ref: str | None, workspace: Path, dataset_id: str) -> Artifact:
    if dataset_ref is None:
        return expert.resolve_input(expert.input_refs("dataset")[0])
    dataset = load_artifact(dataset_ref, workspace, expected_kind="dataset")
    if dataset.id != dataset_id:
        raise InputError(f"--dataset {dataset.short_id} is not the dataset the experts were trained on ({dataset_id[:12]})")
    return dataset
