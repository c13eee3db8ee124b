"""Time-dependent pieces shared by the explicit dynamic families (``polynomial``, ``keyframe``).

Temporal opacity and quaternion helpers live here once so that STG's radial-basis opacity and
Ex4DGS's two-sided opacity are the same function, and slerp is written (and tested) once.
All times are the project's normalised time t = frame / n_frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moegs.gaussians import normalize_quats

SLERP_DOT_LIMIT = 1.0 - 1e-4
"""Ex4DGS clamps the quaternion dot product to +-(1 - 1e-4) before ``acos``: it keeps the gradient of
``acos`` finite for (nearly) identical keyframe rotations, where slerp degenerates to lerp anyway."""


def temporal_rbf(dt: Tensor, log_scale: Tensor, min_width: float = 0.0) -> Tensor:
    """STG's temporal radial basis exp(-(dt / w)^2) with w = exp(s) (+ ``min_width``, Ex4DGS's floor):
    1 at dt = 0, a Gaussian in time around it."""
    if min_width == 0.0:
        return torch.exp(-(dt * torch.exp(-log_scale)).square())
    return torch.exp(-(dt / (torch.exp(log_scale) + min_width)).square())


def two_sided_temporal_opacity(t: float, bounds: Tensor, log_widths: Tensor, min_width: float = 0.0) -> Tensor:
    """Ex4DGS's temporal opacity [N]: 1 while ``bounds`` [N, 2] (appear, vanish) contain t, outside a
    temporal RBF from the nearer bound with that side's width (``log_widths`` [N, 2]) plus ``min_width``.

    With both bounds equal and equal widths it is exactly STG's single temporal Gaussian. The
    bounds are sorted here, so the optimiser may push them past each other without breaking it.
    """
    start = torch.minimum(bounds[:, 0], bounds[:, 1])
    end = torch.maximum(bounds[:, 0], bounds[:, 1])
    before = t < start
    dt = torch.where(before, t - start, torch.clamp_min(t - end, 0.0))
    log_width = torch.where(before, log_widths[:, 0], log_widths[:, 1])
    return temporal_rbf(dt, log_width, min_width)


def slerp(q0: Tensor, q1: Tensor, u: float | Tensor) -> Tensor:
    """Spherical linear interpolation between quaternions [..., 4] (normalised here) at ``u`` in [0, 1].

    Takes the shorter arc (q and -q are the same rotation), clamps the dot product as Ex4DGS does
    (:data:`SLERP_DOT_LIMIT`) and renormalises the result, so the output is unit even where the
    clamp made the weights those of a lerp. u = 0 returns q0 and u = 1 returns q1 (up to sign).
    """
    a = normalize_quats(q0)
    b = normalize_quats(q1)
    dot = (a * b).sum(dim=-1, keepdim=True)
    b = torch.where(dot < 0, -b, b)
    theta = torch.acos(dot.abs().clamp(max=SLERP_DOT_LIMIT))
    sin_theta = torch.sin(theta)
    w0 = torch.sin((1.0 - u) * theta) / sin_theta
    w1 = torch.sin(u * theta) / sin_theta
    return normalize_quats(w0 * a + w1 * b)
