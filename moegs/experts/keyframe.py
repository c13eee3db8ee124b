"""``keyframe``: Fully Explicit Dynamic Gaussian Splatting, Ex4DGS (Lee et al., NeurIPS 2024).

One model holds two populations, told apart by the per-Gaussian ``dynamic`` flag:

- *static* Gaussians: the canonical mean plus a small linear velocity d, mu(t) = x + d t (Ex4DGS's
  x + d t / L with t in frames and L the training duration; here t is the normalised time). d is
  the evidence a static Gaussian "wants" to move and drives the static -> dynamic conversion;
- *dynamic* Gaussians: positions and rotations stored at keyframes every ``keyframe_interval``
  frames, cubic Hermite position with Catmull-Rom tangents and slerp rotation in between, and
  Ex4DGS's two-sided temporal opacity (fully visible between an appear and a vanish time, a
  temporal Gaussian outside). Keyframe positions are stored as OFFSETS from the canonical mean, so
  a split (which moves the canonical mean) moves the whole track with it.

Training is progressive over frames (:meth:`KeyframeExpert.frame_limit`): when the window grows,
keyframes past the trained ones are extrapolated linearly as in Ex4DGS. After every window
extension (as Ex4DGS) and every ``convert_every`` steps, the static Gaussians with the largest
||d|| become dynamic, their keyframes continuing their linear motion exactly, so the image does not
change at the conversion.

Simplifications, on purpose: the conversion score is ||d|| (Ex4DGS divides by the squared distance
to the camera of the worst view and considers visible Gaussians only, which the expert hooks do
not see); static and dynamic Gaussians share the core learning rates (Ex4DGS gives static
rotations 1e-5 and dynamic opacities 0.01) and the densification threshold; no point backtracking
(pruning by accumulated error: it needs per-Gaussian error sums from the rasteriser, which the
expert hooks do not get).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from moegs import gaussians as core
from moegs.errors import InputError
from moegs.experts.base import Expert, ExpertConfig
from moegs.experts.temporal import normalize_quats, slerp, two_sided_temporal_opacity


FWHM_PER_SIGMA = 2.36
"""Ex4DGS divides ``var_pad`` by 2.36 (~ 2 sqrt(2 ln 2)) before adding it to the fade width."""


@dataclass
class KeyframeConfig(ExpertConfig):
    """Ex4DGS settings scaled to short clips; learning rates from its N3V config (reference notes, section 6)."""

    keyframe_interval: int = 5
    """Frames between keyframes (Ex4DGS: 10 on 300-frame videos)."""
    time_pad: int = 1
    """Keyframes added before the first and after the last frame; >= 1 for Catmull-Rom tangents at the ends."""
    progressive_start_frames: int = 10
    """Frames trained on at step 0 (Ex4DGS ``start_duration``)."""
    progressive_steps: int = 1500
    """Step at which every frame is in the training window; it grows by one keyframe interval at a
    time in between (Ex4DGS: +10 frames every 400 steps). 0 trains on all frames from the start."""
    convert_every: int = 300
    """Static -> dynamic conversion period in steps (Ex4DGS N3V: 3980 of 40k); 0 disables it."""
    convert_until: int = 2000
    convert_fraction: float = 0.02
    """Fraction of the static Gaussians converted each time (Ex4DGS ``extract_percentile`` 0.98)."""
    convert_on_extend: bool = True
    """Also convert right after every progressive window extension (Ex4DGS); False: on the
    ``convert_every`` period only."""
    var_pad: float = 1.0
    """Floor of the temporal opacity width in frames (Ex4DGS ``var_pad``): a fade is never sharper
    than width exp(b) + var_pad / 2.36 frames (2.36: full width at half maximum over sigma); 0: no floor."""
    dynamic_moving_seeds: bool = False
    """Seeds on moving content (:func:`moegs.data.point_motion.moving_points`) start dynamic, visible
    around their instant only (appear = vanish = their time, one frame of fade), instead of as static
    Gaussians: a moving object's seeds from later frames are otherwise static copies along its path,
    visible all clip long. False: everything starts static (Ex4DGS)."""
    lr_velocity: float = 1e-4
    lr_key_offsets: float = 1.6e-4
    """Keyframe positions, times the scene extent, decaying log-linearly to ``lr_key_offsets_final``."""
    lr_key_offsets_final: float = 1.6e-5
    lr_key_quats: float = 1e-3
    lr_opacity_bounds: float = 0.1
    """In frames (Ex4DGS: 0.01 keyframe intervals of 10 frames); divided by n_frames for normalised time."""
    lr_opacity_log_widths: float = 1e-4
    lambda_velocity: float = 1e-4
    """Static regulariser weight on mean log(||d|| + 1e-3)."""
    lambda_keyframe: float = 1e-4
    """Dynamic regulariser weight on the mean step between consecutive keyframe positions."""


class KeyframeExpert(Expert):
    """Static + keyframed dynamic Gaussians (Ex4DGS).

    Per-Gaussian tensors beyond the core (K keyframes): ``dynamic`` [N] (1.0 = dynamic, never
    optimised: learning rate 0), ``velocity`` [N, 3], ``key_offsets`` [N, K, 3], ``key_quats``
    [N, K, 4], ``opacity_bounds`` [N, 2] (appear, vanish; normalised time) and
    ``opacity_log_widths`` [N, 2]. Keyframe tensors of static rows are unused until conversion.
    """

    family = "keyframe"
    config_class = KeyframeConfig
    paper = "Fully Explicit Dynamic Gaussian Splatting (Lee et al., NeurIPS 2024)"
    config: KeyframeConfig

    def __init__(self, config: ExpertConfig, params: dict[str, Tensor], n_frames: int, aabb: Tensor) -> None:
        config = cast(KeyframeConfig, config)
        _check_config(config)
        super().__init__(config, params, n_frames, aabb)
        expected = self.num_keyframes(config, self.n_frames)
        for key in ("key_offsets", "key_quats"):
            if self.params[key].shape[1] != expected:
                raise InputError(
                    f"keyframe: {key} has {self.params[key].shape[1]} keyframes, expected {expected} for "
                    f"{self.n_frames} frames at interval {config.keyframe_interval} with time_pad {config.time_pad}"
                )

    @staticmethod
    def num_keyframes(config: KeyframeConfig, n_frames: int) -> int:
        """ceil(n_frames / k) + 1 keyframes span every frame; ``time_pad`` more on each side."""
        return math.ceil(n_frames / config.keyframe_interval) + 1 + 2 * config.time_pad

    @classmethod
    def init_per_gaussian(
        cls, config: ExpertConfig, params: dict[str, Tensor], times: Tensor, n_frames: int, moving: Tensor
    ) -> dict[str, Tensor]:
        """Everything starts static (Ex4DGS initialises from first-frame points only; ``times`` is unused),
        except, with ``dynamic_moving_seeds``, the ``moving`` seeds: dynamic, appearing and vanishing
        at their own time with one frame of fade.

        Keyframe tracks start at zero offset with the canonical rotation, visible over the whole clip
        with one keyframe interval of fade, so a row is valid whenever it is converted or copied.
        """
        config = cast(KeyframeConfig, config)
        means = params["means"]
        n = means.shape[0]
        n_key = cls.num_keyframes(config, n_frames)
        quats = normalize_quats(params["quats"].detach())
        bounds = means.new_tensor([0.0, 1.0]).expand(n, 2).clone()
        log_widths = means.new_full((n, 2), math.log(config.keyframe_interval / n_frames))
        dynamic = means.new_zeros(n)
        if config.dynamic_moving_seeds:
            seeds = moving.to(torch.bool).reshape(-1)
            dynamic[seeds] = 1.0
            bounds[seeds] = times.reshape(-1, 1).to(means)[seeds].expand(-1, 2)
            log_widths[seeds] = math.log(1.0 / n_frames)
        return {
            "dynamic": dynamic,
            "velocity": means.new_zeros(n, 3),
            "key_offsets": means.new_zeros(n, n_key, 3),
            "key_quats": quats[:, None, :].expand(n, n_key, 4).clone(),
            "opacity_bounds": bounds,
            "opacity_log_widths": log_widths,
        }

    @classmethod
    def wants_moving_points(cls, config: ExpertConfig) -> bool:
        return cast(KeyframeConfig, config).dynamic_moving_seeds

    # ---- time <-> keyframes --------------------------------------------------------------------
    def keyframe_times(self) -> Tensor:
        """Normalised time of every keyframe [K]: keyframe j sits at frame (j - time_pad) * k."""
        c = self.config
        j = torch.arange(self.num_keyframes(c, self.n_frames), dtype=torch.float32)
        return (j - c.time_pad) * c.keyframe_interval / self.n_frames

    def segment(self, t: float) -> tuple[int, float]:
        """(n, u): t lies between keyframes n and n + 1, a fraction u of the way (t clamped to [0, 1]).

        x = frame / k + time_pad is snapped to an integer within 1e-6 so that t = f / n_frames lands
        exactly on a keyframe despite rounding; n is kept in [1, K - 3] so the Catmull-Rom
        neighbours n - 1 and n + 2 exist.
        """
        c = self.config
        x = min(max(t, 0.0), 1.0) * self.n_frames / c.keyframe_interval + c.time_pad
        if abs(x - round(x)) < 1e-6:
            x = float(round(x))
        n = min(int(math.floor(x)), self.num_keyframes(c, self.n_frames) - 3)
        return n, x - n

    # ---- evaluation ----------------------------------------------------------------------------
    def deform(self, t: float) -> dict[str, Tensor]:
        """Both populations at time t, chosen per row by the ``dynamic`` flag (one vectorised pass:
        the keyframe window is the same for every Gaussian, so it is a slice, not a gather)."""
        p = self.params
        dynamic = p["dynamic"] > 0.5
        n, u = self.segment(t)
        offsets = catmull_rom(p["key_offsets"][:, n - 1 : n + 3], u)
        rotation = slerp(p["key_quats"][:, n], p["key_quats"][:, n + 1], u)
        fade = two_sided_temporal_opacity(t, p["opacity_bounds"], p["opacity_log_widths"], self.min_fade_width)
        return {
            "means": torch.where(dynamic[:, None], p["means"] + offsets, p["means"] + t * p["velocity"]),
            "log_scales": p["log_scales"],
            "quats": torch.where(dynamic[:, None], rotation, p["quats"]),
            "opacity_logits": p["opacity_logits"],
            "opacity_factor": torch.where(dynamic, fade, torch.ones_like(fade)),
        }

    def regularisation(self, t: float) -> Tensor:
        """Ex4DGS's two regularisers: static 1e-4 mean log(||d|| + 1e-3) (sparse velocities) and dynamic
        1e-4 mean ||p_{n+1} - p_n|| (consecutive keyframes, as the paper states; the code uses p_0 - p_n)."""
        c = self.config
        p = self.params
        dynamic = (p["dynamic"] > 0.5).to(p["velocity"])
        static = 1.0 - dynamic
        speed = _safe_norm(p["velocity"])
        steps = _safe_norm(p["key_offsets"].diff(dim=1)).mean(dim=1)
        reg_static = (static * torch.log(speed + 1e-3)).sum() / static.sum().clamp_min(1.0)
        reg_dynamic = (dynamic * steps).sum() / dynamic.sum().clamp_min(1.0)
        return c.lambda_velocity * reg_static + c.lambda_keyframe * reg_dynamic

    @property
    def min_fade_width(self) -> float:
        """``var_pad`` in normalised time, as the floor Ex4DGS adds to the fade width."""
        return self.config.var_pad / (FWHM_PER_SIGMA * self.n_frames)

    # ---- schedules -----------------------------------------------------------------------------
    def frame_limit(self, step: int) -> int:
        """Ex4DGS's progressive window: ``progressive_start_frames``, then one keyframe interval more per
        stage, all ``n_frames`` from ``progressive_steps`` on. Monotonic in ``step``."""
        c = self.config
        start = min(c.progressive_start_frames, self.n_frames)
        if c.progressive_steps <= 0 or start >= self.n_frames:
            return self.n_frames
        stages = math.ceil((self.n_frames - start) / c.keyframe_interval)
        stage = max(step, 0) * stages // c.progressive_steps
        return min(self.n_frames, start + stage * c.keyframe_interval)

    def on_step(self, step: int) -> None:
        """Window growth and conversions depend on ``step`` alone, so a resumed run repeats them exactly."""
        super().on_step(step)
        c = self.config
        extended = step > 0 and self.frame_limit(step) > self.frame_limit(step - 1)
        if extended:
            self.extend_keyframes(self.frame_limit(step - 1))
        periodic = c.convert_every > 0 and 0 < step < c.convert_until and step % c.convert_every == 0
        if periodic or (extended and c.convert_on_extend):
            self.convert_to_dynamic(self.frame_limit(step))

    @torch.no_grad()
    def extend_keyframes(self, trained_frames: int) -> None:
        """Keyframes after the last one trained on frames < ``trained_frames`` continue the mean step of
        the last (at most 4) trained intervals; their rotations copy the last trained one (Ex4DGS)."""
        c = self.config
        n_key = self.num_keyframes(c, self.n_frames)
        last = (trained_frames - 1) // c.keyframe_interval + c.time_pad + 1
        if last >= n_key - 1:
            return
        offsets, quats = self.params["key_offsets"], self.params["key_quats"]
        first = max(last - 4, 0)
        step = (offsets[:, last] - offsets[:, first]) / max(last - first, 1)
        ahead = torch.arange(1, n_key - last, dtype=offsets.dtype, device=offsets.device)
        offsets[:, last + 1 :] = offsets[:, last, None] + ahead[None, :, None] * step[:, None]
        quats[:, last + 1 :] = quats[:, last, None]

    @torch.no_grad()
    def convert_to_dynamic(self, trained_frames: int) -> Tensor:
        """Make the top ``convert_fraction`` of static Gaussians by ||d|| dynamic; returns their indices.

        Keyframe offsets become d * t_j, which Catmull-Rom Hermite reproduces exactly between
        keyframes, so converted Gaussians keep their static path; rotations copy the canonical one
        and the opacity is fully visible over the trained frames (Ex4DGS's initialisation).
        """
        c = self.config
        p = self.params
        dynamic = p["dynamic"] > 0.5
        n_new = int(c.convert_fraction * int((~dynamic).sum()))
        if n_new == 0:
            return torch.zeros(0, dtype=torch.long)
        score = p["velocity"].norm(dim=-1).masked_fill(dynamic, 0.0)
        top, idx = torch.topk(score, n_new)
        idx = idx[top > 0]  # a static Gaussian that never moved has no evidence of motion
        times = self.keyframe_times().to(p["velocity"])
        p["key_offsets"][idx] = p["velocity"][idx, None, :] * times[None, :, None]
        p["key_quats"][idx] = normalize_quats(p["quats"][idx])[:, None, :]
        p["opacity_bounds"][idx] = p["opacity_bounds"].new_tensor([0.0, trained_frames / self.n_frames])
        p["opacity_log_widths"][idx] = math.log(c.keyframe_interval / self.n_frames)
        p["velocity"][idx] = 0.0
        p["dynamic"][idx] = 1.0
        return idx

    # ---- optimisation ----------------------------------------------------------------------------
    def extra_lrs(self, extent: float) -> dict[str, float]:
        c = self.config
        return {
            "dynamic": 0.0,
            "velocity": c.lr_velocity,
            "key_offsets": c.lr_key_offsets * extent,
            "key_quats": c.lr_key_quats,
            "opacity_bounds": c.lr_opacity_bounds / self.n_frames,
            "opacity_log_widths": c.lr_opacity_log_widths,
        }

    def scheduled_lrs(self, step: int, extent: float) -> dict[str, float]:
        """Keyframe positions decay log-linearly like the canonical means (Ex4DGS: 1.6e-4 E -> 1.6e-5 E)."""
        c = self.config
        lrs = super().scheduled_lrs(step, extent)
        lrs["key_offsets"] = core.expon_lr(step, c.lr_key_offsets * extent, c.lr_key_offsets_final * extent, c.iterations)
        return lrs


def catmull_rom(points: Tensor, u: float) -> Tensor:
    """Cubic Hermite between points[:, 1] (u = 0) and points[:, 2] (u = 1) of ``points`` [N, 4, D],
    with Catmull-Rom tangents m_n = (p_{n+1} - p_{n-1}) / 2: C1 across keyframes without stored
    tangents (Ex4DGS). At u = 0 the weights are exactly (1, 0, 0, 0), so keyframes are hit exactly."""
    p0, p1, p2, p3 = points.unbind(dim=1)
    m1 = 0.5 * (p2 - p0)
    m2 = 0.5 * (p3 - p1)
    u2, u3 = u * u, u * u * u
    h00 = 2 * u3 - 3 * u2 + 1
    h10 = u3 - 2 * u2 + u
    h01 = -2 * u3 + 3 * u2
    h11 = u3 - u2
    return h00 * p1 + h10 * m1 + h01 * p2 + h11 * m2


def _safe_norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last dim with a finite gradient at 0 (velocities and tracks start at 0)."""
    return (v.square().sum(dim=-1) + 1e-12).sqrt()


def _check_config(c: KeyframeConfig) -> None:
    if c.keyframe_interval < 1 or c.time_pad < 1 or c.progressive_start_frames < 1:
        raise InputError(
            f"keyframe: need keyframe_interval, time_pad, progressive_start_frames >= 1, got "
            f"{c.keyframe_interval}, {c.time_pad}, {c.progressive_start_frames}"
        )
    if c.var_pad < 0:
        raise InputError(f"keyframe: need var_pad >= 0 frames, got {c.var_pad}")
    if c.progressive_steps < 0 or c.convert_every < 0 or not 0.0 <= c.convert_fraction <= 1.0:
        raise InputError(
            f"keyframe: need progressive_steps, convert_every >= 0 and convert_fraction in [0, 1], got "
            f"{c.progressive_steps}, {c.convert_every}, {c.convert_fraction}"
        )
