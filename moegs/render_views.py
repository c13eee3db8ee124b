"""Rendering a model along camera sequences: MP4 and PNG frames, and for a mixture the gate-map video
and a grid of ground truth (where the camera has it), every expert, the blend and the gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v3 as iio

from moegs.cameras import Camera
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.video import write_video
from moegs.gaussians import save_ply
from moegs.progress import progress_bar
from moegs.renderable import Renderable
from moegs.visuals import expert_colors, gate_map, label_tile, tile_grid, to_uint8


@dataclass
class RenderConfig:
    """The ``render`` section."""

    cameras: Literal["test", "train", "path"] = "test"
    path: Literal["spiral", "interp"] = "spiral"
    """Novel path shape when cameras = path: a spiral around the rig, or a slide through its cameras."""
    path_views: int | None = bounded(None, ge=1)
    """Views along the path (default: one per frame, so the scene plays while the camera moves)."""
    frame_start: int = bounded(0, ge=0)
    frame_stop: int | None = bounded(None, ge=1)
    fps: float | None = bounded(None, gt=0.0)
    png: bool = True
    export_ply: bool = False
    """Also write each rendered frame's Gaussians as standard 3DGS PLY (experts: one file; MoE: one per expert)."""
    tau: float | None = bounded(None, gt=0.0)
    """Test-time temperature of a MoE (default: the one it was trained with)."""
    device: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_config(self)


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
    ground_truth: bool,
) -> list[str]:
    """Render one video (and its gate/grid companions for a MoE); returns the files written.

    With ``ground_truth`` (``views`` are dataset cameras) the grid starts with the captured frame.
    """
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
                tiles = [label_tile(dataset.frame(camera.name, frame), "ground truth")] if ground_truth else []
                tiles += [label_tile(to_uint8(img), fam) for img, fam in zip(out.expert_images, model.families)]
                tiles += [label_tile(image, "MoE"), label_tile(gmap, "gates")]
                grids.append(tile_grid(tiles))
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
