"""Rendering a model along camera sequences: MP4 and PNG frames, and for a mixture the gate-map video
and a grid of ground truth (where the camera has it), every expert, the blend and the gates."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v3 as iio
import numpy as np

from moegs.cameras import Camera
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.video import VideoWriter
from moegs.gaussians import save_ply
from moegs.progress import progress_bar
from moegs.renderable import Renderable
from moegs.visuals import expert_colors, gate_map, label_tile, tile_grid, to_uint8


@dataclass
class RenderConfig:
    """The ``render`` section."""

    cameras: Literal["test", "train", "path"] = "test"
    path: Literal["auto", "spiral", "interp", "orbit"] = "auto"
    """Novel path shape when cameras = path: auto (a spiral for forward-facing rigs, an orbit for
    surround rigs), a spiral in front of the rig, a slide through its cameras, or an orbit around the scene."""
    path_views: int | None = bounded(None, ge=1)
    """Views along the path (default: one per frame, so the scene plays while the camera moves)."""
    frame_start: int = bounded(0, ge=0)
    frame_stop: int | None = bounded(None, ge=1)
    frame_step: int = bounded(1, ge=1)
    """Render every k-th frame of the range (a quick preview of a long clip; by default the video keeps
    real time, at the capture's frame rate divided by k)."""
    fps: float | None = bounded(None, gt=0.0)
    png: bool = True
    export_ply: bool = False
    """Also write each rendered frame's Gaussians as standard 3DGS PLY (experts: one file; MoE: one per expert)."""
    tau: float | None = bounded(None, gt=0.0)
    """Test-time temperature of a MoE (default: the one it renders at, train-router's ``render_tau``)."""
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
    """Render one video (and its gate/grid companions for a MoE), encoding each frame as it is rendered
    and caching nothing (memory does not grow with the frame count); returns the files written.

    With ``ground_truth`` (``views`` are dataset cameras) the grid starts with the captured frame.
    """
    colors = expert_colors(len(model.families))
    png_dir = directory / name / "frames"
    fps = cfg.fps or (dataset.fps or 30.0) / cfg.frame_step
    steps = max(len(frames), len(views))
    with ExitStack() as stack, progress_bar(f"render {name}", steps, enabled=progress) as bar:
        videos: dict[str, VideoWriter] = {}

        def encode(suffix: str, image: np.ndarray) -> None:
            """Stream ``image`` into ``<name><suffix>.mp4`` (opened on first use; only the current frame is held)."""
            if suffix not in videos:
                videos[suffix] = stack.enter_context(VideoWriter(directory / f"{name}{suffix}.mp4", fps=fps))
            videos[suffix].write(image)

        for i in range(steps):
            frame = frames[i % len(frames)]
            camera = views[i % len(views)]
            t = float(dataset.times[frame])
            out = model.render_frame(camera, t, ctx, cache=False)  # each time is drawn once: a cache only fills
            image = to_uint8(out.image)
            encode("", image)
            if cfg.png:
                png_dir.mkdir(parents=True, exist_ok=True)
                iio.imwrite(png_dir / f"{i:05d}.png", image)
            if out.gates is not None:
                gmap = gate_map(out.gates, colors)
                tiles = [label_tile(dataset.frame(camera.name, frame), "ground truth")] if ground_truth else []
                tiles += [label_tile(to_uint8(img), fam) for img, fam in zip(out.expert_images, model.families)]
                tiles += [label_tile(image, "MoE"), label_tile(gmap, "gates")]
                grid = tile_grid(tiles)
                encode("_gates", gmap)
                encode("_grid", grid)
                if i == 0:
                    iio.imwrite(directory / f"{name}_grid.png", grid)
            if cfg.export_ply and i == 0:
                _export_ply(model, t, directory / name)
            bar.advance()
    return [f"{name}{suffix}.mp4" for suffix in videos]


def _export_ply(model: Renderable, t: float, directory: Path) -> None:
    """``gaussians.ply`` for an expert, ``gaussians_<k>_<family>.ply`` per expert of a mixture."""
    directory.mkdir(parents=True, exist_ok=True)
    sets = model.export_at(t)
    for name, params in sets:
        save_ply(directory / ("gaussians.ply" if len(sets) == 1 else f"gaussians_{name}.ply"), params)
