"""Gate-aware pruning of a mixture: score every Gaussian by its share of the blend, keep the best.

Each Gaussian i of expert k is scored by what it adds to the *blended* image over the training
views: r_i^k = sum over views and pixels of w(p) * gate^k(p) * alpha_i * T_i(p). A Gaussian that is
opaque but sits where the router never picks its expert scores ~0 and goes, with its gate rows.
w is the router's own L1 weight (:func:`moegs.losses.motion_weight`, 1 everywhere without it): a
small moving object covers few pixels, so by area alone its Gaussians rank below the background's
and are pruned first, undoing what the motion-weighted router and experts learnt.
The views are a bounded sample spread over cameras and frames (``score_views``), so the work does
not grow with the capture (19 training cameras x 300 frames is 5700 renders at N3V size).

The Gaussians removed are mostly where their expert is not chosen, and they carried low gates
(median 0.6 on the demo MoE, against 1.1 for those kept). With the paper's gate-map background of
1, the holes they leave read as a *strong* vote, so the router moved 5% of the pixels onto the
holed experts: -8.3 dB on the demo MoE, while blending the pruned experts with the unpruned gates
lost only 0.33 dB. A pruned MoE therefore splats its gates over ``gate_background`` (0: no Gaussians,
no vote), which left that MoE's unpruned blend within 0.06 dB and the pruned one at -0.85 dB
before the router fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moegs.cameras import Camera
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.errors import InputError
from moegs.data.dataset import Dataset
from moegs.data.views import StreamedViews
from moegs.data.init_points import spread_indices
from moegs.densify import remove_gaussians
from moegs.evaluation import EVAL_FRAMES, measure_fps
from moegs.moe.model import MoEModel
from moegs.progress import progress_bar
from moegs.raster import GaussianSet, rasterize_multi


SCORE_VIEWS = 256
"""Default cap on the views scored: every view of the demo preset (9 cameras x 24 frames), 1 in 22 at N3V size."""


@dataclass
class PruneConfig:
    """The ``prune`` section: give keep_fraction or threshold."""

    keep_fraction: float | None = bounded(None, gt=0.0, le=1.0)
    """Keep this share of all Gaussians, ranked jointly across experts by their blended contribution
    (0.5 when neither this nor ``threshold`` is given)."""
    threshold: float | None = bounded(None, ge=0.0)
    """Instead: remove Gaussians whose contribution per training view is below this (in pixels, each
    weighted as in ``motion_weight``)."""
    motion_weight: float | None = bounded(None, ge=0.0)
    """Moving content counts up to ``1 + motion_weight`` times in the scores, as in the router's L1
    (:func:`moegs.losses.motion_weight`; 0: by area alone). None: the MoE's own ``motion_weight``."""
    frame_stride: int = bounded(1, ge=1)
    """Score on every n-th frame of every training camera..."""
    score_views: int = bounded(SCORE_VIEWS, ge=0)
    """... or at most this many of those (camera, frame) views, spread evenly over both (0 = all)."""
    finetune_steps: int = bounded(0, ge=0)
    """Router fine-tuning steps after pruning (0 = none)."""
    finetune_lr_scale: float = bounded(0.2, gt=0.0)
    """The fine-tune's learning rates as a share of those the router was trained with: it starts
    from a trained router, which full-size steps knock about (demo MoE at keep 0.5, 100 steps:
    -0.27 dB at 1, -0.07 at 0.2; on the test view's every third frame, two sampling seeds:
    -0.36 / -0.45 dB at 1, -0.12 / -0.23 with the gates' rate alone at 0.2)."""
    gate_background: float = 0.0
    """What an expert's gate maps read where it has no Gaussians left (the paper's router uses 1;
    pruning leaves holes, and 1 there pulls the router onto the holed expert)."""
    eval_frames: int = bounded(EVAL_FRAMES, ge=0)
    """Test frames the pruned blend is scored on, spread evenly (0 = every frame)."""
    device: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_config(self)
        if self.keep_fraction is not None and self.threshold is not None:
            raise InputError("give one of --keep-fraction and --threshold, not both")


@torch.no_grad()
def gate_aware_scores(model: MoEModel, dataset: Dataset, views: list[tuple[Camera, int]], ctx: RenderContext,
                      progress: bool, motion_strength: float = 0.0) -> list[torch.Tensor]:
    """r_i^k averaged over ``views`` (camera, frame), per expert [N_k]: each Gaussian's share of the blended image
    in pixels, moving content weighted up by ``motion_strength`` (0: every pixel counts once)."""
    scores = [torch.zeros(n, device=ctx.device) for n in model.gaussians_per_expert]
    cameras = list({camera.name: camera for camera, _ in views}.values())
    frames = StreamedViews(dataset, cameras, ctx.device, prefetch=False)  # the router's weight, made as it was
    index = {camera.name: i for i, camera in enumerate(cameras)}
    with progress_bar("score gaussians", len(views), enabled=progress) as bar:
        for camera, frame in views:
            t = float(dataset.times[frame])
            gates = model.blend(camera, t, ctx).gates
            if motion_strength:
                i = index[camera.name]
                gates = gates * frames.loss_weight(i, frames.image(i, frame), motion_strength)
            gs = [model.experts.at(k, t, camera) for k in range(len(model.experts))]
            sets = [GaussianSet(g.means, g.quats, g.scales, g.opacities, g.opacities[:, None]) for g in gs]
            out = rasterize_multi(sets, camera.viewmat_tensor(ctx.device), camera.K_tensor(ctx.device),
                                  camera.width, camera.height, near=camera.near, far=camera.far, backend=ctx.backend,
                                  return_contrib=True, contrib_weight=gates)
            for k, contrib in enumerate(out.contrib):
                scores[k] += contrib
            bar.advance()
    return [s / len(views) for s in scores]


def score_views(cameras: list[Camera], n_frames: int, frame_stride: int, limit: int) -> list[tuple[Camera, int]]:
    """Every ``frame_stride``-th frame of every camera, or ``limit`` of those spread evenly (0 = all).

    The views are taken at even steps through the camera-major list, so each camera gets its share
    and, as the step is not a multiple of the frame count, at frames that differ from camera to camera.
    """
    views = [(cam, f) for cam in cameras for f in range(0, n_frames, frame_stride)]
    if limit == 0 or limit >= len(views):
        return views
    return [views[i] for i in spread_indices(len(views), limit)]


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


def apply_pruning(model: MoEModel, masks: list[torch.Tensor], gate_background: float) -> None:
    """Remove the pruned rows from every per-Gaussian tensor of each expert and from the router's gate
    tables, and set the gate maps' background (see the module docstring)."""
    for k, (expert, keep) in enumerate(zip(model.experts.experts, masks)):
        remove_gaussians(expert.params, {}, ~keep)
        expert.after_densify()
        model.router.keep_rows(k, keep)
    model.router.gate_background.fill_(gate_background)
    model.experts.clear()


def snapshot(model: MoEModel, dataset: Dataset, ctx: RenderContext, frames: list[int]) -> dict:
    """Gaussians per expert, storage and render speed on the first test camera at ``frames`` (pass the same
    before and after)."""
    fps = measure_fps(lambda cam, t: model.render_frame(cam, t, ctx, cache=False).image,
                      dataset.test_cameras[0], [float(dataset.times[f]) for f in frames])
    return {"gaussians": model.gaussians_per_expert, "megabytes": model.megabytes(), "fps": fps}
