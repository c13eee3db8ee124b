"""``moegs render``: videos and PNG frames of an expert or a MoE (with gate maps and an expert grid)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v3 as iio
import numpy as np

from moegs.artifacts import ArtifactWriter, load_artifact
from moegs.camera_path import interpolated_path, spiral_path
from moegs.cameras import Camera
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.video import write_video
from moegs.errors import InputError
from moegs.gaussians import save_ply
from moegs.models import dataset_of, load_model
from moegs.progress import progress_bar
from moegs.renderable import Renderable
from moegs.visuals import expert_colors, gate_map, label_tile, legend_image, to_uint8
from stages.common import StageResult, artifact_config, run_stage, stage_context


@dataclass
class RenderConfig:
    """The ``render`` section."""

    cameras: Literal["test", "train", "path"] = "test"
    path: Literal["spiral", "interp"] = "spiral"
    """Novel path shape when cameras = path: a spiral around the rig, or a slide through its cameras."""
    path_views: int | None = None
    """Views along the path (default: one per frame, so the scene plays while the camera moves)."""
    frame_start: int = 0
    frame_stop: int | None = None
    fps: float | None = None
    png: bool = True
    export_ply: bool = False
    """Also write each rendered frame's Gaussians as standard 3DGS PLY (experts: one file; MoE: one per expert)."""
    tau: float | None = None
    """Test-time temperature of a MoE (default: the one it was trained with)."""
    device: str = "auto"
    backend: str = "auto"


def run(cfg: RenderConfig, model_ref: str, workspace: Path, *, force: bool = False, progress: bool = True) -> StageResult:
    model_artifact = load_artifact(model_ref, workspace)
    if model_artifact.kind not in ("expert", "moe"):
        raise InputError(f"{model_artifact.path}: render takes an expert or a moe artifact, not a {model_artifact.kind}")
    dataset_artifact = dataset_of(model_artifact)
    ctx = stage_context(cfg)
    writer = ArtifactWriter(workspace, model_artifact.scene, "render", stage="render", config=artifact_config(cfg),
                            inputs=[("model", model_artifact), ("dataset", dataset_artifact)])

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = Dataset.load(dataset_artifact.path)
        model = load_model(model_artifact, ctx, tau=cfg.tau)
        frames = _frame_range(cfg, dataset.n_frames)
        outputs = []
        for name, views in _camera_sequences(cfg, dataset, len(frames)).items():
            outputs.extend(render_sequence(model, dataset, name, views, frames, directory, cfg, ctx, progress))
        if len(model.families) > 1:
            iio.imwrite(directory / "legend.png", legend_image(model.families))
        w.metrics.update({"videos": outputs, "frames": len(frames), "model_kind": model_artifact.kind})
        w.compat.update({"dataset_id": dataset_artifact.id})

    return run_stage(writer, build, ctx=ctx, force=force)


def _frame_range(cfg: RenderConfig, n_frames: int) -> list[int]:
    stop = n_frames if cfg.frame_stop is None else min(cfg.frame_stop, n_frames)
    if not 0 <= cfg.frame_start < stop:
        raise InputError(f"frame range [{cfg.frame_start}, {cfg.frame_stop}) is empty for {n_frames} frames")
    return list(range(cfg.frame_start, stop))


def _camera_sequences(cfg: RenderConfig, dataset: Dataset, n_frames: int) -> dict[str, list[Camera]]:
    """For each output video, the camera of every frame (fixed cameras repeat; a path moves)."""
    if cfg.cameras == "path":
        n_views = cfg.path_views or n_frames
        make = spiral_path if cfg.path == "spiral" else interpolated_path
        views = make(dataset.train_cameras, n_views)
        return {cfg.path: [views[i % n_views] for i in range(max(n_frames, n_views))]}
    cameras = dataset.test_cameras if cfg.cameras == "test" else dataset.train_cameras
    return {cam.name: [cam] * n_frames for cam in cameras}


def render_sequence(
    model: Renderable,
    dataset: Dataset,
    name: str,
    views: list[Camera],
    frames: list[int],
    directory: Path,
    cfg: RenderConfig,
    ctx: RenderContext,
    progress: bool,
) -> list[str]:
    """Render one video (and its gate/grid companions for a MoE); returns the files written."""
    colors = expert_colors(len(model.families))
    rgb, gates, grids = [], [], []
    png_dir = directory / name / "frames"
    steps = max(len(frames), len(views))
    with progress_bar(f"render {name}", steps, enabled=progress) as bar:
        for i in range(steps):
            frame = frames[i % len(frames)]
            camera = views[i % len(views)]
            t = float(dataset.times[frame])
            out = model.render_frame(camera, t, ctx)
            image = to_uint8(out.image)
            rgb.append(image)
            if cfg.png:
                png_dir.mkdir(parents=True, exist_ok=True)
                iio.imwrite(png_dir / f"{i:05d}.png", image)
            if out.gates is not None:
                gmap = gate_map(out.gates, colors)
                gates.append(gmap)
                tiles = [label_tile(to_uint8(img), fam) for img, fam in zip(out.expert_images, model.families)]
                tiles += [label_tile(image, "MoE"), label_tile(gmap, "gates")]
                grids.append(_grid(tiles))
            if cfg.export_ply and i == 0:
                _export_ply(model, t, directory / name)
            bar.advance()
    fps = cfg.fps or dataset.fps or 30.0
    written = [f"{name}.mp4"]
    write_video(directory / f"{name}.mp4", rgb, fps=fps)
    if gates:
        write_video(directory / f"{name}_gates.mp4", gates, fps=fps)
        write_video(directory / f"{name}_grid.mp4", grids, fps=fps)
        iio.imwrite(directory / f"{name}_grid.png", grids[0])
        written += [f"{name}_gates.mp4", f"{name}_grid.mp4"]
    return written


def _export_ply(model: Renderable, t: float, directory: Path) -> None:
    """``gaussians.ply`` for an expert, ``gaussians_<k>_<family>.ply`` per expert of a mixture."""
    directory.mkdir(parents=True, exist_ok=True)
    sets = model.export_at(t)
    for name, params in sets:
        save_ply(directory / ("gaussians.ply" if len(sets) == 1 else f"gaussians_{name}.ply"), params)


def _grid(tiles: list[np.ndarray], columns: int = 3) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return canvas
