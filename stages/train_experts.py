"""``moegs train-experts``: one independent ``expert`` artifact per family, trained on one dataset."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.config import build_config, to_dict
from moegs.data.dataset import Dataset
from moegs.errors import InputError, MoegsError
from moegs.evaluation import evaluate_renderer
from moegs.experts import DYNAMIC_FAMILIES, get_family
from moegs.experts.base import Expert
from moegs.experts.io import expert_compat, save_expert
from moegs.gaussians import save_ply
from moegs.raster import resolve_backend
from moegs.rendering import render_expert
from moegs.train import train_expert
from stages.common import StageResult, run_stage

log = logging.getLogger("moegs")


@dataclass
class TrainExpertsConfig:
    """The ``train_experts`` section: which families, and per-family settings (``hexplane: {iterations: ...}``)."""

    families: list[str] = field(default_factory=lambda: list(DYNAMIC_FAMILIES))
    backend: str = "auto"
    checkpoint_every: int = 500
    export_ply: bool = False
    hexplane: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)
    polynomial: dict[str, Any] = field(default_factory=dict)
    keyframe: dict[str, Any] = field(default_factory=dict)
    static: dict[str, Any] = field(default_factory=dict)


@dataclass
class FamilyOutcome:
    family: str
    result: StageResult | None
    error: str | None


def family_config(cfg: TrainExpertsConfig, family: str) -> Any:
    cls = get_family(family)
    return build_config(cls.config_class, getattr(cfg, family), prefix=f"{family}.")


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
    if not cfg.families:
        raise InputError("no expert families requested (--experts)")
    configs = {family: family_config(cfg, family) for family in cfg.families}  # validate all before training any
    backend = resolve_backend(cfg.backend)
    dataset = Dataset.load(dataset_artifact.path)
    outcomes = []
    for family, family_cfg in configs.items():
        try:
            result = train_one(family, family_cfg, dataset, dataset_artifact, workspace, backend,
                               cfg, force=force, resume=resume, progress=progress)
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
    family_cfg: Any,
    dataset: Dataset,
    dataset_artifact: Artifact,
    workspace: Path,
    backend: str,
    cfg: TrainExpertsConfig,
    *,
    force: bool,
    resume: bool,
    progress: bool,
) -> StageResult:
    cls = get_family(family)
    writer = ArtifactWriter(
        workspace, dataset_artifact.scene, "expert", stage="train-experts",
        config={"family": family, **to_dict(family_cfg)},
        inputs=[("dataset", dataset_artifact)],
    )

    def build(directory: Path, w: ArtifactWriter) -> None:
        points = dataset.points
        expert = cls.from_points(family_cfg, points.xyz, points.rgb, points.time, dataset.n_frames)
        result = train_expert(expert, dataset, directory, backend=backend, resume=resume,
                              checkpoint_every=cfg.checkpoint_every, progress=progress, label=f"train {family}")
        expert.eval()
        finish_expert(expert, dataset, dataset_artifact, directory, w, backend, progress=progress,
                      export_ply=cfg.export_ply, train_seconds=result.seconds)

    return run_stage(writer, build, force=force, resume=resume)


def finish_expert(
    expert: Expert,
    dataset: Dataset,
    dataset_artifact: Artifact,
    directory: Path,
    writer: ArtifactWriter,
    backend: str,
    *,
    progress: bool,
    export_ply: bool,
    train_seconds: float,
) -> None:
    """Save weights, evaluate on the test cameras (metrics + preview video), optionally export PLYs."""
    save_expert(expert, directory)
    started = time.perf_counter()
    scores = evaluate_renderer(
        lambda camera, t: render_expert(expert, camera, t, backend=backend).image,
        dataset,
        video_path=directory / "preview.mp4",
        progress=progress,
        label=f"evaluate {expert.family}",
    )
    (directory / "eval.json").write_text(json.dumps(scores, indent=2))
    if export_ply:
        export_plys(expert, dataset, directory / "ply")
    writer.compat.update(expert_compat(expert, dataset_artifact.id))
    writer.metrics.update(
        {
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "region_psnr": scores["region_psnr"],
            "moving_psnr": scores.get("moving_psnr"),
            "per_frame_psnr": [e["psnr"] for e in scores["per_frame"]],
            "per_frame_ssim": [e["ssim"] for e in scores["per_frame"]],
            "gaussians": expert.num_gaussians,
            "megabytes": expert.num_floats() * 4 / 1e6,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started,
        }
    )


def export_plys(expert: Expert, dataset: Dataset, directory: Path) -> None:
    """One standard 3DGS PLY per frame, with the expert's motion applied (viewers open any frame)."""
    directory.mkdir(parents=True, exist_ok=True)
    for frame in range(dataset.n_frames):
        save_ply(directory / f"frame_{frame:05d}.ply", expert.export_params_at(float(dataset.times[frame])))
