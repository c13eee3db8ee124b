"""``moegs preprocess``: raw capture (videos or frames + calibration) -> ``dataset`` artifact."""

from __future__ import annotations

from pathlib import Path

from moegs.artifacts import ArtifactWriter, fingerprint_tree
from moegs.config import to_dict
from moegs.data.preprocess_config import PreprocessConfig
from moegs.errors import InputError
from stages.common import StageResult, run_stage

__all__ = ["PreprocessConfig", "run"]


def run(
    config: PreprocessConfig,
    source: Path,
    workspace: Path,
    scene: str | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> StageResult:
    """Build (or find) the dataset artifact of ``source`` under ``workspace/<scene>/dataset/``.

    The manifest's ``init`` entry says which initial points were used and why (see
    :mod:`moegs.data.init_points`).
    """
    from moegs.data.build import build_dataset
    from moegs.data.dataset import FRAMES_DIR
    from moegs.data.frame_store import SUFFIX

    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: source folder not found")
    config.validate()
    writer = ArtifactWriter(
        workspace,
        scene or source.resolve().name,
        "dataset",
        stage="preprocess",
        config=to_dict(config),
        id_extra={"source": fingerprint_tree(source)},
    )

    def build(directory: Path, w: ArtifactWriter) -> None:
        summary = build_dataset(source, directory, config, progress=progress)
        w.checked_on_read.update(p.relative_to(directory).as_posix() for p in (directory / FRAMES_DIR).glob("*" + SUFFIX))
        w.metrics.update(summary["metrics"])
        w.compat.update(summary["compat"])
        w.extra["source"] = str(source.resolve())
        w.extra["init"] = summary["init"]

    return run_stage(writer, build, force=force)
