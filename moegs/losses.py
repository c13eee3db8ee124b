"""Training losses: L1, Gaussian-window SSIM and the 3DGS photometric mix.

Images are channel-last, [H, W, C] or [B, H, W, C], values in [0, 1], as the rasteriser returns
them. SSIM is pytorch_msssim's (11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), valid
convolution), which equals scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``, i.e. the SSIM papers report. On CPU,
when only the prediction needs a gradient (training), it runs as `moegs.ssim_cpu`'s kernels with
an analytic backward (same values to float rounding, ~3x faster than pytorch_msssim's convolutions).
"""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ssim as _msssim_ssim
from torch import Tensor

from moegs.errors import InputError, MoegsError
from moegs.ssim_cpu import SSIMCPU

SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
DEFAULT_LAMBDA_DSSIM = 0.2
MOTION_THRESHOLD = 0.1
"""A frame pixel this far (largest channel, in [0, 1]) from its camera's background is moving content
(the carving's foreground threshold)."""


def l1(img: Tensor, gt: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error; ``weight`` is an optional per-pixel multiplier map.

    ``weight`` is [H, W] (or [B, H, W]) and multiplies each pixel's error before the mean over
    all pixels and channels, so a map of ones gives plain L1 (distillation uses this to stress the
    pixels where the MoE teacher is better).
    """
    check_image_pair(img, gt)
    err = (img - gt).abs()
    if weight is not None:
        if weight.shape != img.shape[:-1]:
            raise InputError(f"weight must have shape {tuple(img.shape[:-1])}, got {tuple(weight.shape)}")
        err = err * weight.unsqueeze(-1).to(err)
    return err.mean()


def ssim(img: Tensor, gt: Tensor) -> Tensor:
    """Differentiable mean SSIM over pixels, channels and batch (Gaussian window 11, sigma 1.5)."""
    check_image_pair(img, gt)
    h, w = img.shape[-3], img.shape[-2]
    if min(h, w) < SSIM_WIN_SIZE:
        raise InputError(f"SSIM needs images of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} px, got {h}x{w}")
    dtype = torch.promote_types(img.dtype, torch.float32)
    if img.device.type == "cpu" and gt.device.type == "cpu" and not gt.requires_grad:
        return SSIMCPU.apply(_batched(img).to(dtype), _batched(gt).to(dtype), SSIM_WIN_SIZE, SSIM_SIGMA, *SSIM_K)
    x = _to_bchw(img)
    y = _to_bchw(gt).to(x.dtype)
    return _msssim_ssim(
        x, y, data_range=1.0, size_average=True, win_size=SSIM_WIN_SIZE, win_sigma=SSIM_SIGMA, K=SSIM_K
    )


def d_ssim(img: Tensor, gt: Tensor) -> Tensor:
    """Structural dissimilarity 1 - SSIM, the SSIM term of the 3DGS loss."""
    return 1.0 - ssim(img, gt)


def photometric(
    img: Tensor, gt: Tensor, lambda_dssim: float = DEFAULT_LAMBDA_DSSIM, weight: Tensor | None = None
) -> Tensor:
    """3DGS loss (1 - lambda) * L1 + lambda * (1 - SSIM); ``weight`` applies to the L1 term only.

    The SSIM term is skipped when ``lambda_dssim`` is 0 (4DGaussians trains with L1 only), so tiny
    images below the SSIM window still work there.
    """
    if not 0.0 <= lambda_dssim <= 1.0:
        raise InputError(f"lambda_dssim must be in [0, 1], got {lambda_dssim}")
    loss = (1.0 - lambda_dssim) * l1(img, gt, weight)
    if lambda_dssim > 0.0:
        loss = loss + lambda_dssim * d_ssim(img, gt)
    return loss


def motion_weight(gt: Tensor, background: Tensor, strength: float, threshold: float = MOTION_THRESHOLD) -> Tensor:
    """Per-pixel L1 weight [H, W]: 1 on the static background, up to ``1 + strength`` where the frame
    differs from its camera's background (a ramp reaching full weight at a difference of ``threshold``
    in the largest channel).

    Moving content covers a few percent of a frame, so in the plain mean its error hardly moves the
    loss: on the short schedules here the models fit the background and leave fast objects faint.
    """
    check_image_pair(gt, background)
    difference = (gt - background).abs().amax(dim=-1)
    return 1.0 + strength * (difference / threshold).clamp(max=1.0)


def check_image_pair(img: Tensor, gt: Tensor) -> None:
    """Refuse an image pair that cannot be compared: other shapes, ranks or devices."""
    if img.shape != gt.shape:
        raise InputError(f"image shapes differ: {tuple(img.shape)} vs {tuple(gt.shape)}")
    if img.ndim not in (3, 4):
        raise InputError(f"images must be [H, W, C] or [B, H, W, C], got {tuple(img.shape)}")
    if img.device != gt.device:
        # a silent copy would hide a ground truth left on the host (one transfer per step on a GPU)
        raise ValueError(f"image on {img.device} but ground truth on {gt.device}: put both on one device")


def _batched(img: Tensor) -> Tensor:
    return img if img.ndim == 4 else img.unsqueeze(0)


def _to_bchw(img: Tensor) -> Tensor:
    x = _batched(img)
    return x.permute(0, 3, 1, 2).to(torch.promote_types(x.dtype, torch.float32))


def require_finite(loss: Tensor, label: str, step: int) -> float:
    """The loss on the host, or a MoegsError once it is NaN or infinite: from then on Adam makes every
    weight NaN, and such a model must not be checkpointed or saved as a result."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise MoegsError(
            f"{label}: training diverged (loss {value} at step {step}); nothing was saved. Lower the learning "
            "rates or regulariser weights of this stage's config, or check the dataset's images"
        )
    return value
