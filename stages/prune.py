"""``moegs prune``: gate-aware pruning of a MoE -> a smaller ``moe`` artifact that plugs in anywhere.

Each Gaussian i of expert k is scored by what it adds to the *blended* image over the training
views: r_i^k = sum over views and pixels of gate^k(p) * alpha_i * T_i(p). A Gaussian that is
opaque but sits where the router never picks its expert scores ~0 and goes, with its gate rows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from moegs.artifacts import ArtifactWriter, load_artifact
from moegs.config import to_dict
from moegs.data.dataset import Dataset
from moegs.densify import remove_gaussians
from moegs.errors import InputError
from moegs.evaluation import measure_fps
from moegs.moe import MoEModel, load_moe, save_pruned_experts, save_router
from moegs.progress import progress_bar
from moegs.raster import GaussianSet, rasterize_multi, resolve_backend
from moegs.router import render_moe
from stages.common import StageResult, run_stage
from stages.train_router import TrainRouterConfig, evaluate_moe, train_router

log = logging.getLogger("moegs")


@dataclass
class PruneConfig:
    """The ``prune`` section: give keep_fraction or threshold."""

    keep_fraction: float | None = None
    """Keep this share of all Gaussians, ranked jointly across experts by their blended contribution
    (0.5 when neither this nor ``threshold`` is given)."""
    threshold: float | None = None
    """Instead: remove Gaussians whose contribution per training view is below this (in pixels)."""
    frame_stride: int = 1
    """Score on every n-th frame of every training camera."""
    finetune_steps: int = 0
    """Router fine-tuning steps after pruning (0 = none)."""
    backend: str = "auto"


@torch.no_grad()
def gate_aware_scores(model: MoEModel, dataset: Dataset, frame_stride: int, backend: str, progress: bool) -> list[torch.Tensor]:
    """r_i^k averaged over the scored views, per expert [N_k]: each Gaussian's share of the blended image in pixels."""
    scores = [torch.zeros(n) for n in model.num_gaussians]
    frames = list(range(0, dataset.n_frames, frame_stride))
    views = [(cam, f) for cam in dataset.train_cameras for f in frames]
    with progress_bar("score gaussians", len(views), enabled=progress) as bar:
        for camera, frame in views:
            t = float(dataset.times[frame])
            gates = render_moe(model.experts, model.router, camera, t, tau=model.tau, backend=backend).gates
            gs = [model.experts.at(k, t, camera) for k in range(len(model.experts))]
            sets = [GaussianSet(g.means, g.quats, g.scales, g.opacities, g.opacities[:, None]) for g in gs]
            out = rasterize_multi(sets, camera.viewmat_tensor(), camera.K_tensor(), camera.width, camera.height,
                                  near=camera.near, far=camera.far, backend=backend,
                                  return_contrib=True, contrib_weight=gates)
            for k, contrib in enumerate(out.contrib):
                scores[k] += contrib
            bar.advance()
    return [s / len(views) for s in scores]


def keep_masks(scores: list[torch.Tensor], cfg: PruneConfig) -> list[torch.Tensor]:
    """Which Gaussians survive: the top ``keep_fraction`` jointly across experts, or those above ``threshold``."""
    if cfg.threshold is not None:
        return [s >= cfg.threshold for s in scores]
    joint = torch.cat(scores)
    n_keep = max(1, int(round(cfg.keep_fraction * joint.numel())))
    cutoff = torch.topk(joint, n_keep).values.min()
    masks = [s >= cutoff for s in scores]
    surplus = int(sum(int(m.sum()) for m in masks)) - n_keep  # ties at the cutoff
    for m, s in zip(masks, scores):
        if surplus <= 0:
            break
        tied = torch.nonzero(m & (s == cutoff)).squeeze(-1)[:surplus]
        m[tied] = False
        surplus -= tied.numel()
    return [_at_least_one(m, s) for m, s in zip(masks, scores)]


def _at_least_one(mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """An expert keeps its best Gaussian, so the mixture stays well formed (K experts, K gate tables)."""
    if not mask.any():
        mask = mask.clone()
        mask[torch.argmax(score)] = True
    return mask


def apply_pruning(model: MoEModel, masks: list[torch.Tensor]) -> None:
    """Remove the pruned rows from every per-Gaussian tensor of each expert and from the router's gate tables."""
    for k, (expert, keep) in enumerate(zip(model.experts.experts, masks)):
        remove_gaussians(expert.params, {}, ~keep)
        expert.after_densify()
        model.router.keep_rows(k, keep)
    model.experts.clear()


def run(cfg: PruneConfig, moe_ref: str, workspace: Path, *, force: bool = False, progress: bool = True) -> StageResult:
    if cfg.keep_fraction is not None and cfg.threshold is not None:
        raise InputError("give one of --keep-fraction and --threshold, not both")
    if cfg.threshold is None:
        cfg = dataclasses.replace(cfg, keep_fraction=0.5 if cfg.keep_fraction is None else cfg.keep_fraction)
        if not 0 < cfg.keep_fraction <= 1:
            raise InputError(f"keep_fraction must be in (0, 1], got {cfg.keep_fraction}")
    if cfg.frame_stride < 1:
        raise InputError(f"frame_stride must be >= 1, got {cfg.frame_stride}")
    source = load_artifact(moe_ref, workspace, expected_kind="moe")
    backend = resolve_backend(cfg.backend)
    inputs = [("source", source)] + [(e["role"], source.resolve_input(e)) for e in source.manifest["inputs"]
                                     if e["kind"] in ("dataset", "expert")]
    config = {k: v for k, v in to_dict(cfg).items() if k != "backend"}
    writer = ArtifactWriter(workspace, source.scene, "moe", stage="prune", config=config, inputs=inputs)

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = Dataset.load(source.resolve_input(source.input_refs("dataset")[0]).path)
        model = load_moe(source)
        before = _snapshot(model, dataset, backend)
        scores = gate_aware_scores(model, dataset, cfg.frame_stride, backend, progress)
        masks = keep_masks(scores, cfg)
        apply_pruning(model, masks)
        if cfg.finetune_steps > 0:
            router_cfg = TrainRouterConfig(**{k: v for k, v in source.config.items() if k in TrainRouterConfig.__dataclass_fields__})
            train_router(model.router, model.experts, dataset, router_cfg, backend, progress=progress, iterations=cfg.finetune_steps)
        save_router(model.router, directory)
        save_pruned_experts(model.experts.experts, directory)
        metrics = evaluate_moe(model, dataset, directory, backend, None, progress=progress)
        after = _snapshot(model, dataset, backend)
        metrics.update(
            {
                "psnr_before": source.metrics.get("psnr"),
                "psnr_change": metrics["psnr"] - source.metrics.get("psnr", float("nan")),
                "gaussians_before": before["gaussians"],
                "gaussians_after": after["gaussians"],
                "megabytes_before": before["megabytes"],
                "megabytes_after": after["megabytes"],
                "fps_before": before["fps"],
                "fps_after": after["fps"],
                "removed_fraction": 1 - sum(after["gaussians"]) / max(sum(before["gaussians"]), 1),
            }
        )
        w.metrics.update(metrics)
        w.compat.update({**source.compat, "pruned": True})

    return run_stage(writer, build, force=force)


def _snapshot(model: MoEModel, dataset: Dataset, backend: str) -> dict:
    """Gaussians per expert, storage and render speed on the first test camera (same views before and after)."""
    camera = dataset.test_cameras[0]
    times = [float(t) for t in dataset.times]
    model.experts.use_cache = False
    fps = measure_fps(
        lambda cam, t: render_moe(model.experts, model.router, cam, t, tau=model.tau, backend=backend).image, camera, times
    )
    model.experts.use_cache = True
    return {"gaussians": list(model.num_gaussians), "megabytes": model.num_floats() * 4 / 1e6, "fps": fps}
