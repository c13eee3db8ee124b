"""Tests for training losses and evaluation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from moegs import losses, metrics
from moegs.errors import InputError


def _pair(h: int = 48, w: int = 40, noise: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    gt = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx * yy)], dim=-1)
    pred = gt + noise * torch.randn(gt.shape, generator=g)
    return pred, gt


def test_psnr_of_known_noise():
    gt = torch.full((32, 32, 3), 0.5)
    pred = gt.clone()
    pred[::2] += 0.1
    pred[1::2] -= 0.1  # mse = 0.01 exactly
    assert metrics.psnr(pred, gt) == pytest.approx(20.0, abs=1e-4)
    assert metrics.psnr(gt, gt) == math.inf
    assert metrics.psnr(torch.full((4, 4, 3), 1.5), torch.ones(4, 4, 3)) == math.inf  # clamped first


def test_ssim_matches_skimage_gaussian_ssim():
    pred, gt = _pair()
    ref = structural_similarity(
        pred.clamp(0, 1).numpy(), gt.numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=-1, data_range=1,
    )  # fmt: skip
    assert metrics.ssim(pred, gt) == pytest.approx(ref, abs=1e-5)
    batch = torch.stack([pred.clamp(0, 1), gt])
    assert float(losses.ssim(batch, torch.stack([gt, gt]))) == pytest.approx((ref + 1) / 2, abs=1e-5)


# float32: both round E[x^2] - mu^2 differently; values measured 1.7e-6 apart here (each ~1e-6 from float64), gradients 1.6e-5
@pytest.mark.parametrize("dtype,value_tol,grad_tol", [(torch.float32, 3e-6, 5e-5), (torch.float64, 1e-12, 1e-9)])
def test_cpu_ssim_kernels_match_pytorch_msssim(dtype, value_tol, grad_tol):
    """The numba SSIM (training path: CPU, target without grad) against pytorch_msssim, value and
    gradient, on a batch of two 48x40 RGB pairs."""
    from pytorch_msssim import ssim as msssim

    pairs = [_pair(seed=s) for s in (0, 1)]
    pred = torch.stack([p for p, _ in pairs]).clamp(0, 1).to(dtype)
    gt = torch.stack([g for _, g in pairs]).to(dtype)
    ours, ref = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    value = losses.ssim(ours, gt)
    expected = msssim(ref.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), data_range=1.0, win_size=11, win_sigma=1.5)
    assert value.dtype == dtype and float(value.detach()) == pytest.approx(float(expected.detach()), abs=value_tol)
    (3.0 * value).backward()
    (3.0 * expected).backward()
    assert float((ours.grad - ref.grad).norm() / ref.grad.norm()) < grad_tol


def test_cpu_ssim_gradcheck_and_gradient_to_target():
    """Finite differences agree with the analytic backward (non-square image, two channels), and a
    target that needs a gradient gets one (it takes the autograd path)."""
    pred, gt = _pair(h=15, w=13, noise=0.1)
    pred = pred[..., :2].double().requires_grad_(True)
    gt = gt[..., :2].double()
    assert torch.autograd.gradcheck(lambda p: losses.ssim(p, gt), (pred,), eps=1e-6, atol=1e-7)
    target = gt.clone().requires_grad_(True)
    losses.ssim(pred, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_photometric_loss_mix_weight_and_gradient():
    pred, gt = _pair()
    pred = pred.clone().requires_grad_(True)
    loss = losses.photometric(pred, gt)
    expected = 0.8 * losses.l1(pred, gt) + 0.2 * (1 - losses.ssim(pred, gt))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    ones = torch.ones(pred.shape[:2])
    assert torch.allclose(losses.l1(pred, gt, ones), losses.l1(pred, gt))
    half = torch.zeros(pred.shape[:2])
    half[:, : pred.shape[1] // 2] = 2.0  # weights twice the left half, ignores the right
    err = (pred - gt).abs().detach()
    assert torch.allclose(losses.l1(pred, gt, half), 2 * err[:, : pred.shape[1] // 2].sum() / err.numel())
    with pytest.raises(InputError):
        losses.l1(pred, gt, torch.ones(3, 3))
    with pytest.raises(InputError, match="11x11"):
        losses.ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))


def test_flip_runs_and_orders_errors():
    pred, gt = _pair(noise=0.02)
    worse, _ = _pair(noise=0.2)
    small, large = metrics.flip(pred, gt), metrics.flip(worse, gt)
    assert 0.0 < small < large <= 1.0
    assert metrics.flip(gt, gt) == pytest.approx(0.0, abs=1e-6)


def test_lpips_unavailable_without_weights(tmp_path):
    ok, reason = metrics.lpips_available(None)
    assert not ok and "unavailable" in reason
    ok, reason = metrics.lpips_available(tmp_path)
    assert not ok and "alex.pth" in reason
    pred, gt = _pair()
    result = metrics.evaluate_images(pred, gt, with_flip=False)
    assert result["lpips"] is None and "unavailable" in result["lpips_status"]


def test_lpips_runs_with_local_weight_files(tmp_path):
    # Random weights in the torchvision / lpips file layouts: checks loading and the metric's shape.
    g = torch.Generator().manual_seed(0)
    layers = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    backbone = {}
    for i, (cout, cin, k) in layers.items():
        backbone[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        backbone[f"features.{i}.bias"] = torch.zeros(cout)
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # ignored
    heads = {
        f"lin{j}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for j, (c, _, _) in enumerate(layers.values())
    }
    torch.save(backbone, tmp_path / "alexnet-owt-test.pth")
    torch.save(heads, tmp_path / "alex.pth")
    ok, reason = metrics.lpips_available(tmp_path)
    assert ok, reason
    pred, gt = _pair(64, 64)
    assert metrics.lpips_alex(gt, gt, tmp_path) == pytest.approx(0.0, abs=1e-7)
    assert metrics.lpips_alex(pred, gt, tmp_path) > 0.0
    assert metrics.evaluate_images(pred, gt, lpips_weights=tmp_path, with_flip=False)["lpips"] > 0.0


def test_region_psnr_on_constructed_example():
    gt = torch.zeros(20, 30, 3)
    pred = gt.clone()
    labels = torch.zeros(20, 30, dtype=torch.long)
    labels[:, 10:] = 1
    labels[15:, :] = 7
    pred[labels == 1] = 0.1  # mse 0.01 -> 20 dB
    pred[labels == 7] = 0.01  # mse 1e-4 -> 40 dB
    result = metrics.evaluate_images(pred, gt, region_labels=labels, with_flip=False)
    assert set(result["region_psnr"]) == {0, 1, 7}
    assert result["region_psnr"][0] == math.inf
    assert result["region_psnr"][1] == pytest.approx(20.0, abs=1e-4)
    assert result["region_psnr"][7] == pytest.approx(40.0, abs=1e-4)
    n1, n7 = int((labels == 1).sum()), int((labels == 7).sum())
    overall = -10 * np.log10((n1 * 0.01 + n7 * 1e-4) / labels.numel())
    assert result["psnr"] == pytest.approx(overall, abs=1e-4)


def test_evaluate_images_batch_averages():
    p1, g1 = _pair(seed=1)
    p2, g2 = _pair(noise=0.1, seed=2)
    result = metrics.evaluate_images(torch.stack([p1, p2]), torch.stack([g1, g2]))
    assert result["n_images"] == 2 and len(result["per_image"]) == 2
    assert result["psnr"] == pytest.approx((metrics.psnr(p1, g1) + metrics.psnr(p2, g2)) / 2)
    assert result["flip"] == pytest.approx((metrics.flip(p1, g1) + metrics.flip(p2, g2)) / 2)


def test_image_pair_on_two_devices_is_refused():
    """A ground truth on another device is an error, not a silent copy (one transfer per step on a GPU)."""
    img = torch.zeros(16, 16, 3)
    gt = torch.zeros(16, 16, 3, device="meta")
    for fn in (losses.ssim, losses.l1, metrics.psnr):
        with pytest.raises(ValueError, match="meta"):
            fn(img, gt)


def test_motion_weight_ramps_from_the_background_to_full_weight():
    background = torch.full((4, 4, 3), 0.5)
    gt = background.clone()
    gt[0, 0] = 0.5 + losses.MOTION_THRESHOLD * 3  # far from the background: full weight
    gt[1, 1, 2] = 0.5 - losses.MOTION_THRESHOLD / 2  # half the threshold, in one channel
    weight = losses.motion_weight(gt, background, strength=4.0)
    expected = torch.ones(4, 4)
    expected[0, 0], expected[1, 1] = 5.0, 3.0
    assert torch.allclose(weight, expected)
    assert torch.equal(losses.motion_weight(background, background, 4.0), torch.ones(4, 4))
