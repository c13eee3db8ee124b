"""Tests for the ``hexplane`` (4DGaussians) and ``embedding`` (E-D3DGS) expert families."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from moegs.config import build_config
from moegs.errors import InputError
from moegs.experts.base import Expert
from moegs.experts.deform_mlp import ScaledLinear, StepCounter
from moegs.experts.embedding import EmbeddingConfig, EmbeddingExpert, knn_graph
from moegs.experts.hexplane import PLANE_AXES, HexPlaneConfig, HexPlaneExpert, HexPlaneField, sample_plane
from moegs.raster import GaussianSet

N_FRAMES = 20
CAM = torch.tensor([0.0, 0.0, -4.0])


def _points(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, 3)), rng.uniform(0.0, 1.0, (n, 3))


def _hexplane(n: int = 300, **kw: object) -> HexPlaneExpert:
    small = {"warmup": 5, "base_res": 8, "feature_dim": 4, "mlp_width": 16}
    cfg = HexPlaneConfig(**{**small, **kw})  # type: ignore[arg-type]
    xyz, rgb = _points(n)
    return HexPlaneExpert.from_points(cfg, xyz, rgb, np.zeros(n), N_FRAMES)  # type: ignore[return-value]


def _embedding(n: int = 300, **kw: object) -> EmbeddingExpert:
    small = {"gaussian_dim": 4, "temporal_dim": 8, "mlp_width": 16, "knn": 5, "knn_falloff": 20.0}
    cfg = EmbeddingConfig(**{**small, **kw})  # type: ignore[arg-type]
    xyz, rgb = _points(n)
    return EmbeddingExpert.from_points(cfg, xyz, rgb, np.zeros(n), N_FRAMES)  # type: ignore[return-value]


def _tensors(g: GaussianSet) -> list[torch.Tensor]:
    return [getattr(g, f.name) for f in dataclasses.fields(g)]


def _loss(g: GaussianSet) -> torch.Tensor:
    """A loss with a generic gradient on every output (a plain sum of squares has none on unit quats)."""
    gen = torch.Generator().manual_seed(7)
    return sum((x * torch.randn(x.shape, generator=gen)).sum() for x in _tensors(g))  # type: ignore[return-value]


def _bilinear(plane: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """Direct bilinear evaluation of plane [F, H, W] at (u, v) in [-1, 1] (align_corners=True)."""
    _, h, w = plane.shape
    x, y = (u + 1) / 2 * (w - 1), (v + 1) / 2 * (h - 1)
    x0, y0 = min(int(math.floor(x)), w - 2), min(int(math.floor(y)), h - 2)
    fx, fy = x - x0, y - y0
    p = plane.double()
    return (
        p[:, y0, x0] * (1 - fx) * (1 - fy)
        + p[:, y0, x0 + 1] * fx * (1 - fy)
        + p[:, y0 + 1, x0] * (1 - fx) * fy
        + p[:, y0 + 1, x0 + 1] * fx * fy
    )


# ---- shared decoder ------------------------------------------------------------------------------
def test_scaled_linear_scales_the_adam_step_and_splits_context() -> None:
    steps = []
    for mult in (1.0, 0.1):
        layer = ScaledLinear(3, 2, torch.Generator().manual_seed(0), lr_mult=mult)
        before = layer.weight.detach() * mult
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2, eps=1e-15)
        layer(torch.ones(4, 3)).sum().backward()
        opt.step()
        steps.append((layer.weight.detach() * mult - before).abs())
    assert torch.allclose(steps[1], 0.1 * steps[0], rtol=1e-4)
    ctx, x = torch.randn(2), torch.randn(5, 1)
    assert torch.allclose(layer(x, context=ctx), layer(torch.cat([ctx.expand(5, 2), x], dim=1)), atol=1e-6)


# ---- hexplane ------------------------------------------------------------------------------------
def test_sample_plane_matches_direct_bilinear() -> None:
    g = torch.Generator().manual_seed(1)
    plane = torch.randn(1, 5, 7, 9, generator=g)
    uv = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.3, -0.7], [-0.123, 0.456], [0.99, -0.01]])
    got = sample_plane(plane, uv)
    for n, (u, v) in enumerate(uv.tolist()):
        assert torch.allclose(got[:, n].double(), _bilinear(plane[0], u, v), atol=1e-6, rtol=0)


def test_hexplane_field_multiplies_planes_and_concatenates_levels() -> None:
    field = HexPlaneField(4, 3, [1, 2], 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in field.parameters():
            p.uniform_(0.5, 1.5)
    xyz = torch.tensor([[0.1, -0.4, 0.8], [-0.9, 0.2, 0.0]])
    t = 0.35
    got = field(xyz, t)
    assert got.shape == (2, 6)
    for n in range(2):
        coords = [*xyz[n].tolist(), t]
        expected = []
        for planes in field.levels:
            prod = torch.ones(3, dtype=torch.float64)
            for plane, (i, j) in zip(planes, PLANE_AXES):  # type: ignore[call-overload]
                prod = prod * _bilinear(plane[0].detach(), coords[i], coords[j])
            expected.append(prod)
        assert torch.allclose(got[n].double(), torch.cat(expected), atol=1e-6, rtol=0)


def test_hexplane_init_space_time_ones_spatial_uniform() -> None:
    field = _hexplane().fields.hexplane  # type: ignore[union-attr]
    for planes in field.levels:
        for k, plane in enumerate(planes):  # type: ignore[arg-type]
            if k >= 3:
                assert torch.all(plane == 1.0)
            else:
                assert plane.min() >= 0.1 and plane.max() <= 0.5


def test_hexplane_zero_in_warmup_then_deforms_with_gradients() -> None:
    e = _hexplane()
    e.on_step(4)
    raw = e.deform(0.3)
    for key in ("means", "log_scales", "quats", "opacity_logits"):
        assert torch.equal(raw[key], e.params[key])
    assert e.regularisation(0.3).item() == 0.0

    e.on_step(5)
    raw = e.deform(0.3)
    for key in ("means", "log_scales", "quats", "opacity_logits", "sh0"):  # the paper's N3V default
        assert not torch.equal(raw[key], e.params[key])
    g = e.gaussians_at(0.3, CAM)
    reg = e.regularisation(0.3)
    assert reg.item() > 0.0  # L1-to-one is zero at init, plane smoothness is not
    (_loss(g) + reg).backward()
    for name, p in e.fields.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert e.params["means"].grad.abs().sum() > 0  # type: ignore[union-attr]


def test_hexplane_warmup_is_not_reentered_by_a_later_run() -> None:
    """A reloaded or fine-tuned expert (step counter restarting at 0) keeps its deformation."""
    e = _hexplane()
    e.on_step(100)
    e.on_step(0)
    assert e.deforming


def test_hexplane_config_rejects_unknown_attribute() -> None:
    cfg = build_config(HexPlaneConfig, {"deform_attrs": "means,quats", "multires": [1, 2, 4]})
    assert cfg.deform_attrs == ["means", "quats"] and cfg.multires == [1, 2, 4]
    with pytest.raises(InputError, match="deform_attrs"):
        _hexplane(deform_attrs=["means", "shN"])


# ---- embedding -----------------------------------------------------------------------------------
def test_embedding_gradients_flow_from_zero_embeddings() -> None:
    e = _embedding()
    assert torch.all(e.params["embedding"] == 0)
    e.on_step(10_000)
    e.set_view(2)  # a training camera: its time offset gets a gradient too
    g = e.gaussians_at(0.4, CAM)
    _loss(g).backward()
    assert e.params["embedding"].grad.abs().sum() > 0  # type: ignore[union-attr]
    for name, p in e.fields.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_embedding_annealing_schedule() -> None:
    e = _embedding(anneal_iters=10, deform_from=20)
    e.on_step(0)
    raw = e.deform(0.5)
    assert all(torch.equal(raw[k], e.params[k]) for k in ("means", "log_scales", "quats"))
    e.on_step(5)
    assert e.offset_weights() == {"means": 0.5, "quats": 0.5, "log_scales": 0.0, "opacity_logits": 0.0, "sh0": 0.0}
    raw = e.deform(0.5)
    assert not torch.equal(raw["means"], e.params["means"]) and torch.equal(raw["log_scales"], e.params["log_scales"])
    e.on_step(25)
    assert e.offset_weights()["log_scales"] == 0.5
    e.on_step(1000)
    assert set(e.offset_weights().values()) == {1.0}


def test_embedding_coarse_to_fine_rows() -> None:
    e = _embedding(temporal_rows=20, coarse_rows=4, c2f_iters=100)
    e.on_step(0)
    assert e.fine_rows() == 4
    e.on_step(50)
    assert e.fine_rows() == 12
    e.on_step(1000)
    assert e.fine_rows() == 20


def test_embedding_decoder_is_smooth_in_time() -> None:
    e = _embedding()
    e.on_step(10_000)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        e.params["embedding"].copy_(torch.randn(e.params["embedding"].shape, generator=g))
        e.fields.temporal.copy_(torch.randn(e.fields.temporal.shape, generator=g))  # type: ignore[union-attr]
        for t in (0.05, 0.2, 0.37, 0.45):
            base = e.deform(t)
            near, far = e.deform(t + 1e-3), e.deform(t + 0.5)
            for key in ("means", "log_scales", "quats"):
                d_near = (near[key] - base[key]).norm()
                d_far = (far[key] - base[key]).norm()
                assert d_far > 1e-3
                assert d_near < 0.02 * d_far, (t, key, float(d_near), float(d_far))


def test_embedding_smoothness_regulariser() -> None:
    e = _embedding(lambda_opacity=0.0)
    z = e.params["embedding"]
    reg = e.regularisation(0.1)
    assert reg.item() == 0.0  # all embeddings equal at init
    reg.backward()
    assert torch.isfinite(z.grad).all()  # type: ignore[arg-type]  # no NaN from |z_i - z_j| at 0
    with torch.no_grad():
        z.copy_(torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))
    assert e.regularisation(0.1).item() > 0.0
    assert float(_embedding(lambda_embedding_smooth=0.0, lambda_opacity=0.0).regularisation(0.1)) == 0.0


def test_embedding_opacity_regulariser_pulls_opacities_down() -> None:
    e = _embedding(lambda_embedding_smooth=0.0, lambda_opacity=1e-4)
    logits = e.params["opacity_logits"]
    reg = e.regularisation(0.1)
    assert math.isclose(reg.item(), 1e-4 * torch.sigmoid(logits.detach().mean()).item(), rel_tol=1e-6)
    reg.backward()
    assert torch.all(logits.grad > 0)  # type: ignore[operator]  # descent lowers every opacity


def test_embedding_temporal_rate_scales_the_table_step_only() -> None:
    """``lr_temporal_ratio`` m: the same model at init, and one Adam step moves the table m times as far."""
    moves, outputs = [], []
    for ratio in (1.0, 10.0):
        e = _embedding(lr_temporal_ratio=ratio)
        e.on_step(10_000)
        fields = e.fields
        table = lambda: fields.temporal.detach() * fields.temporal_mult  # noqa: E731  # type: ignore[operator]
        before = table()
        with torch.no_grad():
            outputs.append(e.deform(0.3)["means"])
        opt = torch.optim.Adam(fields.parameters(), lr=1e-3, eps=1e-15)
        _loss(e.gaussians_at(0.3, CAM)).backward()
        opt.step()
        moves.append((table() - before).abs())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-7)  # the stored table is rescaled, not the model
    touched = moves[0] > 0
    assert touched.any() and torch.equal(touched, moves[1] > 0)
    assert torch.allclose(moves[1][touched], 10.0 * moves[0][touched], rtol=1e-3)
    with pytest.raises(InputError, match="lr_temporal_ratio"):
        _embedding(lr_temporal_ratio=0.0)


def test_embedding_time_offsets_shift_the_lookup_per_camera() -> None:
    e = _embedding()
    reference = _embedding(lr_time_offset=0.0)  # same seed and sizes: the same decoders and table
    reference.fields.load_state_dict(e.fields.state_dict())
    for x in (e, reference):
        x.on_step(10_000)
        with torch.no_grad():
            x.params["embedding"].copy_(torch.randn(x.params["embedding"].shape, generator=torch.Generator().manual_seed(3)))
    fields = e.fields
    with torch.no_grad():
        fields.time_offsets[1] = 0.05 / fields.time_offset_mult  # type: ignore[index, operator]
        fields.time_offsets[3] = 0.15 / fields.time_offset_mult  # type: ignore[index, operator]
    with torch.no_grad():
        e.set_view(1)
        assert torch.allclose(e.deform(0.3)["means"], reference.deform(0.35)["means"], atol=1e-6)
        e.set_view(0)  # a camera not trained on yet: no offset
        assert torch.allclose(e.deform(0.3)["means"], reference.deform(0.3)["means"], atol=1e-6)
        e.set_view(None)  # test and novel views: the mean of the learnt offsets
        assert torch.allclose(e.deform(0.3)["means"], reference.deform(0.4)["means"], atol=1e-6)
        reference.set_view(1)  # offsets off: the camera changes nothing
        assert torch.equal(reference.deform(0.3)["means"], reference.deform(0.3)["means"])
    e.set_view(3)
    _loss(e.gaussians_at(0.3, CAM)).backward()
    grad = fields.time_offsets.grad  # type: ignore[union-attr]
    assert grad[3] != 0 and torch.count_nonzero(grad) == 1  # type: ignore[index]
    assert not reference.fields.time_offsets.requires_grad  # type: ignore[union-attr]
    e.set_view(64)
    with pytest.raises(InputError, match="max_cameras"):
        e.deform(0.3)


@pytest.mark.parametrize("family", ["hexplane", "embedding"])
def test_colour_and_opacity_heads_change_appearance_over_time(family: str) -> None:
    """Default: colour (DC) and opacity vary with t and get gradients; geometry-only is the old model."""
    make = _hexplane if family == "hexplane" else _embedding
    e = make()
    e.on_step(10_000)
    if isinstance(e, HexPlaneExpert):  # its space-time planes start at 1: no change over time yet
        with torch.no_grad():
            for plane in e.fields.hexplane.planes((3, 4, 5)):  # type: ignore[union-attr, operator]
                plane.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    a, b = e.gaussians_at(0.1, CAM), e.gaussians_at(0.7, CAM)
    assert not torch.allclose(a.features, b.features) and not torch.allclose(a.opacities, b.opacities)
    assert torch.equal(e.export_params_at(0.7)["sh0"], e.deform(0.7)["sh0"].detach())
    _loss(b).backward()
    assert e.params["sh0"].grad.abs().sum() > 0  # type: ignore[union-attr]
    heads = [p.grad for name, p in e.fields.named_parameters() if ".heads.sh0." in name or ".heads.opacity_logits." in name]
    assert heads and all(g is not None and g.abs().sum() > 0 for g in heads)

    old = make(deform_attrs=["means", "log_scales", "quats"])
    old.on_step(10_000)
    with torch.no_grad():
        for t in (0.1, 0.7):
            g = old.gaussians_at(t, CAM)
            raw = old.deform(t)
            assert torch.equal(raw["sh0"], old.params["sh0"]) and torch.equal(raw["opacity_logits"], old.params["opacity_logits"])
            base = Expert.gaussians_at(old, t, CAM)  # the base class's colouring from stored SH
            for x, y in zip(_tensors(g), _tensors(base)):
                assert torch.equal(x, y)


def test_knn_graph_excludes_self_even_with_duplicates() -> None:
    pts = torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    idx, sqrt_w = knn_graph(pts, 2, falloff=1.0)
    assert idx.shape == (5, 2)
    for i in range(5):
        assert i not in idx[i].tolist()
    assert torch.allclose(sqrt_w[4], torch.tensor([math.exp(-0.5), math.exp(-2.0)]))


def test_embedding_smoothness_gradient_is_bitwise_reproducible() -> None:
    """The kNN smoothness term's gradient is the same on every run (8k Gaussians, the default 20
    neighbours: large enough that a scatter-add over threads would sum in timing order)."""
    expert = _embedding(8000, gaussian_dim=32, knn=20)
    z = expert.params["embedding"]
    with torch.no_grad():
        z.copy_(torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))  # initialised to 0: no gradient
    grads = [torch.autograd.grad(expert.regularisation(0.5), z)[0] for _ in range(4)]
    assert float(grads[0].abs().max()) > 0.0
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_step_counter_reads_loaded_steps():
    """The counter keeps its value on the host, and a loaded state dict replaces it (a reloaded
    expert renders with its trained warm-up/annealing state, not step 0)."""
    trained = StepCounter()
    trained.update(700)
    trained.update(300)  # never goes back
    assert trained.value == 700 and int(trained.steps) == 700
    reloaded = StepCounter()
    assert reloaded.value == 0
    reloaded.load_state_dict(trained.state_dict())
    assert reloaded.value == 700
    holder = torch.nn.Module()
    holder.progress = StepCounter()
    holder.load_state_dict({"progress.steps": torch.tensor(42)})
    assert holder.progress.value == 42
