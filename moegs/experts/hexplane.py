"""The ``hexplane`` family: 4DGaussians (Wu et al., CVPR 2024).

Canonical 3DGS Gaussians plus a deformation field F(mu, t) -> (d_mu, d_s, d_q, d_o, d_sh0): a
multi-resolution HexPlane encodes (mu, t), a small MLP decodes the feature into offsets that are
added to the raw parameters. The paper's separate 3000-iteration static "coarse" stage is the
first ``warmup`` steps of the same run here: no deformation, no regulariser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moegs.errors import InputError
from moegs.experts.base import Expert, ExpertConfig
from moegs.experts.deform_mlp import DeformHeads, StepCounter, apply_offsets, check_attrs
from moegs.experts.hexplane_cpu import HexPlaneCPU
from moegs.experts.hexplane_regularisers import plane_regularisers

PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
"""Coordinate pairs of the 6 planes (axis 3 is time): xy xz yz xt yt zt."""
_AXES = np.array(PLANE_AXES, np.int64)
SPATIAL = (0, 1, 2)
SPACE_TIME = (3, 4, 5)


@dataclass
class HexPlaneConfig(ExpertConfig):
    """4DGaussians settings. Sizes are scaled down from the N3V config (base res 64, time 150,
    multires [1, 2], 16 features, width 128) for ~10k Gaussians on CPU.
    ``lr_fields``/``lr_fields_final`` (1.6e-3 -> 1.6e-4, x extent) are the grid rates; their decay
    runs over the whole run, warm-up included (the paper restarts it for its fine stage)."""

    warmup: int = 500
    """Static steps before the deformation switches on (the paper's coarse stage, 3000 its)."""
    base_res: int = 32
    """Spatial plane resolution at level 1 (paper 64)."""
    time_res: int = 0
    """Time resolution of the space-time planes; 0: n_frames // 2, at least 2 (N3V: 150 / 300 frames)."""
    multires: list[int] = field(default_factory=lambda: [1, 2])
    """Spatial resolution multipliers, one level each (paper N3V [1, 2]); time is not multiplied."""
    feature_dim: int = 16
    """Features per plane (paper N3V 16); the MLP sees feature_dim * len(multires)."""
    mlp_width: int = 64
    """Hidden width of the decoder (paper N3V 128)."""
    mlp_depth: int = 1
    """Linear layers in the trunk before the heads (paper N3V ``defor_depth=0``: one Linear)."""
    mlp_lr_ratio: float = 0.1
    """MLP learning rate / grid learning rate (paper 1.6e-4 / 1.6e-3), see ``ScaledLinear``."""
    lambda_plane_tv: float = 2e-4
    """Smoothness (second differences) of the spatial planes (paper N3V 2e-4)."""
    lambda_time_smooth: float = 1e-3
    """Smoothness along time of the space-time planes (paper N3V 1e-3)."""
    lambda_time_l1: float = 1e-4
    """L1 of (1 - plane) on the space-time planes, i.e. "static unless needed" (paper 1e-4)."""
    deform_attrs: list[str] = field(
        default_factory=lambda: ["means", "log_scales", "quats", "opacity_logits", "sh0"]
    )
    """Raw parameters the field deforms. Default: the paper's N3V setting (``no_do=False``,
    ``no_dshs=False``: opacity and colour too; colour as the DC term); ``means,log_scales,quats``
    is its D-NeRF setting (geometry only)."""


class HexPlaneField(nn.Module):
    """Multi-resolution HexPlane (K-Planes style): (x, y, z, t) in [-1, 1]^4 -> feature [N, F * L].

    Per level, 6 planes ``[1, F, res_j, res_i]`` for the pairs in :data:`PLANE_AXES` are sampled
    bilinearly (``grid_sample``, align_corners=True, border padding, as 4DGaussians) and
    multiplied elementwise; levels are concatenated. Init as the paper: space-time planes 1 (so
    the field starts static), spatial planes U(0.1, 0.5).
    """

    def __init__(
        self, base_res: int, time_res: int, multires: list[int], feature_dim: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        if base_res < 2 or time_res < 2 or feature_dim < 1 or not multires or min(multires) < 1:
            raise InputError(
                f"need base_res >= 2, time_res >= 2, feature_dim >= 1, multires of ints >= 1; "
                f"got {base_res}, {time_res}, {feature_dim}, {multires}"
            )
        self.levels = nn.ModuleList()
        for mult in multires:
            res = (base_res * mult,) * 3 + (time_res,)
            planes = nn.ParameterList()
            for k, (i, j) in enumerate(PLANE_AXES):
                shape = (1, feature_dim, res[j], res[i])
                if k in SPACE_TIME:
                    planes.append(nn.Parameter(torch.ones(shape)))
                else:
                    planes.append(nn.Parameter(torch.rand(shape, generator=generator) * 0.4 + 0.1))
            self.levels.append(planes)

    @property
    def out_dim(self) -> int:
        first = cast(nn.ParameterList, self.levels[0])
        return first[0].shape[1] * len(self.levels)

    def forward(self, xyz: Tensor, t: float) -> Tensor:
        """``xyz`` [N, 3] and ``t`` already normalised to [-1, 1]. On CPU all planes are sampled in
        one numba kernel (`moegs.experts.hexplane_cpu`, same values to float rounding)."""
        coords = torch.cat([xyz, xyz.new_full((xyz.shape[0], 1), t)], dim=1)
        if coords.device.type == "cpu":
            planes = [plane for level in self.levels for plane in cast(nn.ParameterList, level)]
            return HexPlaneCPU.apply(coords, _AXES, len(self.levels), *planes)
        per_level = []
        for planes in self.levels:
            feat: Tensor | None = None
            for plane, (i, j) in zip(cast(nn.ParameterList, planes), PLANE_AXES):
                sampled = sample_plane(plane, coords[:, [i, j]])
                feat = sampled if feat is None else feat * sampled
            per_level.append(cast(Tensor, feat))
        return torch.cat(per_level, dim=0).T

    def planes(self, kinds: tuple[int, ...]) -> list[Tensor]:
        """The planes of every level whose index in :data:`PLANE_AXES` is in ``kinds``."""
        return [plane for planes in self.levels for k, plane in enumerate(cast(nn.ParameterList, planes)) if k in kinds]


def sample_plane(plane: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples [F, N] of ``plane`` [1, F, H, W] at ``uv`` [N, 2] in [-1, 1] (u along W)."""
    out = F.grid_sample(plane, uv.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(plane.shape[1], -1)


class HexPlaneFields(nn.Module):
    """Everything of the family that is not per Gaussian: the HexPlane, its decoder, the step counter."""

    def __init__(self, c: HexPlaneConfig, n_frames: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(c.seed)  # init independent of the global RNG state
        time_res = c.time_res if c.time_res > 0 else max(2, n_frames // 2)
        self.hexplane = HexPlaneField(c.base_res, time_res, c.multires, c.feature_dim, generator)
        self.decoder = DeformHeads(self.hexplane.out_dim, c.mlp_width, c.mlp_depth, c.deform_attrs, generator, c.mlp_lr_ratio)
        self.progress = StepCounter()


class HexPlaneExpert(Expert):
    """4DGaussians: theta' = theta + d_theta for the raw mean, scale, rotation, opacity and DC colour,
    with the offsets d_theta = MLP(HexPlane(mu, t)).

    Spatial coordinates are normalised to [-1, 1] by ``self.aabb`` (the initial points' bounds, as
    the paper); Gaussians that leave it read the border. Time t in [0, 1) is mapped to 2t - 1 so
    the whole time axis of the planes is used: the official code feeds t unmapped and so uses only
    its upper half; we do not keep that quirk.
    """

    family = "hexplane"
    config_class = HexPlaneConfig
    paper = "4D Gaussian Splatting for Real-Time Dynamic Scene Rendering (Wu et al., CVPR 2024)"
    config: HexPlaneConfig

    def build_fields(self) -> nn.Module:
        c = self.config
        check_attrs(c.deform_attrs)
        if c.warmup < 0 or c.mlp_lr_ratio <= 0.0:
            raise InputError(f"hexplane: need warmup >= 0 and mlp_lr_ratio > 0, got {c.warmup}, {c.mlp_lr_ratio}")
        return HexPlaneFields(self.config, self.n_frames)

    @property
    def _fields(self) -> HexPlaneFields:
        return cast(HexPlaneFields, self.fields)

    @property
    def deforming(self) -> bool:
        """False during the warm-up (the paper's static coarse stage)."""
        return self._fields.progress.value >= self.config.warmup

    def on_step(self, step: int) -> None:
        super().on_step(step)
        self._fields.progress.update(step)

    def normalise_xyz(self, xyz: Tensor) -> Tensor:
        """World positions [N, 3] -> [-1, 1]^3 over the AABB (clamped extent for flat scenes)."""
        lo, hi = self.aabb[0], self.aabb[1]
        return 2.0 * (xyz - lo) / (hi - lo).clamp_min(1e-6) - 1.0

    def deform(self, t: float) -> dict[str, Tensor]:
        if not self.deforming:
            return super().deform(t)
        feat = self._fields.hexplane(self.normalise_xyz(self.params["means"]), 2.0 * t - 1.0)
        return apply_offsets(self.params, [self._fields.decoder(feat)], {})

    def regularisation(self, t: float) -> Tensor:
        """4DGaussians' fine-stage regulariser: plane smoothness + time smoothness + L1-to-one."""
        if not self.deforming:
            return torch.zeros(())
        c, hexplane = self.config, self._fields.hexplane
        weights = (c.lambda_plane_tv, c.lambda_time_smooth, c.lambda_time_l1)
        return plane_regularisers(hexplane.planes(SPATIAL), hexplane.planes(SPACE_TIME), weights)
