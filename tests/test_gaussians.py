"""Tests for SH, the Gaussian parameter dict, PLY export/import and schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from moegs import gaussians as G
from moegs.errors import InputError
from moegs.sh import C0, eval_sh, rgb_to_sh0, sh0_to_rgb, sh_basis


def _unit_dirs(n: int, seed: int = 0) -> torch.Tensor:
    d = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm(dim=-1, keepdim=True)


def test_degree0_is_dc_times_c0_plus_half():
    coeffs = torch.randn(5, 1, 3, generator=torch.Generator().manual_seed(1)) * 0.3
    out = eval_sh(0, coeffs, _unit_dirs(5).float())
    assert torch.allclose(out, (coeffs[:, 0] * C0 + 0.5).clamp_min(0))
    rgb = torch.rand(4, 3)
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)


def test_basis_matches_closed_forms():
    d = _unit_dirs(50)
    x, y, z = d.unbind(-1)
    b = sh_basis(3, d)
    pi = math.pi
    closed = {
        0: torch.full_like(x, 0.5 / math.sqrt(pi)),
        1: -math.sqrt(3 / (4 * pi)) * y,
        2: math.sqrt(3 / (4 * pi)) * z,
        4: 0.5 * math.sqrt(15 / pi) * x * y,
        6: 0.25 * math.sqrt(5 / pi) * (2 * z * z - x * x - y * y),
        8: 0.25 * math.sqrt(15 / pi) * (x * x - y * y),
        9: -0.25 * math.sqrt(35 / (2 * pi)) * y * (3 * x * x - y * y),
        10: 0.5 * math.sqrt(105 / pi) * x * y * z,
        12: 0.25 * math.sqrt(7 / pi) * z * (2 * z * z - 3 * x * x - 3 * y * y),
    }
    for k, ref in closed.items():
        assert torch.allclose(b[:, k], ref, atol=1e-12), k


def test_basis_is_orthonormal_on_the_sphere():
    # Fibonacci lattice: near-uniform points, so 4*pi*mean(Yi*Yj) approximates the integral.
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = torch.sqrt(1 - z * z)
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    b = sh_basis(3, d)
    gram = 4 * math.pi * (b.T @ b) / n
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_eval_sh_uses_only_active_bands():
    coeffs = torch.randn(6, 16, 3, generator=torch.Generator().manual_seed(2)) * 0.2
    d = _unit_dirs(6).float()
    assert torch.allclose(eval_sh(1, coeffs, d), eval_sh(1, coeffs[:, :4], d))
    with pytest.raises(InputError):
        eval_sh(2, coeffs[:, :4], d)


def _random_params(n: int, degree: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "log_scales": torch.nn.Parameter(torch.randn(n, 3, generator=g) - 3),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacity_logits": torch.nn.Parameter(torch.randn(n, generator=g)),
        "sh0": torch.nn.Parameter(torch.randn(n, 1, 3, generator=g)),
        "shN": torch.nn.Parameter(torch.randn(n, k - 1, 3, generator=g)),
    }


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, degree):
    params = _random_params(17, degree)
    path = tmp_path / "scene.ply"
    G.save_ply(path, params)
    loaded = G.load_ply(path)
    assert set(loaded) == set(G.PARAM_KEYS)
    for key in G.PARAM_KEYS:
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], params[key].detach()), key


def test_ply_uses_3dgs_property_names_and_channel_major_rest(tmp_path):
    params = _random_params(4, 3)
    path = tmp_path / "scene.ply"
    G.save_ply(path, params)
    vert = PlyData.read(str(path))["vertex"]
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert [p.name for p in vert.properties] == expected
    # channel-major: f_rest_0..14 are the red coefficients of bands 1..3, f_rest_15 the first green one
    assert np.float32(vert["f_rest_0"][2]) == params["shN"][2, 0, 0].item()
    assert np.float32(vert["f_rest_1"][2]) == params["shN"][2, 1, 0].item()
    assert np.float32(vert["f_rest_15"][2]) == params["shN"][2, 0, 1].item()
    assert np.float32(vert["rot_0"][1]) == params["quats"][1, 0].item()


def test_load_ply_rejects_non_gaussian_files(tmp_path):
    from plyfile import PlyElement

    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = tmp_path / "points.ply"
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    with pytest.raises(InputError, match="not a 3DGS file"):
        G.load_ply(path)


def test_init_from_points_scales_track_spacing():
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rgb = np.full_like(grid, 0.25)
    coarse = G.init_from_points(grid * 0.5, rgb, sh_degree=2)
    fine = G.init_from_points(grid * 0.05, rgb, sh_degree=2)
    s_coarse = torch.exp(coarse["log_scales"]).detach()
    s_fine = torch.exp(fine["log_scales"]).detach()
    # interior grid points: the 3 nearest neighbours are exactly one spacing away
    interior = ((grid > 0) & (grid < 5)).all(-1)
    assert torch.allclose(s_coarse[interior], torch.full_like(s_coarse[interior], 0.5), rtol=1e-5)
    assert torch.allclose(s_fine[interior], torch.full_like(s_fine[interior], 0.05), rtol=1e-5)
    assert coarse["shN"].shape == (216, 8, 3) and coarse["sh0"].shape == (216, 1, 3)
    assert torch.allclose(torch.sigmoid(coarse["opacity_logits"]), torch.tensor(0.1))
    means, quats, scales, opac = G.activated(coarse)
    assert torch.equal(quats, torch.tensor([[1.0, 0, 0, 0]]).expand(216, 4))
    assert torch.allclose(sh0_to_rgb(coarse["sh0"][:, 0]), torch.tensor(0.25))


def test_colors_are_view_dependent_only_through_higher_bands():
    params = _random_params(8, 1, seed=3)
    cam_a, cam_b = torch.tensor([0.0, 0.0, -5.0]), torch.tensor([4.0, 1.0, 0.0])
    c0a = G.colors(params, 0, cam_a)
    assert torch.allclose(c0a, G.colors(params, 0, cam_b))
    assert not torch.allclose(G.colors(params, 1, cam_a), G.colors(params, 1, cam_b))
    with pytest.raises(InputError):
        G.colors(params, 2, cam_a)


def test_quat_to_rotmat_is_a_rotation():
    r = G.quat_to_rotmat(torch.randn(10, 4, dtype=torch.float64))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(10, dtype=torch.float64))
    # 90 degrees about z maps x to y
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    assert torch.allclose(G.quat_to_rotmat(q) @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)  # fmt: skip


def test_schedules():
    assert G.expon_lr(0, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-4)
    assert G.expon_lr(30000, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-6)
    assert G.expon_lr(15000, 1.6e-4, 1.6e-6, 30000) == pytest.approx(1.6e-5)
