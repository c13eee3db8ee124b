"""``moegs train-router``: K >= 2 frozen experts of one dataset -> a ``moe`` artifact."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact
from moegs.config import to_dict
from moegs.data.dataset import Dataset
from moegs.errors import InputError
from moegs.evaluation import evaluate_renderer
from moegs.experts.io import load_expert
from moegs.losses import photometric
from moegs.moe import MoEModel, check_mixable, save_router
from moegs.progress import progress_bar
from moegs.raster import resolve_backend
from moegs.rendering import TrainViews
from moegs.router import FrozenExperts, PixelRouter, render_moe
from stages.common import StageResult, run_stage

log = logging.getLogger("moegs")


@dataclass
class TrainRouterConfig:
    """The ``train_router`` section. Defaults follow the official N3V configs (RAdam, 5k steps)."""

    iterations: int = 5000
    tau: float = 0.01
    """Softmax temperature, used the same way in training and evaluation."""
    official_eval_tau: float = 1.0
    """Also report PSNR at this test-time temperature (the official code evaluates at tau = 1)."""
    lr_gates: float = 0.5
    lr_gates_final_ratio: float = 0.01
    lr_gates_decay_steps: int = 10000
    lr_time: float = 0.05
    lr_mlp: float = 0.05
    lambda_dssim: float = 0.2
    single_pass: bool = True
    backend: str = "auto"
    log_every: int = 50
    seed: int = 0


def run(
    cfg: TrainRouterConfig,
    expert_refs: list[str],
    workspace: Path,
    dataset_ref: str | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> StageResult:
    """Train the router over frozen experts and evaluate the blend on the test cameras."""
    if cfg.tau <= 0:
        raise InputError(f"tau must be positive, got {cfg.tau}")
    expert_artifacts = [load_artifact(ref, workspace, expected_kind="expert") for ref in expert_refs]
    dataset_id = check_mixable(expert_artifacts)
    dataset_artifact = _dataset_of(expert_artifacts[0], dataset_ref, workspace, dataset_id)
    backend = resolve_backend(cfg.backend)
    inputs = [("dataset", dataset_artifact)] + [(f"expert{k}", a) for k, a in enumerate(expert_artifacts)]
    config = {k: v for k, v in to_dict(cfg).items() if k != "backend"}
    writer = ArtifactWriter(workspace, dataset_artifact.scene, "moe", stage="train-router", config=config, inputs=inputs)

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = Dataset.load(dataset_artifact.path)
        experts = FrozenExperts([load_expert(a) for a in expert_artifacts])
        router = PixelRouter([e.num_gaussians for e in experts.experts])
        history, seconds = train_router(router, experts, dataset, cfg, backend, progress=progress)
        save_router(router, directory)
        (directory / "router_log.json").write_text(json.dumps(history, indent=2))
        model = MoEModel(experts, router, cfg.tau, expert_artifacts)
        w.metrics.update(evaluate_moe(model, dataset, directory, backend, cfg.official_eval_tau, progress=progress))
        w.metrics["train_seconds"] = seconds
        w.compat.update(
            {"dataset_id": dataset_id, "n_experts": len(expert_artifacts), "tau": cfg.tau,
             "n_frames": expert_artifacts[0].compat["n_frames"],
             "families": [a.compat["family"] for a in expert_artifacts]}
        )

    return run_stage(writer, build, force=force)


def _dataset_of(expert: Artifact, dataset_ref: str | None, workspace: Path, dataset_id: str) -> Artifact:
    if dataset_ref is None:
        return expert.resolve_input(expert.input_refs("dataset")[0])
    dataset = load_artifact(dataset_ref, workspace, expected_kind="dataset")
    if dataset.id != dataset_id:
        raise InputError(f"--dataset {dataset.short_id} is not the dataset the experts were trained on ({dataset_id[:12]})")
    return dataset


def router_optimizer(router: PixelRouter, cfg: TrainRouterConfig) -> torch.optim.Optimizer:
    """RAdam with the official groups: gates, time coefficients, decoder."""
    return torch.optim.RAdam(
        [
            {"params": list(router.gates), "lr": cfg.lr_gates, "name": "gates"},
            {"params": list(router.time_coefs), "lr": cfg.lr_time, "name": "time"},
            {"params": list(router.decoder.parameters()), "lr": cfg.lr_mlp, "name": "decoder"},
        ]
    )


def gate_lr(cfg: TrainRouterConfig, step: int) -> float:
    """Exponential decay of the gate learning rate to ``lr_gates_final_ratio`` over ``lr_gates_decay_steps``."""
    return cfg.lr_gates * cfg.lr_gates_final_ratio ** min(step / cfg.lr_gates_decay_steps, 1.0)


def train_router(
    router: PixelRouter,
    experts: FrozenExperts,
    dataset: Dataset,
    cfg: TrainRouterConfig,
    backend: str,
    *,
    progress: bool = True,
    iterations: int | None = None,
) -> tuple[list[dict], float]:
    """Optimise the router with 0.8 L1 + 0.2 D-SSIM; returns the log of mean gates per expert and the time taken."""
    views = TrainViews(dataset, dataset.train_cameras)
    rays = {cam.name: cam.rays() for cam in views.cameras}
    optimizer = router_optimizer(router, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.iterations if iterations is None else iterations
    history: list[dict] = []
    began = time.perf_counter()
    gate_sums = torch.zeros(len(experts))
    with progress_bar("train router", steps, enabled=progress) as bar:
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = gate_lr(cfg, step)
            cam_index, frame = views.sample(generator, dataset.n_frames)
            camera = views.cameras[cam_index]
            out = render_moe(experts, router, camera, float(dataset.times[frame]), tau=cfg.tau,
                             single_pass=cfg.single_pass, backend=backend, rays=rays[camera.name])
            loss = photometric(out.image, views.image(cam_index, frame), lambda_dssim=cfg.lambda_dssim)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            gate_sums += out.gates.detach().mean(dim=(1, 2))
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                mean_gates = (gate_sums / ((step % cfg.log_every) + 1)).tolist()
                history.append({"step": step + 1, "loss": float(loss.detach()), "mean_gate": mean_gates})
                bar.set_postfix("loss={:.4f} gates={}".format(float(loss.detach()), "/".join(f"{g:.2f}" for g in mean_gates)))
                gate_sums.zero_()
            bar.advance()
    return history, time.perf_counter() - began


@torch.no_grad()
def evaluate_moe(
    model: MoEModel, dataset: Dataset, directory: Path | None, backend: str, official_tau: float | None, *, progress: bool
) -> dict:
    """Blend PSNR/SSIM on the test cameras, per-region winners, the router's preferred expert per region,
    and (with ``official_tau``) the PSNR when evaluated at that temperature instead."""
    region_gates: dict[str, list[np.ndarray]] = {}
    names = dataset.region_names
    rays = {camera.name: camera.rays() for camera in dataset.test_cameras}

    def render(camera, t):
        out = render_moe(model.experts, model.router, camera, t, tau=model.tau, backend=backend, rays=rays[camera.name])
        labels = dataset.labels(camera.name)
        if labels is not None:
            frame = int(round(t * dataset.n_frames))
            lab = labels[frame]
            for region_id in np.unique(lab):
                name = names[region_id] if names and region_id < len(names) else str(region_id)
                mask = torch.as_tensor(lab == region_id)
                region_gates.setdefault(name, []).append(out.gates[:, mask].mean(dim=1).numpy())
        return out.image

    video = None if directory is None else directory / "preview.mp4"
    scores = evaluate_renderer(render, dataset, video_path=video, progress=progress, label="evaluate moe")
    families = [a.compat.get("family", f"expert{k}") for k, a in enumerate(model.expert_artifacts)]
    metrics = {
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "region_psnr": scores["region_psnr"],
        "gaussians": sum(model.num_gaussians),
        "gaussians_per_expert": model.num_gaussians,
        "megabytes": model.num_floats() * 4 / 1e6,
        "families": families,
        "expert_psnr": [a.metrics.get("psnr") for a in model.expert_artifacts],
        "region_winner": _region_winner(model.expert_artifacts, families),
        "router_preference": {
            region: families[int(np.argmax(np.mean(values, axis=0)))] for region, values in region_gates.items()
        },
        "region_mean_gates": {region: np.mean(values, axis=0).tolist() for region, values in region_gates.items()},
    }
    if official_tau is not None and official_tau != model.tau:
        soft = MoEModel(model.experts, model.router, official_tau, model.expert_artifacts)
        metrics["psnr_official_tau"] = evaluate_renderer(
            lambda camera, t: render_moe(soft.experts, soft.router, camera, t, tau=official_tau, backend=backend).image,
            dataset, progress=progress, label=f"evaluate moe tau={official_tau:g}",
        )["psnr"]
    if directory is not None:
        (directory / "eval.json").write_text(json.dumps(scores, indent=2))
    return metrics


def _region_winner(experts: list[Artifact], families: list[str]) -> dict[str, str]:
    """The expert with the best PSNR in each labelled region (from the experts' own evaluations)."""
    regions = set().union(*(a.metrics.get("region_psnr", {}).keys() for a in experts))
    return {
        region: families[int(np.argmax([a.metrics.get("region_psnr", {}).get(region, -np.inf) for a in experts]))]
        for region in sorted(regions)
    }
