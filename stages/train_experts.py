"""``moegs train-experts``: one independent ``expert`` artifact per family, trained on one dataset
(or on one frame range of it: a chunk of a long sequence)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.config import to_dict
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.frame_range import FrameRange, dataset_frames, parse_frames, select_frames
from moegs.data.point_motion import moving_points
from moegs.errors import MoegsError
from moegs.expert_output import finish_expert
from moegs.experts import get_family
from moegs.experts.base import ExpertConfig, resolved_background
from moegs.experts.settings import TrainExpertsConfig, family_config
from moegs.rig_defaults import applied_defaults, rig_expert_defaults
from moegs.train import train_expert
from stages.common import StageResult, run_stage, stage_context

log = logging.getLogger("moegs")


@dataclass
class FamilyOutcome:
    family: str
    result: StageResult | None
    error: str | None


def run(
    cfg: TrainExpertsConfig,
    dataset_ref: str | Path,
    workspace: Path,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[FamilyOutcome]:
    """Train every requested family; a family that fails is reported and the others still run."""
    dataset_artifact = load_artifact(dataset_ref, workspace, expected_kind="dataset")
    whole = Dataset.load(dataset_artifact.path, cfg.frame_cache_mb)
    dataset = select_frames(whole, parse_frames(cfg.frames, whole.n_frames, what="frames"))
    train_cameras = dataset.train_cameras
    shape, defaults = rig_expert_defaults(train_cameras)
    mean_colour = functools.cache(lambda: dataset.mean_colour(train_cameras))
    requested = {family: family_config(cfg, family, defaults) for family in cfg.families}
    configs = {family: resolved_background(config, mean_colour) for family, config in requested.items()}
    rigs = {family: {"shape": shape, "train_cameras": len(train_cameras),
                     "defaults": applied_defaults(defaults, getattr(cfg, family))}
            for family in cfg.families}
    for family, rig in rigs.items():
        if rig["defaults"]:
            log.info("%s: %s rig of %d training cameras, so %s (set it in the config to override)",
                     family, shape, len(train_cameras), ", ".join(f"{k}={v}" for k, v in rig["defaults"].items()))
        if configs[family].background != requested[family].background:
            log.info("%s: background mean = %s (the training views' mean colour)", family, configs[family].background)
    ctx = stage_context(cfg)
    outcomes = []
    for family, family_cfg in configs.items():
        try:
            result = train_one(family, family_cfg, dataset, dataset_artifact, workspace, ctx,
                               cfg, force=force, resume=resume, progress=progress, rig=rigs[family])
            outcomes.append(FamilyOutcome(family, result, None))
        except MoegsError as exc:
            log.error("%s failed: %s", family, exc)
            outcomes.append(FamilyOutcome(family, None, str(exc)))
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            log.exception("%s crashed", family)
            outcomes.append(FamilyOutcome(family, None, f"{type(exc).__name__}: {exc}"))
    return outcomes


def train_one(
    family: str,
    family_cfg: ExpertConfig,
    dataset: Dataset,
    dataset_artifact: Artifact,
    workspace: Path,
    ctx: RenderContext,
    cfg: TrainExpertsConfig,
    *,
    force: bool,
    resume: bool,
    progress: bool,
    rig: dict | None = None,
) -> StageResult:
    """``rig``: the rig's shape and the defaults it set in ``family_cfg``, recorded in the manifest's metrics."""
    cls = get_family(family)
    frames = dataset_frames(dataset)
    whole = frames == FrameRange(0, int(dataset_artifact.compat["n_frames"]))  # whole-sequence ids stay as they were
    writer = ArtifactWriter(
        workspace, dataset_artifact.scene, "expert", stage="train-experts",
        config={"family": family, **to_dict(family_cfg)},
        inputs=[("dataset", dataset_artifact)], id_extra=None if whole else {"frames": frames.as_list()},
    )
    label = f"train {family}" if whole else f"train {family} {frames}"

    def build(directory: Path, w: ArtifactWriter) -> None:
        points = dataset.points
        moving = moving_points(dataset, points, dataset.train_cameras) if cls.wants_moving_points(family_cfg) else None
        expert = cls.from_points(family_cfg, points.xyz, points.rgb, points.time, dataset.n_frames,
                                 moving=moving).placed(ctx.device)
        result = train_expert(expert, dataset, directory, ctx, resume=resume,
                              checkpoint_every=cfg.checkpoint_every, progress=progress, label=label)
        finish_expert(expert, dataset, dataset_artifact, directory, w, ctx, progress=progress,
                      export_ply=cfg.export_ply, train_seconds=result.seconds, eval_frames=cfg.eval_frames)
        if rig is not None:
            w.metrics["rig"] = rig
        if moving is not None:
            w.metrics["moving_seeds"] = int(moving.sum())

    return run_stage(writer, build, ctx=ctx, force=force, resume=resume)
