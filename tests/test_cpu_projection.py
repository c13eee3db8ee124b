"""The numba EWA projection (`project_gaussians_cpu`) against the torch reference `project_gaussians`:
values, radii and gradients in float64 and float32, gradcheck, unused outputs, and the fallback to
torch when the camera needs gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from moegs.raster import cpu_projection
from moegs.raster.bench import make_scene
from moegs.raster.cpu_projection import project_gaussians_cpu
from moegs.raster.projection import _FRUSTUM_SLACK, Projected, project_gaussians

WIDTH, HEIGHT, NEAR, FAR = 96, 64, 0.2, 4.0
OUTPUTS = ("means2d", "conics", "depths")
# float64: both compute the same formulas; conics = (c, -b, a) / det loses up to ~ac/det digits to
# cancellation in det = ac - b^2 (cov2d is formed as V V^T here, as J Sigma' J^T there).
F64_RTOL = 1e-10


def _random_rotation(gen: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q * torch.det(q)  # a proper rotation


def _hard_scene(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(means, quats, scales, viewmat, K) in float64: a rotated, translated camera with a non-centred
    K (fx != fy), Gaussians spread a little beyond the image, a sixth pushed far outside horizontally
    and a sixth vertically (Jacobian clamp active), some behind the camera and some beyond `far`
    (culled), quaternions of random length and anisotropic, partly needle-like scales."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    fx, fy, cx, cy = 80.0, 70.0, 40.0, 36.0
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    z = 0.5 + 4.0 * rand(n)  # beyond FAR = 4 for about an eighth
    x = ((1.3 * rand(n) - 0.15) * WIDTH - cx) / fx * z
    y = ((1.3 * rand(n) - 0.15) * HEIGHT - cy) / fy * z
    group = torch.arange(n) % 6
    x = torch.where(group == 1, x * 4.0 + torch.sign(x) * z, x)
    y = torch.where(group == 2, y * 4.0 + torch.sign(y) * z, y)
    z = torch.where(group == 3, -z, z)  # behind the camera
    p_cam = torch.stack([x, y, z], dim=-1)

    rot, trans = _random_rotation(gen), torch.randn(3, generator=gen, dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = rot, trans
    means = (p_cam - trans) @ rot  # world points whose camera coordinates are p_cam

    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64) * (0.2 + 3.0 * rand(n, 1))
    scales = torch.exp(math.log(0.005) + (math.log(0.3) - math.log(0.005)) * rand(n, 3))
    scales[::5, 0] *= 10.0
    return means, quats, scales, viewmat, K


def _make_scene_case(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The benchmark's scene (identity camera, centred K) in float64."""
    gs, viewmat, K = make_scene(n, WIDTH, HEIGHT, seed=seed, dtype=torch.float64)
    return gs.means, gs.quats, gs.scales, viewmat, K


CASES = {"hard": _hard_scene, "make_scene": _make_scene_case}


def _project(fn, means, quats, scales, viewmat, K) -> Projected:
    return fn(means, quats, scales, viewmat, K, WIDTH, HEIGHT, NEAR, FAR)


def _leaves(*tensors: Tensor, dtype: torch.dtype) -> list[Tensor]:
    return [t.detach().to(dtype).requires_grad_(True) for t in tensors]


def _scene_stats(means: Tensor, viewmat: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Per Gaussian: z outside [near, far]; x/z or y/z outside the Jacobian clamp limits."""
    p = means @ viewmat[:3, :3].T + viewmat[:3, 3]
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    out_z = (z < NEAR) | (z > FAR)
    slack_x, slack_y = _FRUSTUM_SLACK * 0.5 * WIDTH / fx, _FRUSTUM_SLACK * 0.5 * HEIGHT / fy
    u, v = x / z, y / z
    clamped = (u > (WIDTH - cx) / fx + slack_x) | (u < -cx / fx - slack_x)
    clamped |= (v > (HEIGHT - cy) / fy + slack_y) | (v < -cy / fy - slack_y)
    return out_z, clamped & ~out_z


def _assert_rel_close(actual: Tensor, expected: Tensor, rtol: float, what: str) -> None:
    """|actual - expected| <= rtol * (|expected| + max |expected| * 1e-3), elementwise (all zero
    where expected is all zero)."""
    scale = expected.abs() + max(expected.abs().max().item() * 1e-3, torch.finfo(expected.dtype).tiny)
    err = ((actual - expected).abs() / scale).max().item()
    assert err <= rtol, f"{what}: max scaled error {err:.3g} > {rtol:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_match_torch_float64(case):
    means, quats, scales, viewmat, K = CASES[case](1700, seed=1)  # 3 full blocks + a partial one
    ref = _project(project_gaussians, means, quats, scales, viewmat, K)
    out = _project(project_gaussians_cpu, means, quats, scales, viewmat, K)
    for name in OUTPUTS:
        assert getattr(out, name).dtype == torch.float64
        assert getattr(out, name).shape == getattr(ref, name).shape
        _assert_rel_close(getattr(out, name), getattr(ref, name), F64_RTOL, name)
    assert out.radii.dtype == torch.int32
    assert torch.equal(out.radii, ref.radii)
    assert (ref.radii > 0).sum() > 300
    if case == "hard":
        out_z, clamped = _scene_stats(means, viewmat, K)
        assert out_z.sum() > 200 and clamped.sum() > 300
        assert (ref.radii[out_z] == 0).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_match_torch_float32(case):
    """float32 against the float64 result for the same inputs: no worse than torch's float32 itself.

    means2d and depths take the same operations in the same order (they agree bit for bit here, but
    a matmul there is free to round differently). conics lose up to ac/det digits to the cancellation
    in det = ac - b^2 for needle-like Gaussians (~1e-3 relative at worst here), differently in each
    order of operations, so they are bounded by torch's own float32 error. A radius is
    ceil(3 sqrt(lambda_max)) and on-screen culling compares floats, so a value within rounding of an
    integer or of the image border may land either way: nearly all radii match (all, in these
    scenes) and the others differ by one pixel or by culling.
    """
    f32 = [t.float() for t in CASES[case](1700, seed=2)]
    truth = _project(project_gaussians, *(t.double() for t in f32))  # same inputs, exact-ish arithmetic
    ref = _project(project_gaussians, *f32)
    out = _project(project_gaussians_cpu, *f32)
    for name in OUTPUTS:
        got, want, exact = getattr(out, name), getattr(ref, name), getattr(truth, name)
        assert got.dtype == torch.float32
        scale = exact.abs() + exact.abs().max() * 1e-3
        err_cpu = ((got.double() - exact).abs() / scale).max().item()
        err_torch = ((want.double() - exact).abs() / scale).max().item()
        assert err_cpu <= 2.0 * err_torch + 1e-6, f"{name}: {err_cpu:.3g} vs torch {err_torch:.3g}"
        _assert_rel_close(got.double(), want.double(), 1e-2 if name == "conics" else 1e-5, name)
    same = out.radii == ref.radii
    assert same.float().mean() >= 0.99
    both = ~same & (out.radii > 0) & (ref.radii > 0)
    assert ((out.radii - ref.radii)[both].abs() <= 1).all()


def _grads(fn, scene, used: tuple[str, ...], seed: int, dtype=torch.float64) -> tuple[Tensor, ...]:
    means, quats, scales, viewmat, K = scene
    leaves = _leaves(means, quats, scales, dtype=dtype)
    proj = _project(fn, *leaves, viewmat.to(dtype), K.to(dtype))
    gen = torch.Generator().manual_seed(seed)
    outs = [getattr(proj, name) for name in used]
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in outs]
    return torch.autograd.grad(outs, leaves, upstream, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "used", [OUTPUTS, ("means2d",), ("conics",), ("depths",), ("means2d", "depths")], ids="+".join
)
def test_gradients_match_torch_float64(case, used):
    """Random upstream gradients on the used outputs; the others reach backward as None."""
    scene = CASES[case](700, seed=3)
    ref = _grads(project_gaussians, scene, used, seed=4)
    out = _grads(project_gaussians_cpu, scene, used, seed=4)
    for name, g_out, g_ref in zip(("means", "quats", "scales"), out, ref):
        _assert_rel_close(g_out, g_ref, 1e-9, name)
    # Non-vacuous: some Gaussians culled, some clamped, and every visible one gets a gradient (quats
    # and scales only through the conics).
    out_z, clamped = _scene_stats(scene[0], scene[3], scene[4])
    assert out_z.sum() > 50 and (clamped.sum() > 100 or case == "make_scene")
    visible = _project(project_gaussians, *scene).radii > 0
    assert visible.float().mean() > 0.3
    for g in out if "conics" in used else out[:1]:
        assert (g[visible].abs().amax(dim=-1) > 0).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_torch_float32(case):
    """Same gradients in float32 up to rounding, amplified like the conics (see the float32 values test)."""
    scene = CASES[case](700, seed=5)
    ref = _grads(project_gaussians, scene, OUTPUTS, seed=6, dtype=torch.float32)
    out = _grads(project_gaussians_cpu, scene, OUTPUTS, seed=6, dtype=torch.float32)
    for name, g_out, g_ref in zip(("means", "quats", "scales"), out, ref):
        assert g_out.dtype == torch.float32
        err = ((g_out - g_ref).norm() / g_ref.norm()).item()
        assert err < 1e-4, f"{name}: relative L2 error {err:.3g}"


def test_gradcheck_float64():
    """A handful of Gaussians away from every switch: two plain ones, one clamped in x (far outside),
    one clamped in y, one behind the camera; quats un-normalised, scales anisotropic."""
    gen = torch.Generator().manual_seed(7)
    _, _, _, viewmat, K = _hard_scene(6, seed=8)
    p_cam = torch.tensor(
        [[0.1, 0.05, 1.5], [-0.4, 0.2, 2.5], [6.0, 0.1, 2.0], [0.2, -5.0, 2.2], [0.3, 0.1, -1.0]],
        dtype=torch.float64,
    )
    means = (p_cam - viewmat[:3, 3]) @ viewmat[:3, :3]
    quats = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2.0
    scales = torch.tensor([[0.1, 0.02, 0.05], [0.03, 0.2, 0.08], [0.05, 0.05, 0.3], [0.2, 0.1, 0.04], [0.1, 0.1, 0.1]],
                          dtype=torch.float64)  # fmt: skip
    ref = _project(project_gaussians, means, quats, scales, viewmat, K)
    assert (ref.radii[:2] > 0).all() and ref.radii[4] == 0

    def fn(m: Tensor, q: Tensor, s: Tensor) -> tuple[Tensor, ...]:
        p = _project(project_gaussians_cpu, m, q, s, viewmat, K)
        return p.means2d, p.conics, p.depths

    leaves = _leaves(means, quats, scales, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_parallel_path_matches(monkeypatch):
    """The multi-threaded launch (normally from 50k Gaussians on) gives the same values and gradients."""
    scene = _hard_scene(1300, seed=9)
    serial = _grads(project_gaussians_cpu, scene, OUTPUTS, seed=10)
    monkeypatch.setattr(cpu_projection, "_PARALLEL_MIN_GAUSSIANS", 0)
    parallel = _grads(project_gaussians_cpu, scene, OUTPUTS, seed=10)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


def test_means2d_retain_grad():
    """Densification reads means2d.grad: means2d must be an ordinary non-leaf autograd output."""
    means, quats, scales, viewmat, K = _hard_scene(100, seed=11)
    leaves = _leaves(means, quats, scales, dtype=torch.float32)
    proj = _project(project_gaussians_cpu, *leaves, viewmat.float(), K.float())
    proj.means2d.retain_grad()
    g = torch.randn(proj.means2d.shape, generator=torch.Generator().manual_seed(12))
    ((proj.means2d * g).sum() + proj.conics.sum()).backward()
    assert torch.equal(proj.means2d.grad, g)
    assert all(t.grad is not None for t in leaves)


@pytest.mark.parametrize("camera_param", ["viewmat", "K"])
def test_camera_gradients_fall_back_to_torch(camera_param):
    means, quats, scales, viewmat, K = _hard_scene(200, seed=13)
    cams = {"viewmat": viewmat, "K": K}
    grads = []
    for fn in (project_gaussians, project_gaussians_cpu):
        cam = {k: v.clone().requires_grad_(k == camera_param) for k, v in cams.items()}
        leaves = _leaves(means, quats, scales, dtype=torch.float64)
        proj = _project(fn, *leaves, cam["viewmat"], cam["K"])
        (proj.means2d.sum() + proj.conics.sum() + proj.depths.sum()).backward()
        grads.append(cam[camera_param].grad)
    assert grads[1] is not None and grads[1].abs().max() > 0
    assert torch.equal(grads[0], grads[1])


def test_no_gaussians():
    _, _, _, viewmat, K = _hard_scene(1, seed=14)
    empty = [torch.zeros(0, k, dtype=torch.float64, requires_grad=True) for k in (3, 4, 3)]
    proj = _project(project_gaussians_cpu, *empty, viewmat, K)
    assert proj.means2d.shape == (0, 2) and proj.conics.shape == (0, 3) and proj.depths.shape == (0,)
    assert proj.radii.shape == (0,)
    grads = torch.autograd.grad(proj.means2d.sum() + proj.conics.sum(), empty)
    assert [g.shape for g in grads] == [t.shape for t in empty]
