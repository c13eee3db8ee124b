"""The training loop every expert family reuses: sampling, optimisers, densification, checkpoints.

One (camera, frame) per step, 3DGS's per-parameter Adam groups and log-linear position schedule,
3DGS density control with its state passed in explicitly, and a checkpoint holding everything
(parameters, optimiser moments, densification statistics, RNG) so ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from moegs.cameras import Camera
from moegs.checkpoint import load_checkpoint, save_checkpoint
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.data.views import StreamedViews
from moegs.errors import CheckpointError
from moegs.experts.base import Expert
from moegs.losses import photometric, require_finite
from moegs.progress import progress_bar
from moegs.rendering import render_expert

log = logging.getLogger("moegs")
CHECKPOINT = "checkpoints/last.pt"


class Teacher(Protocol):
    """Pseudo ground truth for distillation: an image (and optional per-pixel weight) for any view.

    Every other step the student is rendered from one of ``novel_cameras`` (views with no ground
    truth, e.g. between the rig's cameras) and learns from the teacher alone there.
    """

    beta: float
    novel_cameras: list[Camera]

    def target(self, camera: Camera, frame: int) -> tuple[Tensor, Tensor | None]: ...


@dataclass
class TrainResult:
    seconds: float
    steps: int
    final_loss: float
    gaussians: int


FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""Where torch has a fused Adam kernel; elsewhere (mps, the tests' fake ``meta`` device) torch's default runs."""


def _adam(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam with 3DGS's eps as one fused kernel per tensor: torch's default on CPU is a loop of
    ~10 elementwise ops per tensor (2x the time on the fields' 30-odd tensors); same update rule."""
    fused = all(p.device.type in FUSED_ADAM_DEVICES for p in params)
    return torch.optim.Adam(params, lr=lr, eps=1e-15, fused=fused or None)


def make_optimizers(expert: Expert, extent: float) -> tuple[dict[str, torch.optim.Optimizer], torch.optim.Optimizer | None]:
    """One Adam per per-Gaussian tensor (the densification layout) and one for the fields."""
    lrs = expert.param_lrs(extent)
    per_gaussian = {k: _adam([p], lrs[k]) for k, p in expert.params.items()}
    field_params = [p for p in expert.fields.parameters() if p.requires_grad]
    fields = _adam(field_params, expert.config.lr_fields * extent) if field_params else None
    return per_gaussian, fields


def step_optimizers(optimizers: dict[str, torch.optim.Optimizer], fields_opt: torch.optim.Optimizer | None) -> None:
    """Apply and clear the gradients of every per-Gaussian optimiser and of the fields' one."""
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    if fields_opt is not None:
        fields_opt.step()
        fields_opt.zero_grad(set_to_none=True)


def train_expert(
    expert: Expert,
    dataset: Dataset,
    workdir: Path,
    ctx: RenderContext,
    *,
    resume: bool = False,
    checkpoint_every: int = 500,
    progress: bool = True,
    label: str | None = None,
    steps: int | None = None,
    step_offset: int = 0,
    teacher: Teacher | None = None,
) -> TrainResult:
    """Optimise ``expert`` (already on ``ctx.device``) on the training cameras of ``dataset``;
    checkpoints go to ``workdir``.

    ``steps`` (default ``config.iterations``) local steps are run; the expert's schedules see
    ``step_offset + step``, so a fine-tune (distillation) continues after its original run instead
    of replaying warm-ups and progressive windows. With a ``teacher`` the loss adds
    ``beta * L_rec(image, teacher image)``, optionally weighted per pixel, and every other step
    uses one of the teacher's novel views with that term alone.
    """
    cfg = expert.config
    steps = cfg.iterations if steps is None else steps
    extent = dataset.scene_extent
    views = StreamedViews(dataset, dataset.train_cameras, ctx.device)
    densify = cfg.densify
    optimizers, fields_opt = make_optimizers(expert, extent)
    state = densify.init_state(expert.num_gaussians, ctx.device)
    generator = torch.Generator().manual_seed(cfg.seed)  # every draw of training: torch's global one is not touched
    start = 0
    ckpt_path = Path(workdir) / CHECKPOINT
    if resume and ckpt_path.is_file():
        try:
            payload = load_checkpoint(ckpt_path, map_location=expert.device)
        except CheckpointError as exc:
            log.warning("%s; training %s from step 0", exc, expert.family)
        else:
            start, state, optimizers, fields_opt = _restore_checkpoint(payload, expert, extent, generator)
            log.info("%s: resumed at step %d", expert.family, start)
    background = ctx.tensor(cfg.background)
    began = time.perf_counter()
    last_loss: torch.Tensor | None = None
    with progress_bar(label or f"train {expert.family}", steps, enabled=progress) as bar:
        bar.advance(start)
        for local_step in range(start, steps):
            step = step_offset + local_step
            expert.on_step(step)
            _set_learning_rates(expert, optimizers, fields_opt, step, extent)
            cam_index, frame = views.sample(generator, expert.frame_limit(step))
            novel = teacher is not None and bool(teacher.novel_cameras) and local_step % 2 == 1
            camera = teacher.novel_cameras[cam_index % len(teacher.novel_cameras)] if novel else views.cameras[cam_index]
            t = float(dataset.times[frame])
            sh_degree = cfg.sh_degree if cfg.sh_every <= 0 else min(step // cfg.sh_every, cfg.sh_degree)
            expert.set_view(None if novel else cam_index)
            step_background = ctx.tensor(torch.rand(3, generator=generator)) if cfg.random_background else background
            out = render_expert(expert, camera, t, ctx, step_background, sh_degree=sh_degree, retain_grad=True,
                                cull_transparent=cfg.cull_transparent)
            loss = expert.regularisation(t)
            if not novel:
                gt = views.image(cam_index, frame)
                weight = views.loss_weight(cam_index, gt, cfg.motion_weight)
                loss = loss + photometric(out.image, gt, lambda_dssim=cfg.lambda_dssim, weight=weight)
            if teacher is not None:
                target, weight = teacher.target(camera, frame)
                loss = loss + teacher.beta * photometric(out.image, target, lambda_dssim=cfg.lambda_dssim, weight=weight)
            loss.backward()
            last_loss = loss.detach()  # read on the host only when shown (a read waits for a GPU)
            densifying = step < densify.stop
            if densifying and out.means2d.grad is not None:
                densify.accumulate(state, out.means2d.grad, out.radii, camera.width, camera.height)
            step_optimizers(optimizers, fields_opt)
            if densifying:
                stats = densify.densify_step(expert.params, optimizers, state, step + 1, extent, generator=generator)
                if stats["n_after"] != stats["n_before"]:
                    expert.after_densify()
            if (local_step + 1) % checkpoint_every == 0 and local_step + 1 < steps:
                require_finite(last_loss, expert.family, step)
                _save_checkpoint(ckpt_path, local_step + 1, expert, optimizers, fields_opt, state, generator)
            bar.advance()
            if local_step % 50 == 0:
                bar.set_postfix(f"loss={require_finite(last_loss, expert.family, step):.4f} N={expert.num_gaussians}")
    expert.set_view(None)  # renders after training are of any view (test cameras, paths)
    final_loss = float("nan") if last_loss is None else require_finite(last_loss, expert.family, steps - 1 + step_offset)
    return TrainResult(time.perf_counter() - began, steps - start, final_loss, expert.num_gaussians)


def _set_learning_rates(
    expert: Expert, optimizers: dict[str, torch.optim.Optimizer], fields_opt: torch.optim.Optimizer | None, step: int, extent: float
) -> None:
    scheduled = expert.scheduled_lrs(step, extent)
    for key, lr in scheduled.items():
        target = fields_opt if key == "fields" else optimizers.get(key)
        if target is not None:
            for group in target.param_groups:
                group["lr"] = lr


def _save_checkpoint(
    path: Path,
    step: int,
    expert: Expert,
    optimizers: dict[str, torch.optim.Optimizer],
    fields_opt: torch.optim.Optimizer | None,
    state: dict[str, Tensor],
    generator: torch.Generator,
) -> None:
    payload = {
        "step": step,
        "tensors": expert.state_tensors(),
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "fields_opt": fields_opt.state_dict() if fields_opt is not None else None,
        "densify": state,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(path, payload)


def _restore_checkpoint(
    payload: dict, expert: Expert, extent: float, generator: torch.Generator
) -> tuple[int, dict[str, Tensor], dict[str, torch.optim.Optimizer], torch.optim.Optimizer | None]:
    """Put the expert, fresh optimisers (with their saved moments) and the RNGs back as they were at the checkpoint."""
    tensors = payload["tensors"]
    expert.params = {
        k[len("params."):]: torch.nn.Parameter(v.clone().to(expert.device)) for k, v in tensors.items() if k.startswith("params.")
    }
    expert.fields.load_state_dict({k[len("fields."):]: v for k, v in tensors.items() if k.startswith("fields.")})
    expert.after_densify()
    optimizers, fields_opt = make_optimizers(expert, extent)
    for key, opt in optimizers.items():
        opt.load_state_dict(payload["optimizers"][key])
    if fields_opt is not None and payload["fields_opt"] is not None:
        fields_opt.load_state_dict(payload["fields_opt"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["step"]), payload["densify"], optimizers, fields_opt
