"""Rasteriser numerics: the numba `cpu` backend against the `torch` reference, gradcheck of both,
single pass vs separate passes, contribution identity, and backend resolution."""

from __future__ import annotations

import math
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch

from moegs.errors import InputError, MissingDependencyError
from moegs.raster import GaussianSet, available_backends, rasterize, rasterize_multi, resolve_backend
from moegs.raster.bench import make_scene
from moegs.raster.cpu_backend import _consts, _exp_neg, _exp_tuple
from moegs.raster.cpu_common import FASTMATH
from moegs.raster.grad_sink import grad_sink
from tests import avx2_child

# cpu and torch both compute in float32 here, in different orders (and cpu's exp is a polynomial
# within a few ulp of libm's, see test_cpu_exp_accuracy): most values agree to ~1e-7, but
# an alpha within rounding of 1/255 (or a T within rounding of 1e-4) may be decided differently,
# changing one pixel by up to ~opacity/255. Relative L2 absorbs a few such pixels; max abs bounds them.
FWD_REL_L2 = 1e-4
FWD_MAX_ABS = 2e-2
# Gradients sum many per-pixel terms; a flipped decision moves one term, hence a looser bound.
GRAD_REL_L2 = 1e-3
# Single pass vs separate passes: the same operations in the same order, up to summation order.
SINGLE_PASS_ABS = 1e-5


def _scene(n: int, width: int, height: int, channels: int, seed: int, dtype=torch.float32, max_opacity=1.0):
    """Gaussians a few pixels wide (scales relative to the image) seen by a moved, rotated camera."""
    gs, _, K = make_scene(
        n, width, height, channels, seed=seed, dtype=torch.float64,
        scale_range=(0.3 / width * 10, 3.0 / width * 10), max_opacity=max_opacity,
    )
    gen = torch.Generator().manual_seed(seed + 1000)
    axis = torch.nn.functional.normalize(torch.randn(3, generator=gen, dtype=torch.float64), dim=0)
    angle = 0.2
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    rot = torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    trans = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = rot, trans
    means = (gs.means - trans) @ rot  # camera-frame points -> world, so the camera sees them
    gs = GaussianSet(means, gs.quats, gs.scales, gs.opacities, gs.features)
    return GaussianSet(*(t.to(dtype) for t in vars(gs).values())), viewmat.to(dtype), K.to(dtype)


def _params(gs: GaussianSet) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in vars(gs).values()]


def _render(params, viewmat, K, w, h, backend, **kw):
    return rasterize(*params, viewmat, K, w, h, backend=backend, **kw)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize(
    "n,width,height,channels",
    # 77x43: partial edge tiles (13 columns: both tile halves, the right one partial; 11 rows)
    [(300, 64, 48, 1), (800, 77, 43, 3), (2000, 128, 96, 7)],
)
def test_cpu_matches_torch(n, width, height, channels):
    gs, viewmat, K = _scene(n, width, height, channels, seed=n)
    bg = torch.rand(channels, generator=torch.Generator().manual_seed(3))
    outs, grads = {}, {}
    gen = torch.Generator().manual_seed(5)
    g_img = torch.randn((height, width, channels), generator=gen)
    g_alpha, g_depth = torch.randn((2, height, width), generator=gen)
    for backend in ("torch", "cpu"):
        params = _params(gs)
        out = _render(params, viewmat, K, width, height, backend, background=bg)
        loss = (out.image * g_img).sum() + (out.alpha * g_alpha).sum() + (out.depth * g_depth).sum()
        outs[backend], grads[backend] = out, torch.autograd.grad(loss, params)

    ref, got = outs["torch"], outs["cpu"]
    assert float(ref.alpha.detach().mean()) > 0.3, "scene too empty to test anything"
    for name in ("image", "alpha", "depth"):
        a, b = getattr(got, name).detach(), getattr(ref, name).detach()
        assert _rel_l2(a, b) < FWD_REL_L2, name
        assert float((a - b).abs().max()) < FWD_MAX_ABS * (float(b.abs().max()) + 1.0), name
    assert torch.equal(got.radii, ref.radii)

    visible = ref.radii > 0
    for name, a, b in zip(("means", "quats", "scales", "opacities", "features"), grads["cpu"], grads["torch"]):
        assert torch.isfinite(a).all(), name
        assert _rel_l2(a, b) < GRAD_REL_L2, name
        nonzero = (b[visible] != 0).reshape(visible.sum(), -1).any(dim=1).float().mean()
        assert nonzero > 0.9, f"{name}: only {float(nonzero):.2f} of visible Gaussians get a gradient"


def test_cpu_avx2_code_matches_torch(avx2_result):
    """The kernels compiled for AVX2 (`FAST_MASKED_STORES` off: 0/1-mask arithmetic instead of
    selects), as most machines run them, pass the same comparison of values and gradients: in a
    child process targeting haswell without AVX-512 (the host's code is what the other tests
    check). Float32 only, as training runs; the child (tests/avx2_child.py) starts at collection.
    The child also checks that kernels loaded from numba's cache compute bit for bit what the freshly
    compiled ones did (they did not with fastmath's reassoc)."""
    check = "from moegs.raster.cpu_common import FAST_MASKED_STORES as F; assert not F"
    assert subprocess.run([sys.executable, "-c", check], env=avx2_child.environment()).returncode == 0
    code, output = avx2_result
    assert code == 0, output[-5000:]
    assert "1 passed" in output and "fingerprint compiled" in output


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    """Both backends differentiate correctly (float64 finite differences) on a one-tile scene."""
    gs, viewmat, K = _scene(6, 16, 16, 2, seed=1, dtype=torch.float64)
    opacities = 0.3 + 0.5 * torch.rand(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gs = GaussianSet(gs.means, gs.quats, gs.scales * 2.0, opacities, gs.features)  # no 0.99 clamp kink
    params = _params(gs)
    bg = torch.tensor([0.2, 0.7], dtype=torch.float64)

    def fn(*p):
        out = _render(p, viewmat, K, 16, 16, backend, background=bg)
        return out.image, out.alpha, out.depth

    image = fn(*params)[0].detach()
    assert float((image - bg).abs().amax(dim=-1).gt(1e-3).float().mean()) > 0.3, "image nearly empty"
    # cpu: fast mode (random projections v^T J u instead of every Jacobian entry); a full check of
    # the numba backend took ~20 s of per-call overhead, and the torch reference keeps the full one
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=backend == "cpu")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_single_pass_equals_separate(backend):
    width, height, channels = 64, 48, 3
    sizes = [150, 40, 220, 90]
    scenes = [_scene(n, width, height, channels, seed=20 + i) for i, n in enumerate(sizes)]
    viewmat, K = scenes[0][1], scenes[0][2]
    bgs = torch.rand((len(sizes), channels), generator=torch.Generator().manual_seed(9))
    for k in range(1, len(sizes) + 1):
        sets = [GaussianSet(*_params(s[0])) for s in scenes[:k]]
        multi = rasterize_multi(sets, viewmat, K, width, height, bgs[:k], backend=backend)
        g_img = torch.randn(multi.image.shape, generator=torch.Generator().manual_seed(k))
        loss = (multi.image * g_img).sum() + multi.alpha.sum() + (0.1 * multi.depth).sum()
        flat = [t for s in sets for t in vars(s).values()]
        g_multi = torch.autograd.grad(loss, flat)

        singles = [rasterize(*vars(s).values(), viewmat, K, width, height, bgs[i], backend=backend)
                   for i, s in enumerate(sets)]
        loss = sum((o.image * g_img[i]).sum() + o.alpha.sum() + (0.1 * o.depth).sum() for i, o in enumerate(singles))
        g_sep = torch.autograd.grad(loss, flat)

        for name in ("image", "alpha", "depth"):
            sep = torch.stack([getattr(o, name) for o in singles])
            assert float((getattr(multi, name) - sep).detach().abs().max()) < SINGLE_PASS_ABS, (k, name)
        for i, o in enumerate(singles):
            assert torch.equal(multi.radii[i], o.radii)
        for a, b in zip(g_multi, g_sep):
            assert float((a - b).abs().max()) <= SINGLE_PASS_ABS * (1.0 + float(b.abs().max()))
    assert float(multi.alpha.detach().mean()) > 0.3


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_frozen_geometry_feature_gradient_matches_full_backward(dtype, tol, monkeypatch):
    """With geometry frozen (the router's case) the cpu backend differentiates the features alone in
    one front-to-back walk; it must give what the full back-to-front backward and the torch
    reference give, in a multi-set pass."""
    from moegs.raster import cpu_backend

    full_backward, calls = cpu_backend._backward_kernel, []

    def counted(*args):
        calls.append(1)
        return full_backward(*args)

    monkeypatch.setattr(cpu_backend, "_backward_kernel", counted)
    width, height, channels = 77, 43, 3
    scenes = [_scene(n, width, height, channels, seed=40 + i, dtype=dtype) for i, n in enumerate((300, 120, 500))]
    viewmat, K = scenes[0][1], scenes[0][2]
    bgs = torch.rand((len(scenes), channels), generator=torch.Generator().manual_seed(2), dtype=dtype)
    g_img = torch.randn((len(scenes), height, width, channels), generator=torch.Generator().manual_seed(4), dtype=dtype)
    grads = {}
    for label, backend, frozen in (("feature walk", "cpu", True), ("full cpu", "cpu", False), ("torch", "torch", True)):
        sets = [GaussianSet(*(t.detach().clone().requires_grad_(not frozen or name == "features")
                              for name, t in vars(s[0]).items())) for s in scenes]
        out = rasterize_multi(sets, viewmat, K, width, height, bgs, backend=backend)
        loss = (out.image * g_img).sum() + out.alpha.sum()
        grads[label] = torch.autograd.grad(loss, [s.features for s in sets])
        assert len(calls) == (backend == "cpu" and not frozen), label  # the walk replaced the full backward
        calls.clear()
    for label in ("full cpu", "torch"):
        for a, b in zip(grads["feature walk"], grads[label]):
            assert float((a - b).abs().max()) <= tol * (1.0 + float(b.abs().max())), label
    assert all(float(g.abs().sum()) > 0 for g in grads["feature walk"])


def test_contrib_identity_and_backends_agree():
    """sum_i contrib_i = sum_p weight(p) * alpha(p), per set, and cpu == torch (70x45: partial
    edge tiles, so pixels outside the image must not count)."""
    width, height = 70, 45
    sets, weight = [], torch.rand((2, height, width), generator=torch.Generator().manual_seed(4))
    for i, n in enumerate((400, 250)):
        gs, viewmat, K = _scene(n, width, height, 3, seed=40 + i)
        sets.append(gs)
    outs = {b: rasterize_multi(sets, viewmat, K, width, height, backend=b, return_contrib=True, contrib_weight=weight)
            for b in ("torch", "cpu")}
    for b, out in outs.items():
        for k in range(2):
            c = out.contrib[k]
            assert c.shape == (sets[k].means.shape[0],) and not c.requires_grad
            assert (c >= 0).all()
            assert float(c.sum()) == pytest.approx(float((weight[k] * out.alpha[k]).sum()), rel=1e-5), b
    for k in range(2):
        assert _rel_l2(outs["cpu"].contrib[k], outs["torch"].contrib[k]) < FWD_REL_L2
    single = rasterize(*vars(sets[0]).values(), viewmat, K, width, height, backend="cpu", return_contrib=True)
    assert float(single.contrib.sum()) == pytest.approx(float(single.alpha.sum()), rel=1e-5)


@pytest.mark.parametrize("dtype,rel_tol", [(np.float32, 3e-7), (np.float64, 2e-15)])  # measured 9e-8, 5e-16
def test_cpu_exp_accuracy(dtype, rel_tol):
    """The cpu kernels' vectorisable exp is as exact as libm on [-10, 0] (float32: ~2 ulp; float64:
    close enough for gradcheck) and clamps outside it."""

    @numba.njit(fastmath=FASTMATH)
    def evaluate(x, consts):
        ec = _exp_tuple(consts)
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = _exp_neg(x[i], ec)
        return out

    x = np.concatenate([np.linspace(-10.0, 0.0, 200_001), -np.ldexp(1.0, -np.arange(1, 40))]).astype(dtype)
    exact = np.exp(x.astype(np.float64))
    assert float(np.max(np.abs(evaluate(x, _consts(dtype)) - exact) / exact)) < rel_tol
    clamped = evaluate(np.array([-50.0, 3.0], dtype), _consts(dtype))
    assert clamped[0] == pytest.approx(np.exp(-10.0), rel=rel_tol) and clamped[1] == pytest.approx(1.0, rel=rel_tol)


def test_cpu_accepts_half_precision():
    """float16 inputs render (in float32 inside) like the same values in float32; the projection
    hands means2d back in float16, which moves edges by up to ~0.03 px at this size."""
    gs, viewmat, K = _scene(400, 64, 48, 3, seed=11)
    half = [t.half().requires_grad_(True) for t in vars(gs).values()]
    out = _render(half, viewmat.half(), K.half(), 64, 48, "cpu")
    ref = _render([t.detach().float() for t in half], viewmat, K, 64, 48, "cpu")
    assert out.image.dtype == torch.float16 and float(ref.alpha.detach().mean()) > 0.3
    assert float((out.image.detach().float() - ref.image).abs().max()) < 0.05
    out.image.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float16 and torch.isfinite(t.grad).all() for t in half)


def test_means2d_grad_retained():
    gs, viewmat, K = _scene(300, 64, 48, 3, seed=7)
    grads = {}
    for backend in ("torch", "cpu"):
        out = _render(_params(gs), viewmat, K, 64, 48, backend, retain_means2d_grad=True)
        assert out.means2d.shape == (300, 2)
        out.image.sum().backward()
        assert out.means2d.grad is not None
        grads[backend] = out.means2d.grad
        assert float((out.means2d.grad[out.radii > 0] != 0).any(dim=1).float().mean()) > 0.9
    assert _rel_l2(grads["cpu"], grads["torch"]) < GRAD_REL_L2


def test_culled_scene_renders_background():
    gs, viewmat, K = _scene(50, 32, 32, 3, seed=2)
    behind = GaussianSet(-gs.means, gs.quats, gs.scales, gs.opacities, gs.features)  # z < 0 after flip
    bg = torch.tensor([0.1, 0.5, 0.9])
    for backend in ("torch", "cpu"):
        out = rasterize(*vars(behind).values(), torch.eye(4), K, 32, 32, bg, backend=backend)
        assert (out.radii == 0).all()
        assert torch.equal(out.image, bg.expand(32, 32, 3)) and float(out.alpha.abs().max()) == 0.0


def test_backend_resolution():
    assert {"torch", "cpu"} <= set(available_backends())
    assert resolve_backend("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown rasteriser backend"):
        resolve_backend("opengl")
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "cpu"
        for name in ("gsplat", "inria"):
            with pytest.raises(MissingDependencyError, match="CUDA"):
                resolve_backend(name)


def test_bad_arguments():
    gs, viewmat, K = _scene(10, 32, 32, 3, seed=0)
    args = list(vars(gs).values())
    with pytest.raises(InputError, match="quats"):
        rasterize(args[0], args[1][:, :3], *args[2:], viewmat, K, 32, 32, backend="torch")
    with pytest.raises(InputError, match="background"):
        rasterize(*args, viewmat, K, 32, 32, torch.zeros(4), backend="torch")
    with pytest.raises(InputError, match="same C"):
        rasterize_multi([gs, GaussianSet(*args[:4], args[4][:, :2])], viewmat, K, 32, 32, backend="torch")
    with pytest.raises(InputError, match="near"):
        rasterize(*args, viewmat, K, 32, 32, near=0.0, backend="torch")


def test_grad_sink_forwards_a_slice():
    """The hook the CUDA backends use to expose means2d.grad, checked on CPU."""
    x = torch.randn(2, 5, 2, requires_grad=True)
    batched = 3.0 * x
    sink = grad_sink(batched[1, :4], batched, lambda g: g[1, :4])
    (batched**2).sum().backward()
    assert torch.allclose(sink.grad, 2.0 * batched.detach()[1, :4])
