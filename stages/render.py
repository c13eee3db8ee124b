"""``moegs render``: videos and PNG frames of an expert or a MoE (with gate maps and an expert grid);
a chunked model renders as one continuous video over the whole sequence."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio

from moegs.artifacts import ArtifactWriter, load_artifact
from moegs.camera_path import make_path, rig_shape
from moegs.cameras import Camera
from moegs.data.dataset import Dataset
from moegs.data.frame_range import dataset_frames
from moegs.errors import InputError
from moegs.models import MODEL_KINDS, dataset_of, load_model, model_dataset
from moegs.render_views import RenderConfig, render_sequence
from moegs.visuals import legend_image
from stages.common import StageResult, artifact_config, run_stage, stage_context

__all__ = ["RenderConfig", "run"]


def run(cfg: RenderConfig, model_ref: str, workspace: Path, *, force: bool = False, progress: bool = True) -> StageResult:
    model_artifact = load_artifact(model_ref, workspace)
    if model_artifact.kind not in MODEL_KINDS:
        raise InputError(f"{model_artifact.path}: render takes an expert, moe or chunked artifact, not a {model_artifact.kind}")
    dataset_artifact = dataset_of(model_artifact)
    ctx = stage_context(cfg)
    writer = ArtifactWriter(workspace, model_artifact.scene, "render", stage="render", config=artifact_config(cfg),
                            inputs=[("model", model_artifact), ("dataset", dataset_artifact)])

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = model_dataset(model_artifact, cache_mb=0)  # each ground-truth frame is read once
        model = load_model(model_artifact, ctx, tau=cfg.tau)
        frames = _frame_range(cfg, dataset.n_frames)
        outputs = []
        for name, views in _camera_sequences(cfg, dataset, len(frames)).items():
            outputs.extend(render_sequence(model, dataset, name, views, frames, directory, cfg, ctx, progress,
                                           ground_truth=cfg.cameras != "path"))
        if len(model.families) > 1:
            iio.imwrite(directory / "legend.png", legend_image(model.families))
        w.metrics.update({"videos": outputs, "frames": len(frames), "model_kind": model_artifact.kind,
                          "dataset_frames": str(dataset_frames(dataset))})
        w.compat.update({"dataset_id": dataset_artifact.id})

    return run_stage(writer, build, ctx=ctx, force=force)


def _frame_range(cfg: RenderConfig, n_frames: int) -> list[int]:
    stop = n_frames if cfg.frame_stop is None else min(cfg.frame_stop, n_frames)
    if not 0 <= cfg.frame_start < stop:
        raise InputError(f"frame range [{cfg.frame_start}, {cfg.frame_stop}) is empty for {n_frames} frames")
    return list(range(cfg.frame_start, stop, cfg.frame_step))


def _camera_sequences(cfg: RenderConfig, dataset: Dataset, n_frames: int) -> dict[str, list[Camera]]:
    """For each output video, the camera of every frame (fixed cameras repeat; a path moves)."""
    if cfg.cameras == "path":
        n_views = cfg.path_views or n_frames
        views = make_path(cfg.path, dataset.train_cameras, n_views)
        name = cfg.path if cfg.path != "auto" else ("spiral" if rig_shape(dataset.train_cameras) == "forward" else "orbit")
        return {name: [views[i % n_views] for i in range(max(n_frames, n_views))]}
    cameras = dataset.test_cameras if cfg.cameras == "test" else dataset.train_cameras
    return {cam.name: [cam] * n_frames for cam in cameras}
