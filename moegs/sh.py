"""Real spherical harmonics up to degree 3, with the constants and sign convention of 3DGS.

Every SH-based expert and every PLY viewer (SuperSplat, the INRIA viewer) assumes this exact
basis: coefficient k multiplies ``sh_basis(...)[:, k]``, and the colour is ``SH + 0.5`` clamped at
zero. Using a different (even if mathematically equivalent) sign convention would make exported
scenes look wrong in those viewers, so the signs below are deliberate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moegs.errors import InputError

MAX_SH_DEGREE = 3

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_coeffs(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree``: (degree + 1)^2."""
    _check_degree(degree)
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis values at unit directions ``dirs`` [N, 3] -> [N, (degree+1)^2].

    Order and signs follow 3DGS (``computeColorFromSH``), so coefficient layouts are interchangeable
    with INRIA checkpoints and PLY files.
    """
    _check_degree(degree)
    if dirs.ndim != 2 or dirs.shape[-1] != 3:
        raise InputError(f"dirs must have shape [N, 3], got {tuple(dirs.shape)}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            C2[0] * x * y,
            C2[1] * y * z,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * x * z,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * x * y * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Colour of each Gaussian seen from unit direction ``dirs`` [N, 3] -> [N, C].

    ``coeffs`` is [N, K, C] with K >= (degree+1)^2; only the first (degree+1)^2 are used, so the
    progressive SH schedule can pass the full coefficient tensor. Returns ``max(SH + 0.5, 0)`` like
    3DGS (the 0.5 offset makes zero coefficients mid-grey).
    """
    k = num_sh_coeffs(degree)
    if coeffs.ndim != 3 or coeffs.shape[1] < k:
        raise InputError(f"coeffs must have shape [N, >={k}, C] for SH degree {degree}, got {tuple(coeffs.shape)}")
    if coeffs.shape[0] != dirs.shape[0]:
        raise InputError(f"coeffs and dirs disagree on N: {coeffs.shape[0]} vs {dirs.shape[0]}")
    basis = sh_basis(degree, dirs).to(coeffs.dtype)
    sh = torch.einsum("nk,nkc->nc", basis, coeffs[:, :k])
    return torch.clamp_min(sh + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that reproduces colour ``rgb`` in [0, 1] from every direction."""
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh0` (no clamping)."""
    return sh0 * C0 + 0.5


def _check_degree(degree: int) -> None:
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise InputError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
