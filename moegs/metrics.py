"""Evaluation metrics: PSNR, SSIM, FLIP, optional LPIPS (AlexNet), per-region PSNR.

Images are [H, W, 3] tensors in [0, 1] (clamped here, as renders can overshoot). Metrics are
plain floats, computed without gradients.

LPIPS is optional because its weights cannot be downloaded on the project's machines and we do
not depend on torchvision (see DESIGN.md section 6). The user points to a directory with two
local files:

- ``alexnet*.pth`` (e.g. torchvision's ``alexnet-owt-7be5be79.pth``): the AlexNet state dict,
  either the whole model (``features.0.weight`` ...) or only its ``features`` part (``0.weight`` ...);
- ``alex.pth``: the LPIPS v0.1 linear heads (``lin0.model.1.weight`` ... ``lin4.model.1.weight``),
  as shipped in the ``lpips`` package (``lpips/weights/v0.1/alex.pth``).

Without them LPIPS is reported as ``None`` with a reason, never as 0.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moegs import losses
from moegs.errors import InputError, MissingDependencyError

LPIPS_HEADS_FILE = "alex.pth"
LPIPS_BACKBONE_GLOB = "alexnet*.pth"
_ALEX_CONVS = {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3), 10: (256, 256, 3)}
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


@dataclass
class ImageMetrics:
    """Metrics of one image; ``None`` means the metric could not be computed (see ``lpips_status``)."""

    psnr: float
    ssim: float
    flip: float | None
    lpips: float | None
    lpips_status: str
    region_psnr: dict[int, float] = field(default_factory=dict)


def psnr(img: Tensor, gt: Tensor) -> float:
    """PSNR in dB of images clamped to [0, 1]; ``inf`` for identical images."""
    losses.check_image_pair(img, gt)
    mse = float(((img.detach().clamp(0, 1) - gt.detach().clamp(0, 1)) ** 2).double().mean())
    return _psnr_from_mse(mse)


def ssim(img: Tensor, gt: Tensor) -> float:
    """Gaussian-window SSIM (same definition as the loss) of images clamped to [0, 1]."""
    losses.check_image_pair(img, gt)
    with torch.no_grad():
        return float(losses.ssim(img.clamp(0, 1), gt.clamp(0, 1)))


def flip(img: Tensor, gt: Tensor) -> float:
    """Mean LDR FLIP error (NVIDIA flip-evaluator, default 67 pixels per degree); lower is better."""
    losses.check_image_pair(img, gt)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InputError(f"FLIP needs [H, W, 3] images, got {tuple(img.shape)}")
    try:
        import flip_evaluator
    except ImportError as exc:
        raise MissingDependencyError("FLIP needs flip-evaluator: pip install flip-evaluator==1.7") from exc
    ref = _to_numpy01(gt)
    test = _to_numpy01(img)
    _, mean, _ = flip_evaluator.evaluate(ref, test, "LDR", applyMagma=False)
    return float(mean)


def lpips_available(weights_dir: str | Path | None) -> tuple[bool, str]:
    """Whether LPIPS can be computed from ``weights_dir``, and why not (loads and caches the net)."""
    if weights_dir is None:
        return False, (
            f"unavailable: no LPIPS weights given (a directory with {LPIPS_BACKBONE_GLOB} and {LPIPS_HEADS_FILE})"
        )
    try:
        _load_lpips(str(Path(weights_dir).resolve()))
    except InputError as exc:
        return False, f"unavailable: {exc}"
    return True, f"available ({Path(weights_dir)})"


def lpips_alex(img: Tensor, gt: Tensor, weights_dir: str | Path) -> float:
    """LPIPS (AlexNet, v0.1 heads) between two [H, W, 3] images in [0, 1]; lower is better."""
    losses.check_image_pair(img, gt)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InputError(f"LPIPS needs [H, W, 3] images, got {tuple(img.shape)}")
    if min(img.shape[0], img.shape[1]) < 32:
        raise InputError(f"LPIPS (AlexNet) needs images of at least 32x32 px, got {img.shape[0]}x{img.shape[1]}")
    net = _load_lpips(str(Path(weights_dir).resolve()))
    with torch.no_grad():
        return float(net(_to_lpips_input(img), _to_lpips_input(gt)))


def region_psnr(img: Tensor, gt: Tensor, labels: Tensor) -> dict[int, float]:
    """PSNR over the pixels of each region id in ``labels`` [H, W] (integer map)."""
    losses.check_image_pair(img, gt)
    if labels.shape != img.shape[:2]:
        raise InputError(f"region labels must have shape {tuple(img.shape[:2])}, got {tuple(labels.shape)}")
    sq = ((img.detach().clamp(0, 1) - gt.detach().clamp(0, 1)) ** 2).double().mean(dim=-1)
    labels = labels.to(sq.device)
    return {int(r): _psnr_from_mse(float(sq[labels == r].mean())) for r in torch.unique(labels).tolist()}


def evaluate_image(
    pred: Tensor,
    gt: Tensor,
    region_labels: Tensor | None = None,
    lpips_weights: str | Path | None = None,
    with_flip: bool = True,
) -> ImageMetrics:
    """All metrics of one [H, W, 3] image against its ground truth."""
    ok, status = lpips_available(lpips_weights)
    return ImageMetrics(
        psnr=psnr(pred, gt),
        ssim=ssim(pred, gt),
        flip=flip(pred, gt) if with_flip else None,
        lpips=lpips_alex(pred, gt, lpips_weights) if ok and lpips_weights is not None else None,
        lpips_status=status,
        region_psnr={} if region_labels is None else region_psnr(pred, gt, region_labels),
    )


def evaluate_images(
    pred: Tensor,
    gt: Tensor,
    region_labels: Tensor | None = None,
    lpips_weights: str | Path | None = None,
    with_flip: bool = True,
) -> dict:
    """Metrics of one image [H, W, 3] or a batch [B, H, W, 3], averaged over images.

    Returns ``{"n_images", "psnr", "ssim", "flip", "lpips", "lpips_status", "region_psnr",
    "per_image"}``: the usual per-image average (PSNR averaged in dB, as papers do), per-region
    PSNR averaged over the images where the region occurs, and the per-image :class:`ImageMetrics`
    as dicts. ``region_labels`` is [H, W] (shared) or [B, H, W]. Unavailable metrics are ``None``.
    """
    losses.check_image_pair(pred, gt)
    preds = pred if pred.ndim == 4 else pred.unsqueeze(0)
    gts = gt if gt.ndim == 4 else gt.unsqueeze(0)
    labels = None
    if region_labels is not None:
        labels = region_labels if region_labels.ndim == 3 else region_labels.unsqueeze(0).expand(preds.shape[0], -1, -1)
        if labels.shape[0] != preds.shape[0]:
            raise InputError(f"region labels for {labels.shape[0]} images, but {preds.shape[0]} images given")
    per_image = [
        evaluate_image(preds[i], gts[i], None if labels is None else labels[i], lpips_weights, with_flip)
        for i in range(preds.shape[0])
    ]
    regions: dict[int, list[float]] = {}
    for m in per_image:
        for r, v in m.region_psnr.items():
            regions.setdefault(r, []).append(v)
    return {
        "n_images": len(per_image),
        "psnr": _mean([m.psnr for m in per_image]),
        "ssim": _mean([m.ssim for m in per_image]),
        "flip": _mean([m.flip for m in per_image]),
        "lpips": _mean([m.lpips for m in per_image]),
        "lpips_status": per_image[0].lpips_status,
        "region_psnr": {r: _mean(v) for r, v in sorted(regions.items())},
        "per_image": [asdict(m) for m in per_image],
    }


class _LpipsAlex(nn.Module):
    """LPIPS: unit-normalised AlexNet ReLU1..5 features, squared difference, 1x1 linear heads, spatial mean."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict(
            {str(i): nn.Conv2d(cin, cout, k, stride=4 if i == 0 else 1, padding=k // 2 if i else 2)
             for i, (cin, cout, k) in _ALEX_CONVS.items()}
        )  # fmt: skip
        self.heads = nn.ModuleList([nn.Conv2d(cout, 1, 1, bias=False) for _, cout, _ in _ALEX_CONVS.values()])
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i in _ALEX_CONVS:
            if i in (3, 6):  # torchvision's alexnet.features has a 3x3/2 max pool before conv 3 and conv 6
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(self.convs[str(i)](x))
            out.append(x)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(self.heads, self.features(x), self.features(y)):
            nx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + head((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total.mean()


@functools.lru_cache(maxsize=2)
def _load_lpips(weights_dir: str) -> _LpipsAlex:
    """Build the LPIPS net from local files (cached per directory: the backbone is 233 MB)."""
    root = Path(weights_dir)
    if not root.is_dir():
        raise InputError(f"LPIPS weights directory not found: {root}")
    heads_file = root / LPIPS_HEADS_FILE
    backbones = sorted(root.glob(LPIPS_BACKBONE_GLOB))
    if not heads_file.is_file() or len(backbones) != 1:
        raise InputError(
            f"{root} must hold {LPIPS_HEADS_FILE} and exactly one {LPIPS_BACKBONE_GLOB}; found "
            f"{sorted(p.name for p in root.iterdir())}"
        )
    backbone = {k.removeprefix("features."): v for k, v in _torch_load(backbones[0]).items()}
    heads = _torch_load(heads_file)
    net = _LpipsAlex()
    state = {}
    for i in _ALEX_CONVS:
        for part in ("weight", "bias"):
            key = f"{i}.{part}"
            if key not in backbone:
                raise InputError(f"{backbones[0]} lacks AlexNet feature tensor {key!r}")
            state[f"convs.{i}.{part}"] = backbone[key]
    for j in range(len(_ALEX_CONVS)):
        found = [v for k, v in heads.items() if re.fullmatch(rf"lin{j}\.(model\.\d+\.)?weight", k)]
        if len(found) != 1:
            raise InputError(f"{heads_file} lacks the LPIPS head lin{j} weight")
        state[f"heads.{j}.weight"] = found[0]
    state["shift"], state["scale"] = net.shift, net.scale
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"LPIPS weights in {root} do not fit AlexNet: {exc}") from exc
    return net.eval()


def _torch_load(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor files
        raise InputError(f"cannot load weights {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path} is not a state dict")
    return obj


def _to_lpips_input(img: Tensor) -> Tensor:
    return (img.detach().clamp(0, 1).float().cpu().permute(2, 0, 1).unsqueeze(0)) * 2.0 - 1.0


def _to_numpy01(img: Tensor) -> np.ndarray:
    return np.ascontiguousarray(img.detach().clamp(0, 1).float().cpu().numpy())


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))
