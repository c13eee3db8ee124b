"""CUDA backends (gsplat, inria) against the torch reference on the same GPU; skipped without CUDA
or without the package."""

from __future__ import annotations

import pytest
import torch

from moegs.raster import rasterize, rasterize_multi
from moegs.raster.bench import make_scene

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# gsplat clamps alpha at 0.999 (reference: 0.99) and bounds Gaussians with an opacity-aware box
# (reference: 3 sigma). With opacities <= 0.35 neither matters: alpha never reaches 0.99, and beyond
# 3 sigma alpha < 0.35 * exp(-4.5) < 1/255. The Inria rasteriser has the same 3-sigma box.
MAX_OPACITY = 0.35
# Float32 on both sides, but different exp implementations: an alpha within rounding of 1/255 may
# be decided differently at a few pixels.
FWD_REL_L2 = 1e-4
GRAD_REL_L2 = 1e-3


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _compare(backend: str, channels: int) -> None:
    width, height = 128, 96
    gs, viewmat, K = make_scene(
        3000, width, height, channels, seed=1, device="cuda", scale_range=(0.02, 0.15), max_opacity=MAX_OPACITY
    )
    bg = torch.rand(channels, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    g_img = torch.randn((height, width, channels), device="cuda", generator=gen)
    g_alpha = torch.randn((height, width), device="cuda", generator=gen)
    g_depth = torch.randn((height, width), device="cuda", generator=gen)
    outs, grads = {}, {}
    for b in ("torch", backend):
        params = [t.detach().clone().requires_grad_(True) for t in vars(gs).values()]
        out = rasterize(*params, viewmat, K, width, height, bg, backend=b, retain_means2d_grad=True)
        loss = (out.image * g_img).sum() + (out.alpha * g_alpha).sum() + (out.depth * g_depth).sum()
        loss.backward()
        outs[b], grads[b] = out, [p.grad for p in params] + [out.means2d.grad]
    ref, got = outs["torch"], outs[backend]
    assert float(ref.alpha.detach().mean()) > 0.3
    for name in ("image", "alpha", "depth"):
        assert _rel_l2(getattr(got, name), getattr(ref, name)) < FWD_REL_L2, name
    assert ((got.radii > 0) == (ref.radii > 0)).float().mean() > 0.99
    names = ("means", "quats", "scales", "opacities", "features", "means2d")
    for name, a, b in zip(names, grads[backend], grads["torch"]):
        assert _rel_l2(a, b) < GRAD_REL_L2, name


def test_gsplat_matches_torch():
    pytest.importorskip("gsplat")
    _compare("gsplat", channels=5)


def test_gsplat_single_pass_and_contrib():
    pytest.importorskip("gsplat")
    width, height = 96, 64
    sets = []
    for i, n in enumerate((900, 300, 1500)):
        gs, viewmat, K = make_scene(
            n, width, height, 4, seed=i, device="cuda", scale_range=(0.02, 0.15), max_opacity=MAX_OPACITY
        )
        sets.append(gs)
    weight = torch.rand((3, height, width), device="cuda")
    outs = {
        b: rasterize_multi(sets, viewmat, K, width, height, backend=b, return_contrib=True, contrib_weight=weight)
        for b in ("torch", "gsplat")
    }
    for name in ("image", "alpha", "depth"):
        assert _rel_l2(getattr(outs["gsplat"], name), getattr(outs["torch"], name)) < FWD_REL_L2, name
    for k in range(3):
        assert _rel_l2(outs["gsplat"].contrib[k], outs["torch"].contrib[k]) < FWD_REL_L2
        single = rasterize(*vars(sets[k]).values(), viewmat, K, width, height, backend="gsplat")
        assert float((single.image - outs["gsplat"].image[k]).abs().max()) < 1e-5


def test_inria_matches_torch():
    pytest.importorskip("diff_gaussian_rasterization")
    _compare("inria", channels=4)
