"""Training the router over frozen experts: RAdam groups, the gate schedule, the loop.

The loop checkpoints like expert training (router, optimiser moments, sampler RNG, log, step), so
an interrupted train-router or prune fine-tune continues with ``--resume`` exactly where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from moegs.checkpoint import load_checkpoint, save_checkpoint
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.data.dataset import FRAME_CACHE_MB, Dataset
from moegs.data.views import StreamedViews
from moegs.errors import CheckpointError
from moegs.evaluation import EVAL_FRAMES
from moegs.losses import photometric, require_finite
from moegs.moe.model import MoEModel
from moegs.moe.render import DEFORMED_CACHE_MB
from moegs.moe.router import PAPER_GATE_BACKGROUND, PixelRouter
from moegs.progress import progress_bar

log = logging.getLogger("moegs")
ROUTER_CHECKPOINT = "checkpoints/router.pt"


@dataclass
class TrainRouterConfig:
    """The ``train_router`` section. Defaults follow the official N3V configs (RAdam, 5k steps)."""

    iterations: int = bounded(5000, ge=1)
    tau: float = bounded(0.01, gt=0.0)
    """Softmax temperature of the gates in training."""
    render_tau: float | None = bounded(None, gt=0.0)
    """Temperature the finished mixture renders at: its evaluation, render, bench, prune, distill and
    the viewer. None: ``tau`` (the same in training and evaluation), but 1.0 on surround rigs
    (:mod:`moegs.rig_defaults`: softer gates carry over to far-away viewpoints better)."""
    official_eval_tau: float = bounded(1.0, gt=0.0)
    """Also report PSNR at this test-time temperature (the official code evaluates at tau = 1)."""
    lr_gates: float = bounded(0.5, ge=0.0)
    lr_gates_final_ratio: float = bounded(0.01, gt=0.0, le=1.0)
    lr_gates_decay_steps: int = bounded(10000, ge=1)
    lr_time: float = bounded(0.05, ge=0.0)
    lr_mlp: float = bounded(0.05, ge=0.0)
    lambda_dssim: float = bounded(0.2, ge=0.0, le=1.0)
    motion_weight: float = bounded(0.0, ge=0.0)
    """Weight moving content up in the L1 term, as the experts' ``motion_weight``
    (:func:`moegs.losses.motion_weight`): the gates then follow the expert best on the moving objects
    there instead of the one best on the background around them. 0: plain L1."""
    gate_background: float = PAPER_GATE_BACKGROUND
    """What an expert's gate maps read where it has no Gaussians: 1 as in the paper's code; 0 makes an
    expert with nothing at a pixel cast no vote there (what a pruned MoE uses). Measured at 0: demo
    MoE 31.10 dB against 31.09 at 1, and it prunes the same (-0.09 dB against -0.07); tiny surround
    preset held-out view 17.92-17.99 against 17.88-18.00 (150 and 400 steps, a second seed): no gain."""
    single_pass: bool = True
    deformed_cache_mb: float = bounded(DEFORMED_CACHE_MB, ge=0.0)
    """Budget of the frozen experts' deformed Gaussians (LRU; they are reused across cameras and steps)."""
    frame_cache_mb: float = bounded(FRAME_CACHE_MB, ge=0.0)
    """Budget of the dataset's decoded frames (LRU)."""
    eval_frames: int = bounded(EVAL_FRAMES, ge=0)
    """Test frames the blend is scored on after training, spread evenly (0 = every frame)."""
    device: str = "auto"
    backend: str = "auto"
    log_every: int = bounded(50, ge=1)
    checkpoint_every: int = bounded(500, ge=1)
    """Steps between checkpoints for --resume (does not change the result, so not part of the id)."""
    seed: int = bounded(0, ge=0)
    """Draws the training views and the pixel decoder's initial weights: one config, one router."""

    def __post_init__(self) -> None:
        check_config(self)


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
    model: MoEModel,
    dataset: Dataset,
    cfg: TrainRouterConfig,
    ctx: RenderContext,
    *,
    progress: bool = True,
    iterations: int | None = None,
    workdir: Path | None = None,
    resume: bool = False,
    label: str = "train router",
) -> tuple[list[dict], float]:
    """Optimise the router with 0.8 L1 + 0.2 D-SSIM; returns the log of mean gates per expert and the time taken.

    With ``workdir`` a checkpoint is written there every ``cfg.checkpoint_every`` steps, and
    ``resume`` continues from it (a damaged one is reported and training starts over).
    """
    views = StreamedViews(dataset, dataset.train_cameras, ctx.device)
    rays = {cam.name: cam.rays(ctx.device) for cam in views.cameras}
    optimizer = router_optimizer(model.router, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.iterations if iterations is None else iterations
    history: list[dict] = []
    gate_sums = torch.zeros(len(model.experts), device=ctx.device)
    start, earlier_seconds = 0, 0.0
    ckpt_path = None if workdir is None else Path(workdir) / ROUTER_CHECKPOINT
    if resume and ckpt_path is not None and ckpt_path.is_file():
        try:
            payload = load_checkpoint(ckpt_path, map_location=ctx.device)
        except CheckpointError as exc:
            log.warning("%s; training the router from step 0", exc)
        else:
            model.router.load_state_dict(payload["router"])
            optimizer.load_state_dict(payload["optimizer"])
            generator.set_state(payload["generator"])
            gate_sums.copy_(payload["gate_sums"])
            start, history, earlier_seconds = int(payload["step"]), payload["history"], float(payload["seconds"])
            log.info("router: resumed at step %d", start)
    began = time.perf_counter()
    with progress_bar(label, steps, enabled=progress) as bar:
        bar.advance(start)
        for step in range(start, steps):
            optimizer.param_groups[0]["lr"] = gate_lr(cfg, step)
            cam_index, frame = views.sample(generator, dataset.n_frames)
            camera = views.cameras[cam_index]
            out = model.blend(camera, float(dataset.times[frame]), ctx, tau=cfg.tau,
                              single_pass=cfg.single_pass, rays=rays[camera.name])
            target = views.image(cam_index, frame)
            weight = views.loss_weight(cam_index, target, cfg.motion_weight)
            loss = photometric(out.image, target, lambda_dssim=cfg.lambda_dssim, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            gate_sums += out.gates.detach().mean(dim=(1, 2))
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                mean_gates = (gate_sums / ((step % cfg.log_every) + 1)).tolist()
                value = require_finite(loss, "router", step)
                history.append({"step": step + 1, "loss": value, "mean_gate": mean_gates})
                bar.set_postfix("loss={:.4f} gates={}".format(value, "/".join(f"{g:.2f}" for g in mean_gates)))
                gate_sums.zero_()
            if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                require_finite(loss, "router", step)
                save_checkpoint(ckpt_path, {
                    "step": step + 1, "router": model.router.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "gate_sums": gate_sums, "history": history,
                    "seconds": earlier_seconds + time.perf_counter() - began,
                })
            bar.advance()
    return history, earlier_seconds + time.perf_counter() - began
