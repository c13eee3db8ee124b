"""Device placement without a GPU: every tensor a render, a training step, the router or
distillation makes lives on the context's device.

Runs under torch's FakeTensorMode, where any op that mixes the context's device with the CPU
raises ``FakeTensorDeviceMismatchError``. The fake device is ``meta``, not ``cuda``: on the CPU
build of torch, indexing, ``expand`` and autograd of fake ``cuda`` tensors abort for want of a CUDA
device guard, while fake ``meta`` tensors run them and check devices the same way. The
data-dependent rasteriser is replaced by a stand-in that asserts the device and shape of
everything it receives. Models are built on the host (as stages build them) and moved inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

from moegs.cameras import Camera
from moegs.context import CPU, RenderContext, resolve_context
from moegs.errors import InputError, MissingDependencyError
from moegs.experts import family_names, get_family
from moegs.losses import photometric
from moegs.moe.distill import DistillConfig, MoETeacher
from moegs.moe.model import MoEModel
from moegs.moe.render import FrozenExperts
from moegs.moe.router import PixelRouter
from moegs.moe.train import TrainRouterConfig, router_optimizer
from moegs.raster import api
from moegs.raster.structs import MultiRasterOutput
from moegs.renderable import Renderable
from moegs.rendering import render_expert
from moegs.train import make_optimizers

FAKE = RenderContext(torch.device("meta"), "torch")
W, H, N_FRAMES = 16, 12, 4


def test_auto_on_this_machine_is_cpu_with_the_native_backend():
    assert resolve_context() == CPU
    assert resolve_context("cpu", "torch").backend == "torch"
    assert resolve_context("auto", "cpu") == CPU


@pytest.mark.parametrize(
    ("device", "backend", "error", "reason"),
    [
        ("cpu", "gsplat", InputError, "CUDA tensors only"),
        ("cpu", "inria", InputError, "CUDA tensors only"),
        ("cuda", "auto", InputError, "no CUDA device"),
        ("cuda:1", "torch", InputError, "no CUDA device"),
        ("tpu", "auto", InputError, "unknown device"),
        ("auto", "vulkan", InputError, "unknown rasteriser backend"),
        ("auto", "gsplat", MissingDependencyError, "needs a CUDA device"),
    ],
)
def test_impossible_pairs_are_refused_with_the_reason(device, backend, error, reason):
    if torch.cuda.is_available() and "CUDA" in reason.upper():
        pytest.skip("this machine has CUDA")
    with pytest.raises(error, match=reason):
        resolve_context(device, backend)


def test_cuda_device_cannot_use_the_host_only_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(InputError, match="host tensors only"):
        resolve_context("cuda", "cpu")
    ctx = resolve_context("cuda", "torch")
    assert ctx.device == torch.device("cuda", 0) and ctx.describe() == {"device": "cuda:0", "backend": "torch"}


@pytest.fixture
def stand_in_rasteriser(monkeypatch):
    """Replaces the CUDA rasteriser: checks placement and shapes, returns outputs on the same device."""
    calls = []

    def render(*, sets, viewmat, K, width, height, backgrounds, near, far, contrib_weight, retain_means2d_grad):
        device = FAKE.device
        tensors = {"viewmat": viewmat, "K": K, "backgrounds": backgrounds, "contrib_weight": contrib_weight}
        for k, s in enumerate(sets):
            tensors.update({f"sets[{k}].{name}": value for name, value in vars(s).items()})
        for name, value in tensors.items():
            if value is not None:
                assert value.device == device, f"{name} is on {value.device}"
        assert viewmat.shape == (4, 4) and K.shape == (3, 3) and backgrounds.shape[0] == len(sets)
        channels = sets[0].features.shape[1]
        image = torch.stack([s.features.sum(0) + b for s, b in zip(sets, backgrounds)])[:, None, None, :]
        calls.append(len(sets))
        return MultiRasterOutput(
            image=image.expand(len(sets), height, width, channels),
            alpha=torch.zeros(len(sets), height, width, device=device),
            depth=torch.zeros(len(sets), height, width, device=device),
            means2d=[s.means[:, :2] for s in sets],
            radii=[torch.zeros(s.means.shape[0], dtype=torch.int32, device=device) for s in sets],
            contrib=None if contrib_weight is None else [s.opacities for s in sets],
        )

    monkeypatch.setattr(api, "_renderer", lambda name: render)
    return calls


@contextlib.contextmanager
def fake_device() -> Iterator[RenderContext]:
    """FakeTensorMode; modules moved into it get new parameters (they cannot be swapped in place)."""
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield FAKE
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)


def _camera(name: str = "cam") -> Camera:
    K = np.array([[10.0, 0, W / 2], [0, 10.0, H / 2], [0, 0, 1]])
    return Camera(name, W, H, K, np.eye(3), np.array([0.0, 0.0, 4.0]))


def _expert(family: str, n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    cls = get_family(family)
    return cls.from_points(cls.config_class(), xyz, rng.random((n, 3)).astype(np.float32),
                           rng.random(n).astype(np.float32), N_FRAMES)


@pytest.mark.parametrize("family", family_names())
def test_expert_renders_and_trains_on_the_context_device(family, stand_in_rasteriser):
    expert = _expert(family)
    if family == "embedding":  # its kNN graph is built by scipy on the host (no fake data), then moved
        expert.config.lambda_embedding_smooth = 0.0
    assert isinstance(expert, Renderable)
    with fake_device() as ctx:
        _render_and_step(expert, ctx)
    assert stand_in_rasteriser == [1, 1]


def _to_fake(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move ``module``; its scalar step counters (read on the host by schedules) keep their values,
    which a fake tensor, having no data, must be told."""
    with unset_fake_temporarily():  # the module is still real here
        counters = {name: int(b) for name, b in module.named_buffers() if b.dim() == 0 and not b.is_floating_point()}
    module.to(device)
    for name, b in module.named_buffers():
        if name in counters:
            b.item_memo = counters[name]
    return module


def _render_and_step(expert, ctx: RenderContext) -> None:
    _to_fake(expert, ctx.device)
    assert all(p.device == ctx.device for p in expert.params.values())
    assert all(p.device == ctx.device for p in expert.fields.parameters())
    frame = expert.render_frame(_camera(), 0.5, ctx)
    assert frame.image.device == ctx.device and frame.image.shape == (H, W, 3)
    # one training step's tensors: render with the context's background, ground truth moved at the call site
    optimizers, fields_opt = make_optimizers(expert, extent=1.0)
    out = render_expert(expert, _camera(), 0.5, ctx, ctx.tensor(expert.config.background), retain_grad=True)
    ground_truth = torch.rand(H, W, 3).to(ctx.device)
    loss = expert.regularisation(0.5) + photometric(out.image, ground_truth)
    loss.backward()
    for opt in [*optimizers.values(), fields_opt]:
        if opt is not None:
            opt.step()
    assert all(p.device == ctx.device for p in expert.params.values())


def test_mixture_router_and_teacher_run_on_the_context_device(stand_in_rasteriser):
    experts = [_expert("static", 24, 0), _expert("polynomial", 40, 1)]
    router = PixelRouter([e.num_gaussians for e in experts])
    with fake_device() as ctx:
        _mixture_steps(experts, router, ctx)
    assert stand_in_rasteriser == [2, 1, 1, 1, 1, 2, 2]


def _mixture_steps(experts, router, ctx: RenderContext) -> None:
    model = MoEModel(FrozenExperts([_to_fake(e, ctx.device) for e in experts]), router.to(ctx.device), 0.01, [])
    assert isinstance(model, Renderable)
    frame = model.render_frame(_camera(), 0.25, ctx, cache=False)
    assert frame.image.device == frame.gates.device == ctx.device
    assert frame.gates.shape == (2, H, W) and frame.expert_images.shape == (2, H, W, 3)
    naive = model.blend(_camera(), 0.25, ctx, single_pass=False)
    assert naive.image.device == ctx.device
    # a router step: gradients reach the gate tables on the device
    optimizer = router_optimizer(model.router, TrainRouterConfig())
    photometric(model.blend(_camera(), 0.25, ctx).image, torch.rand(H, W, 3).to(ctx.device)).backward()
    optimizer.step()
    assert all(g.grad is not None and g.device == ctx.device for g in model.router.gates)

    class TinyDataset:
        train_cameras = [_camera("a"), _camera("b")]
        times = np.arange(N_FRAMES) / N_FRAMES

    teacher = MoETeacher(model, TinyDataset(), DistillConfig(gate_weighting=True, novel_views=0), ctx, 1)
    target, weight = teacher.target(_camera("a"), 2)
    assert target.device == weight.device == ctx.device and weight.shape == (H, W)
