"""What a trained expert leaves in its artifact: weights, test-camera scores, a preview, optional PLYs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.frame_range import dataset_frames
from moegs.evaluation import evaluate_renderer, evaluation_frames
from moegs.experts.base import Expert
from moegs.experts.io import expert_compat, save_expert
from moegs.gaussians import save_ply


def finish_expert(
    expert: Expert,
    dataset: Dataset,
    dataset_artifact: Artifact,
    directory: Path,
    writer: ArtifactWriter,
    ctx: RenderContext,
    *,
    progress: bool,
    export_ply: bool,
    train_seconds: float,
    eval_frames: int,
) -> None:
    """Save weights, evaluate ``eval_frames`` spread frames of the test cameras (0 = all; metrics + preview
    video), optionally export PLYs."""
    expert.eval()
    save_expert(expert, directory)
    started = time.perf_counter()
    scores = evaluate_renderer(
        lambda camera, t: expert.render_frame(camera, t, ctx).image,
        dataset,
        frames=evaluation_frames(dataset.n_frames, eval_frames),
        video_path=directory / "preview.mp4",
        progress=progress,
        label=f"evaluate {expert.family}",
    )
    (directory / "eval.json").write_text(json.dumps(scores, indent=2))
    if export_ply:
        export_plys(expert, dataset, directory / "ply")
    writer.compat.update(expert_compat(expert, dataset_artifact.id, dataset_frames(dataset).as_list()))
    writer.metrics.update(
        {
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "region_psnr": scores["region_psnr"],
            "moving_psnr": scores.get("moving_psnr"),
            "eval_frames": scores["frames"],
            "per_frame_psnr": [e["psnr"] for e in scores["per_frame"]],
            "per_frame_ssim": [e["ssim"] for e in scores["per_frame"]],
            "gaussians": expert.num_gaussians,
            "megabytes": expert.megabytes(),
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started,
        }
    )


def export_plys(expert: Expert, dataset: Dataset, directory: Path) -> None:
    """One standard 3DGS PLY per frame, with the expert's motion applied (viewers open any frame)."""
    directory.mkdir(parents=True, exist_ok=True)
    for frame in range(dataset.n_frames):
        save_ply(directory / f"frame_{frame:05d}.ply", expert.export_params_at(float(dataset.times[frame])))
