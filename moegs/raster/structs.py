"""Inputs and outputs of the rasteriser, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class GaussianSet:
    """One expert's Gaussians, already activated (normalised quats not required, scales > 0,
    opacities in (0, 1)); every set passed to one call shares the feature width C."""

    means: Tensor  # [N, 3] world
    quats: Tensor  # [N, 4] wxyz
    scales: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    features: Tensor  # [N, C]

    def detach(self) -> GaussianSet:
        return GaussianSet(self.means.detach(), self.quats.detach(), self.scales.detach(),
                           self.opacities.detach(), self.features.detach())

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass
class RasterOutput:
    """One rendered image plus what densification and pruning read back."""

    image: Tensor  # [H, W, C] composited features + T_final * background
    alpha: Tensor  # [H, W] 1 - T_final
    depth: Tensor  # [H, W] sum_i w_i z_i (un-normalised, background 0)
    means2d: Tensor  # [N, 2] pixel-space means; .grad filled after backward if retained
    radii: Tensor  # [N] int, 0 = culled
    contrib: Tensor | None  # [N] sum_p weight(p) * alpha_i * T_i(p), no grad


@dataclass
class MultiRasterOutput:
    """K sets rendered in one pass, each composited with its own transmittance."""

    image: Tensor  # [K, H, W, C]
    alpha: Tensor  # [K, H, W]
    depth: Tensor  # [K, H, W]
    means2d: list[Tensor]  # K x [N_k, 2]
    radii: list[Tensor]  # K x [N_k]
    contrib: list[Tensor] | None  # K x [N_k]
