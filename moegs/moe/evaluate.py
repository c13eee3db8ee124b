"""Scoring a mixture on the test cameras: blend quality, per-region winners and the router's choices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moegs.artifacts import Artifact
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.evaluation import evaluate_renderer, evaluation_frames
from moegs.moe.model import MoEModel


@torch.no_grad()
def evaluate_moe(
    model: MoEModel, dataset: Dataset, directory: Path | None, ctx: RenderContext, official_tau: float | None, *,
    eval_frames: int, progress: bool
) -> dict:
    """Blend PSNR/SSIM on ``eval_frames`` spread frames of the test cameras (0 = all), per-region winners, the
    router's preferred expert per region, and (with ``official_tau``) the PSNR when evaluated at that
    temperature instead."""
    frames = evaluation_frames(dataset.n_frames, eval_frames)
    region_gates: dict[str, list[np.ndarray]] = {}
    names = dataset.region_names
    rays = {camera.name: camera.rays(ctx.device) for camera in dataset.test_cameras}

    def render(camera, t):
        out = model.blend(camera, t, ctx, rays=rays[camera.name])
        labels = dataset.labels(camera.name)
        if labels is not None:
            frame = int(round(t * dataset.n_frames))
            lab = labels[frame]
            gates = out.gates.cpu()
            for region_id in np.unique(lab):
                name = names[region_id] if names and region_id < len(names) else str(region_id)
                mask = torch.as_tensor(lab == region_id)
                region_gates.setdefault(name, []).append(gates[:, mask].mean(dim=1).numpy())
        return out.image

    video = None if directory is None else directory / "preview.mp4"
    scores = evaluate_renderer(render, dataset, frames=frames, video_path=video, progress=progress,
                               label="evaluate moe")
    families = [a.compat.get("family", f"expert{k}") for k, a in enumerate(model.expert_artifacts)]
    metrics = {
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "region_psnr": scores["region_psnr"],
        "gaussians": model.num_gaussians,
        "gaussians_per_expert": model.gaussians_per_expert,
        "megabytes": model.megabytes(),
        "eval_frames": frames,
        "families": families,
        "expert_psnr": [a.metrics.get("psnr") for a in model.expert_artifacts],
        "region_winner": region_winner(model.expert_artifacts, families),
        "router_preference": {
            region: families[int(np.argmax(np.mean(values, axis=0)))] for region, values in region_gates.items()
        },
        "region_mean_gates": {region: np.mean(values, axis=0).tolist() for region, values in region_gates.items()},
    }
    if official_tau is not None:  # a mixture rendering at the official temperature already is not scored twice
        metrics["psnr_official_tau"] = (scores["psnr"] if official_tau == model.tau
                                        else evaluate_moe_psnr(model, dataset, ctx, official_tau, eval_frames, progress))
    if directory is not None:
        (directory / "eval.json").write_text(json.dumps(scores, indent=2))
    return metrics


@torch.no_grad()
def evaluate_moe_psnr(model: MoEModel, dataset: Dataset, ctx: RenderContext, tau: float, eval_frames: int,
                      progress: bool) -> float:
    """The blend's mean PSNR on the test cameras at temperature ``tau`` instead of its own."""
    return evaluate_renderer(
        lambda camera, t: model.blend(camera, t, ctx, tau=tau).image, dataset,
        frames=evaluation_frames(dataset.n_frames, eval_frames), progress=progress, label=f"evaluate moe tau={tau:g}",
    )["psnr"]


def region_winner(experts: list[Artifact], families: list[str]) -> dict[str, str]:
    """The expert with the best PSNR in each labelled region (from the experts' own evaluations)."""
    regions = set().union(*(a.metrics.get("region_psnr", {}).keys() for a in experts))
    return {
        region: families[int(np.argmax([a.metrics.get("region_psnr", {}).get(region, -np.inf) for a in experts]))]
        for region in sorted(regions)
    }
