"""``polynomial``: SpacetimeGaussians "lite" with SH colour (Li et al., CVPR 2024), as MoE-GS uses it.

Each Gaussian lives around a temporal centre mu_tau. With dt = t - mu_tau (normalised time):

- position  mu(t) = mu + b1 dt + b2 dt^2 + b3 dt^3          (STG's cubic, n_p = 3)
- rotation  q(t)  = q + omega dt, normalised by the base     (STG's linear, n_q = 1)
- opacity   sigmoid(o) * exp(-(dt / exp(s_tau))^2)           (temporal radial basis)

Colour is the shared SH of the core, not STG's feature splatting + decoder: the MoE-GS authors
swapped STG's features for SH colour to fit a common 3DGS rasteriser, and STG's own ablation
("Ours-SH") shows the cost is small.

Differences from the official code, on purpose:

- STG gives clones and splits a random mu_tau ~ U(0, 1). Our shared densification copies the parent's
  row; :meth:`PolynomialExpert.after_densify` then finds the copies (a frozen per-Gaussian
  ``row_id``, duplicated with its row) and redraws their mu_tau. A clone's parent keeps its centre, as
  in STG; of a split's two samples the first keeps the parent's centre (STG redraws both).
- No N3V-specific pruning (z < 4.5, bounding box), no omega freezing at 8k steps and no guided
  sampling: they are dataset heuristics outside the motion model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from moegs.errors import InputError
from moegs.experts.base import Expert, ExpertConfig
from moegs.experts.temporal import temporal_rbf


@dataclass
class PolynomialConfig(ExpertConfig):
    """STG's motion settings; learning rates are the official ones (see the reference notes, section 5)."""

    init_t_log_scale: float = 0.0
    """Initial temporal log-scale s_tau. STG's N3V value 0 (width 1 = the whole clip) keeps points seen
    only in the first frame visible throughout; Technicolor uses -2 (width e^-2 of the clip)."""
    static_t_log_scale: float | None = None
    """Initial s_tau of the seeds on the static background (:func:`moegs.data.point_motion.moving_points`);
    ``init_t_log_scale`` is then that of the seeds on moving content. None: one value for all (STG).
    A background seed lives the whole clip, a moving one only around its instant, where it is right."""
    lr_t_center: float = 1e-4
    lr_t_log_scale: float = 3e-2
    lr_motion: float = 2.8e-4
    """Polynomial coefficients b1..b3; multiplied by the scene extent (STG: 1.6e-4 * E * 0.5 * 3.5), constant."""
    lr_omega: float = 1e-4
    clone_random_center: bool = True
    """Densification children get mu_tau ~ U(0, 1) (STG), so new Gaussians cover other instants;
    False: they keep their parent's."""


class PolynomialExpert(Expert):
    """Per-Gaussian polynomial motion and temporal RBF opacity: no network, so very fast to evaluate.

    Per-Gaussian tensors beyond the core: ``t_center`` [N] (mu_tau), ``t_log_scale`` [N] (s_tau),
    ``motion`` [N, 3, 3] (rows b1, b2, b3), ``omega`` [N, 4] and ``row_id`` [N] (frozen: learning rate 0;
    unique after every densification, so a repeated id marks a new copy).
    """

    family = "polynomial"
    config_class = PolynomialConfig
    paper = "Spacetime Gaussian Feature Splatting (Li et al., CVPR 2024), lite variant with SH colour"
    config: PolynomialConfig

    @classmethod
    def init_per_gaussian(
        cls, config: ExpertConfig, params: dict[str, Tensor], times: Tensor, n_frames: int, moving: Tensor
    ) -> dict[str, Tensor]:
        """mu_tau = the time each point was observed (STG keeps every SfM point's frame time); motion 0;
        s_tau = ``init_t_log_scale``, or ``static_t_log_scale`` on the static seeds when it is set."""
        config = cast(PolynomialConfig, config)
        n = params["means"].shape[0]
        times = times.reshape(-1).to(params["means"])
        if times.shape[0] != n:
            raise InputError(f"polynomial: got {times.shape[0]} point times for {n} points")
        t_log_scale = times.new_full((n,), config.init_t_log_scale)
        if config.static_t_log_scale is not None:
            t_log_scale[~moving.to(torch.bool).reshape(-1)] = config.static_t_log_scale
        return {
            "t_center": times.clone(),
            "t_log_scale": t_log_scale,
            "motion": times.new_zeros((n, 3, 3)),
            "omega": times.new_zeros((n, 4)),
            "row_id": torch.arange(n, dtype=times.dtype, device=times.device),
        }

    @classmethod
    def wants_moving_points(cls, config: ExpertConfig) -> bool:
        return cast(PolynomialConfig, config).static_t_log_scale is not None

    def deform(self, t: float) -> dict[str, Tensor]:
        """STG's evaluation. dt is detached in the motion terms as in the official code, so mu_tau is
        learnt from the opacity alone: a Gaussian cannot slide its time centre to fake motion."""
        p = self.params
        dt = t - p["t_center"]
        dt_motion = dt.detach()[:, None]
        b = p["motion"]
        means = p["means"] + dt_motion * (b[:, 0] + dt_motion * (b[:, 1] + dt_motion * b[:, 2]))
        return {
            "means": means,
            "log_scales": p["log_scales"],
            "quats": p["quats"] + dt_motion * p["omega"],
            "opacity_logits": p["opacity_logits"],
            "opacity_factor": temporal_rbf(dt, p["t_log_scale"]),
        }

    def extra_lrs(self, extent: float) -> dict[str, float]:
        c = self.config
        return {
            "t_center": c.lr_t_center,
            "t_log_scale": c.lr_t_log_scale,
            "motion": c.lr_motion * extent,
            "omega": c.lr_omega,
            "row_id": 0.0,
        }

    @torch.no_grad()
    def after_densify(self) -> None:
        """Give the rows densification just copied a random temporal centre (STG), then renumber rows."""
        p = self.params
        ids = p["row_id"]
        if self.config.clone_random_center:
            copies = repeated_rows(ids)
            n_copies = int(copies.sum())
            if n_copies:
                # seeded by the count, so a resumed run draws the same centres
                generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + ids.shape[0])
                p["t_center"][copies] = torch.rand(n_copies, generator=generator).to(ids)
        ids.copy_(torch.arange(ids.shape[0], dtype=ids.dtype, device=ids.device))


def repeated_rows(ids: Tensor) -> Tensor:
    """Mask [N] of the rows whose id also occurs in an earlier row (the first occurrence stays False)."""
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids[order]
    repeated_sorted = torch.zeros_like(sorted_ids, dtype=torch.bool)
    repeated_sorted[1:] = sorted_ids[1:] == sorted_ids[:-1]
    mask = torch.zeros_like(repeated_sorted)
    mask[order] = repeated_sorted
    return mask
