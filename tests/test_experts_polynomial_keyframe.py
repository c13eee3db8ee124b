"""Tests for the explicit dynamic families: ``polynomial`` (STG lite) and ``keyframe`` (Ex4DGS)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moegs.densify import duplicate_gaussians, remove_gaussians
from moegs.errors import InputError
from moegs.experts.keyframe import FWHM_PER_SIGMA, KeyframeConfig, KeyframeExpert, catmull_rom
from moegs.experts.polynomial import PolynomialConfig, PolynomialExpert, repeated_rows
from moegs.experts.temporal import normalize_quats, slerp, temporal_rbf, two_sided_temporal_opacity

N_FRAMES = 20
CAM = torch.tensor([0.0, 0.0, -5.0])


def _points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    return xyz, rng.random((n, 3)).astype(np.float32), rng.random(n).astype(np.float32)


def _polynomial(n: int = 64, seed: int = 0, **overrides: object) -> PolynomialExpert:
    xyz, rgb, times = _points(n, seed)
    expert = PolynomialExpert.from_points(PolynomialConfig(**overrides), xyz, rgb, times, N_FRAMES)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        expert.params["motion"].copy_(torch.randn(n, 3, 3, generator=g))
        expert.params["omega"].copy_(0.3 * torch.randn(n, 4, generator=g))
        expert.params["t_log_scale"].copy_(torch.rand(n, generator=g) - 1.5)
    return expert


def _keyframe(n: int = 64, seed: int = 0, dynamic: bool = True, **overrides: object) -> KeyframeExpert:
    xyz, rgb, times = _points(n, seed)
    expert = KeyframeExpert.from_points(KeyframeConfig(**overrides), xyz, rgb, times, N_FRAMES)
    g = torch.Generator().manual_seed(seed + 1)
    p = expert.params
    with torch.no_grad():
        p["key_offsets"].copy_(torch.randn(p["key_offsets"].shape, generator=g))
        p["key_quats"].copy_(torch.randn(p["key_quats"].shape, generator=g))
        p["opacity_bounds"].copy_(torch.tensor([0.3, 0.6]).expand(n, 2))
        p["dynamic"].fill_(1.0 if dynamic else 0.0)
    return expert


# ---- polynomial ----------------------------------------------------------------------------------
def test_polynomial_position_is_the_cubic_and_rotation_linear():
    expert = _polynomial()
    p = {k: v.detach().double() for k, v in expert.params.items()}
    for t in (0.0, 0.37, 0.95):
        raw = expert.deform(t)
        dt = (t - p["t_center"])[:, None]
        b = p["motion"]
        expected = p["means"] + b[:, 0] * dt + b[:, 1] * dt**2 + b[:, 2] * dt**3
        torch.testing.assert_close(raw["means"].double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(raw["quats"].double(), p["quats"] + p["omega"] * dt, rtol=1e-5, atol=1e-6)
        g = expert.gaussians_at(t, CAM)
        torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(len(g)))


def test_polynomial_opacity_is_one_at_the_centre_and_a_temporal_gaussian_around_it():
    expert = _polynomial(n=8)
    centre = float(expert.params["t_center"][3].detach())
    base = torch.sigmoid(expert.params["opacity_logits"].detach())
    factor = expert.gaussians_at(centre, CAM).opacities.detach() / base
    assert factor[3] == 1.0
    s = float(expert.params["t_log_scale"][3].detach())
    previous = 1.0
    for dt in (0.05, 0.1, 0.2, 0.4):
        f = float(expert.gaussians_at(centre + dt, CAM).opacities[3].detach() / base[3])
        assert f == pytest.approx(math.exp(-((dt / math.exp(s)) ** 2)), rel=1e-5)
        assert f < previous
        previous = f


def test_polynomial_temporal_centre_gets_no_gradient_through_motion():
    expert = _polynomial(n=8)
    expert.deform(0.4)["means"].sum().backward()
    assert expert.params["t_center"].grad is None
    assert expert.params["motion"].grad is not None
    expert.deform(0.4)["opacity_factor"].sum().backward()
    assert expert.params["t_center"].grad.abs().sum() > 0


# ---- shared temporal helpers ---------------------------------------------------------------------
def test_repeated_rows_marks_every_later_occurrence():
    ids = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0, 3.0, 3.0, 5.0, 5.0])
    assert repeated_rows(ids).tolist() == [False, False, False, False, True, True, True, False, True]


def test_polynomial_copies_get_a_random_temporal_centre():
    """STG: a clone draws mu_tau ~ U(0, 1); its parent and every other row keep theirs."""
    n = 30
    results = []
    for _ in range(2):
        expert = _polynomial(n=n)
        optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in expert.params.items()}
        before = expert.params["t_center"].detach().clone()
        idx = torch.tensor([2, 7, 7, 19])
        duplicate_gaussians(expert.params, optimizers, idx)
        drop = torch.zeros(n + len(idx), dtype=torch.bool)
        drop[[0, n + 1]] = True  # a parent and one copy of row 7 removed
        remove_gaussians(expert.params, optimizers, drop)
        expert.after_densify()
        centres = expert.params["t_center"].detach()
        assert torch.equal(centres[: n - 1], before[1:])  # originals keep their centres
        copies = centres[n - 1 :]
        assert copies.shape == (3,) and torch.all((copies >= 0) & (copies < 1))
        assert not torch.isclose(copies, before[[2, 7, 19]]).any()
        assert torch.equal(expert.params["row_id"], torch.arange(n + 2, dtype=torch.float32))
        expert.after_densify()  # nothing new: nothing redrawn
        assert torch.equal(expert.params["t_center"].detach(), centres)
        results.append(centres)
    assert torch.equal(results[0], results[1])  # seeded: a resumed run draws the same centres
    off = _polynomial(n=n, clone_random_center=False)
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in off.params.items()}
    duplicate_gaussians(off.params, optimizers, torch.tensor([4]))
    off.after_densify()
    assert off.params["t_center"][-1] == off.params["t_center"][4]


def test_slerp_halfway_matches_the_closed_form():
    q0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    q1 = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=torch.float64)  # 90 deg about z
    half = torch.tensor([math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)], dtype=torch.float64)
    torch.testing.assert_close(slerp(q0, q1, 0.5), half)
    torch.testing.assert_close(slerp(q0, -q1, 0.5), half)  # the shorter arc, whatever the sign
    quarter = torch.tensor([math.cos(math.pi / 16), 0.0, 0.0, math.sin(math.pi / 16)], dtype=torch.float64)
    torch.testing.assert_close(slerp(3 * q0, q1, 0.25), quarter)  # inputs are normalised first
    a, b = normalize_quats(torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).unbind(0)
    b = b * torch.sign((a * b).sum())
    torch.testing.assert_close(slerp(a, b, 0.5), normalize_quats(a + b))


def test_two_sided_opacity_reduces_to_the_temporal_rbf():
    bounds = torch.tensor([[0.3, 0.6], [0.5, 0.5]])
    log_w = torch.tensor([[math.log(0.1), math.log(0.2)], [-1.0, -1.0]])
    assert torch.equal(two_sided_temporal_opacity(0.45, bounds, log_w)[:1], torch.ones(1))
    torch.testing.assert_close(two_sided_temporal_opacity(0.1, bounds, log_w)[0], torch.tensor(math.exp(-4.0)))
    torch.testing.assert_close(two_sided_temporal_opacity(0.8, bounds, log_w)[0], torch.tensor(math.exp(-1.0)))
    single = temporal_rbf(torch.tensor(0.3), torch.tensor(-1.0))  # equal bounds and widths: STG's RBF
    torch.testing.assert_close(two_sided_temporal_opacity(0.8, bounds, log_w)[1], single)
    # Ex4DGS's width floor: w = exp(b) + min_width
    floored = two_sided_temporal_opacity(0.1, bounds, log_w, min_width=0.1)[0]
    torch.testing.assert_close(floored, torch.tensor(math.exp(-1.0)))
    assert torch.equal(temporal_rbf(torch.tensor(0.3), torch.tensor(-1.0), 0.0), single)


def test_keyframe_var_pad_floors_the_fade_width():
    expert = _keyframe(var_pad=2.0)
    p = expert.params
    with torch.no_grad():
        p["opacity_log_widths"].fill_(-30.0)  # learnt widths collapsed to ~0
    floor = 2.0 / (FWHM_PER_SIGMA * N_FRAMES)
    assert expert.min_fade_width == pytest.approx(floor)
    opacity = expert.gaussians_at(0.6 + floor, CAM).opacities
    torch.testing.assert_close(opacity, torch.sigmoid(p["opacity_logits"]) * math.exp(-1.0))
    no_floor = _keyframe(var_pad=0.0)
    with torch.no_grad():
        no_floor.params["opacity_log_widths"].fill_(-30.0)
    assert torch.all(no_floor.gaussians_at(0.6 + floor, CAM).opacities == 0)
    with pytest.raises(InputError, match="var_pad"):
        _keyframe(var_pad=-1.0)


# ---- keyframe ------------------------------------------------------------------------------------
def test_keyframe_interpolation_passes_through_its_keyframes_with_unit_quaternions():
    expert = _keyframe()
    p = expert.params
    times = expert.keyframe_times()
    inside = [j for j in range(len(times)) if 0.0 <= times[j] <= 1.0]
    assert len(inside) == math.ceil(N_FRAMES / expert.config.keyframe_interval) + 1
    for j in inside:
        raw = expert.deform(float(times[j]))
        torch.testing.assert_close(raw["means"], p["means"] + p["key_offsets"][:, j], rtol=0, atol=1e-6)
        key = normalize_quats(p["key_quats"][:, j])
        sign = torch.sign((raw["quats"] * key).sum(-1, keepdim=True))
        torch.testing.assert_close(raw["quats"] * sign, key, rtol=0, atol=1e-5)
    for t in np.linspace(0.0, 0.999, 37):
        quats = expert.deform(float(t))["quats"]
        torch.testing.assert_close(quats.norm(dim=-1), torch.ones(len(quats)), rtol=0, atol=1e-5)


def test_hermite_is_c1_across_a_keyframe():
    pts = torch.randn(16, 5, 3, dtype=torch.float64)  # 5 keyframes: segments 1->2 and 2->3 share keyframe 2
    h = 1e-6
    left = (catmull_rom(pts[:, 0:4], 1.0) - catmull_rom(pts[:, 0:4], 1.0 - h)) / h
    right = (catmull_rom(pts[:, 1:5], h) - catmull_rom(pts[:, 1:5], 0.0)) / h
    torch.testing.assert_close(left, right, rtol=0, atol=1e-4)
    torch.testing.assert_close(left, 0.5 * (pts[:, 3] - pts[:, 1]), rtol=0, atol=1e-4)  # the Catmull-Rom tangent
    # through the expert (float32): one-sided velocities around an interior keyframe agree
    expert = _keyframe()
    tk = float(expert.keyframe_times()[3])
    dt = 1e-3 / N_FRAMES
    pos = [expert.deform(tk + s * dt)["means"].detach().double() for s in (-1, 0, 1)]
    v_left, v_right = (pos[1] - pos[0]) / dt, (pos[2] - pos[1]) / dt
    assert ((v_left - v_right).abs().max() / v_left.abs().max()) < 0.02


def test_static_gaussians_do_not_move():
    expert = _keyframe(dynamic=False)
    p = expert.params
    for t in (0.0, 0.33, 0.71, 0.99):
        g = expert.gaussians_at(t, CAM)
        assert torch.equal(g.means, p["means"])
        torch.testing.assert_close(g.quats, normalize_quats(p["quats"]))
        torch.testing.assert_close(g.opacities, torch.sigmoid(p["opacity_logits"]))


def test_progressive_frame_limit_grows_monotonically_to_all_frames():
    expert = _keyframe(progressive_start_frames=6, progressive_steps=400)
    limits = [expert.frame_limit(step) for step in range(0, 600, 10)]
    assert limits[0] == 6 and limits[-1] == N_FRAMES and expert.frame_limit(400) == N_FRAMES
    assert all(a <= b for a, b in zip(limits, limits[1:]))
    assert len(set(limits)) > 2
    assert _keyframe(progressive_steps=0).frame_limit(0) == N_FRAMES


def test_window_growth_extrapolates_untrained_keyframes_linearly():
    expert = _keyframe(progressive_start_frames=5, progressive_steps=300, convert_every=0)
    growth = next(s for s in range(1, 300) if expert.frame_limit(s) > expert.frame_limit(s - 1))
    before = expert.params["key_offsets"].detach().clone()
    expert.on_step(growth)
    after = expert.params["key_offsets"].detach()
    last = (expert.frame_limit(growth - 1) - 1) // expert.config.keyframe_interval + expert.config.time_pad + 1
    assert torch.equal(after[:, : last + 1], before[:, : last + 1])
    steps = after[:, last:].diff(dim=1)
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=0, atol=1e-5)
    torch.testing.assert_close(steps[:, 0], (before[:, last] - before[:, 0]) / last, rtol=0, atol=1e-5)


@pytest.mark.parametrize("on_extend", [True, False])
def test_conversion_follows_every_window_extension(on_extend: bool):
    """Ex4DGS converts after each extension; the periodic schedule alone misses most of them."""
    expert = _keyframe(n=100, dynamic=False, convert_every=1000, convert_until=1000, convert_fraction=0.05,
                       progressive_start_frames=5, progressive_steps=300, convert_on_extend=on_extend)
    with torch.no_grad():
        expert.params["velocity"].copy_(torch.randn(100, 3, generator=torch.Generator().manual_seed(4)))
    growths = [s for s in range(1, 400) if expert.frame_limit(s) > expert.frame_limit(s - 1)]
    assert len(growths) == 3
    counts = []
    for step in range(400):
        expert.on_step(step)
        counts.append(int(expert.params["dynamic"].sum()))
    changes = [s for s in range(1, 400) if counts[s] != counts[s - 1]]
    assert changes == (growths if on_extend else [])
    if on_extend:
        dynamic = expert.params["dynamic"] > 0.5
        assert torch.all(expert.params["opacity_bounds"][dynamic, 1] <= 1.0)


def test_conversion_picks_the_fastest_static_gaussians_and_keeps_their_path():
    n = 100
    expert = _keyframe(n=n, dynamic=False, convert_every=50, convert_fraction=0.05, progressive_steps=0)
    with torch.no_grad():
        expert.params["velocity"][:10] = torch.randn(10, 3, generator=torch.Generator().manual_seed(3))
        expert.params["velocity"][:10] *= torch.arange(1.0, 11.0)[:, None] * 5
    speeds = expert.params["velocity"].detach().norm(dim=-1).clone()
    ts = (0.0, 0.2, 0.55, 0.9)
    with torch.no_grad():
        before = [expert.gaussians_at(t, CAM) for t in ts]
    expert.on_step(49)
    assert expert.params["dynamic"].sum() == 0
    expert.on_step(50)
    dynamic = torch.nonzero(expert.params["dynamic"]).squeeze(-1)
    assert sorted(dynamic.tolist()) == sorted(speeds.topk(5).indices.tolist())
    assert torch.equal(expert.params["velocity"][dynamic], torch.zeros(5, 3))
    for t, g0 in zip(ts, before):
        g1 = expert.gaussians_at(t, CAM)
        torch.testing.assert_close(g1.means, g0.means, rtol=0, atol=1e-5)
        torch.testing.assert_close(g1.quats, g0.quats)
        torch.testing.assert_close(g1.opacities, g0.opacities)


def test_keyframe_regularisation_has_finite_gradients_at_zero_motion():
    xyz, rgb, times = _points(32)
    expert = KeyframeExpert.from_points(KeyframeConfig(), xyz, rgb, times, N_FRAMES)
    with torch.no_grad():
        expert.params["dynamic"][:8] = 1.0
    reg = expert.regularisation(0.5)
    reg.backward()
    assert torch.isfinite(reg)
    assert all(torch.isfinite(expert.params[k].grad).all() for k in ("velocity", "key_offsets"))


def test_keyframe_count_mismatch_is_refused():
    expert = _keyframe(n=8)
    with pytest.raises(InputError, match="keyframes"):
        KeyframeExpert.from_state(KeyframeConfig(keyframe_interval=2), expert.state_tensors(), N_FRAMES)
