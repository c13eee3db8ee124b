"""``moegs preprocess``: raw capture (videos or frames + calibration) -> ``dataset`` artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from moegs.artifacts import ArtifactWriter, fingerprint_tree
from moegs.config import to_dict
from moegs.errors import InputError
from stages.common import StageResult, run_stage

Format = Literal["n3v", "technicolor", "multiview"]


@dataclass
class PreprocessConfig:
    """How to turn a capture into a dataset (the ``preprocess`` section of a config file)."""

    format: Format = "n3v"
    frame_start: int = 0
    frame_stop: int | None = None
    downscale: float = 1.0
    """Divide every image size by this (2 = half resolution, as usual for N3V); intrinsics follow."""
    max_width: int | None = None
    """Also cap each camera's width at this many pixels."""
    truncate: bool = False
    size_mismatch: Literal["refuse", "keep", "scale", "crop"] = "refuse"
    init: Literal["colmap", "random"] = "colmap"
    colmap_frames: int = 1
    test_cameras: list[str] | None = None


def run(
    config: PreprocessConfig,
    source: Path,
    workspace: Path,
    scene: str | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> StageResult:
    """Build (or find) the dataset artifact of ``source`` under ``workspace/<scene>/dataset/``."""
    from moegs.data.build import build_dataset

    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: source folder not found")
    if config.downscale < 1:
        raise InputError(f"downscale is a divisor and must be >= 1, got {config.downscale}")
    if config.max_width is not None and config.max_width < 16:
        raise InputError(f"max_width must be at least 16 pixels, got {config.max_width}")
    writer = ArtifactWriter(
        workspace,
        scene or source.resolve().name,
        "dataset",
        stage="preprocess",
        config=to_dict(config),
        id_extra={"source": fingerprint_tree(source)},
    )

    def build(directory: Path, w: ArtifactWriter) -> None:
        summary = build_dataset(
            source,
            config.format,
            directory,
            frame_start=config.frame_start,
            frame_stop=config.frame_stop,
            downscale=config.downscale,
            max_width=config.max_width,
            truncate=config.truncate,
            size_mismatch=None if config.size_mismatch == "refuse" else config.size_mismatch,
            init=config.init,
            colmap_frames=config.colmap_frames,
            test_cameras=config.test_cameras,
            progress=progress,
        )
        w.metrics.update(summary["metrics"])
        w.compat.update(summary["compat"])
        w.extra["source"] = str(source.resolve())

    return run_stage(writer, build, force=force)
