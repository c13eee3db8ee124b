"""Moving content of a static rig: the temporal-median background and the seeds on moving objects,
checked against the synthetic scene's true surfaces."""

from __future__ import annotations

import json

import numpy as np
import torch

from moegs.cameras import Camera
from moegs.context import CPU
from moegs.data.dataset import Dataset
from moegs.data.point_motion import moving_points
from moegs.data.synth_scene import Scene
from moegs.experts.keyframe import KeyframeConfig, KeyframeExpert
from moegs.experts.polynomial import PolynomialConfig, PolynomialExpert
from moegs import train as train_module
from moegs.rendering import render_expert
from tests.test_dataset import build_small

SURFACE = 0.05
"""A seed this close (m) to a surface is on it."""


def test_moving_points_are_the_seeds_on_moving_content(tiny_demo, demo_workspace) -> None:
    """Of the COLMAP seeds on a surface, those on moving or colour-changing content (region > 0) are
    flagged far more often than those on the static background. Measured on the tiny scene (96x72):
    46% against 1.2%; on the demo scene (256x192) 75% against 3.6%."""
    dataset = Dataset.load(tiny_demo.steps["dataset"].artifact.path)
    scene_file = next((demo_workspace / "_sources").glob("*/scene.json"))
    scene = Scene.from_json(json.loads(scene_file.read_text())["scene"])
    points = dataset.points
    region, distance = np.zeros(len(points), dtype=int), np.zeros(len(points))
    for t in np.unique(points.time):
        at = np.flatnonzero(points.time == t)
        d = np.stack([p.distance(points.xyz[at].astype(np.float64), float(t)) for p in scene.primitives])
        region[at] = np.array([p.region for p in scene.primitives])[d.argmin(axis=0)]
        distance[at] = d.min(axis=0)
    moving = moving_points(dataset, points, dataset.train_cameras)
    on_moving, on_static = (distance < SURFACE) & (region > 0), (distance < SURFACE) & (region == 0)
    recall, false_rate = moving[on_moving].mean(), moving[on_static].mean()
    print(f"moving seeds: {on_moving.sum()} on moving content ({recall:.0%} flagged), "
          f"{on_static.sum()} on the background ({false_rate:.1%} flagged)")
    assert on_moving.sum() >= 20 and on_static.sum() >= 20
    assert recall > 0.35 and false_rate < 0.05


def test_polynomial_seeds_get_the_width_of_their_kind() -> None:
    """With ``static_t_log_scale`` set, background seeds start with it and moving seeds with
    ``init_t_log_scale``; without it every seed has ``init_t_log_scale`` (STG) and nothing is asked."""
    xyz = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    rgb = np.full((6, 3), 128, dtype=np.uint8)
    times = np.linspace(0, 0.9, 6, dtype=np.float32)
    moving = np.array([True, False, True, False, False, True])
    config = PolynomialConfig(init_t_log_scale=-3.0, static_t_log_scale=0.5)
    assert PolynomialExpert.wants_moving_points(config)
    expert = PolynomialExpert.from_points(config, xyz, rgb, times, 24, moving=moving)
    expected = np.where(moving, -3.0, 0.5).astype(np.float32)
    np.testing.assert_array_equal(expert.params["t_log_scale"].detach().numpy(), expected)
    plain = PolynomialConfig(init_t_log_scale=-3.0)
    assert not PolynomialExpert.wants_moving_points(plain)
    flat = PolynomialExpert.from_points(plain, xyz, rgb, times, 24, moving=moving)
    assert (flat.params["t_log_scale"] == -3.0).all()


def test_keyframe_moving_seeds_start_dynamic_around_their_instant() -> None:
    """With ``dynamic_moving_seeds`` a moving seed is dynamic and visible at its own time only; the
    others start static and visible all clip long (Ex4DGS), as every seed does without the option."""
    xyz = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    rgb = np.full((4, 3), 90, dtype=np.uint8)
    times = np.array([0.0, 0.25, 0.5, 0.75], dtype=np.float32)
    moving = np.array([False, True, False, True])
    config = KeyframeConfig(dynamic_moving_seeds=True)
    assert KeyframeExpert.wants_moving_points(config)
    expert = KeyframeExpert.from_points(config, xyz, rgb, times, 24, moving=moving)
    np.testing.assert_array_equal(expert.params["dynamic"].detach().numpy(), moving.astype(np.float32))
    at = expert.deform(0.25)["opacity_factor"].detach().numpy()
    later = expert.deform(0.5)["opacity_factor"].detach().numpy()
    assert at[1] == 1.0 and later[1] < 1e-3 and later[3] < 1e-3
    assert (at[[0, 2]] == 1.0).all() and (later[[0, 2]] == 1.0).all()
    plain = KeyframeExpert.from_points(KeyframeConfig(), xyz, rgb, times, 24, moving=moving)
    assert not KeyframeExpert.wants_moving_points(KeyframeConfig()) and (plain.params["dynamic"] == 0).all()


def test_cull_transparent_drops_only_gaussians_no_pixel_can_see() -> None:
    """A seed far from its instant has opacity below 1/255 there: with ``cull_transparent`` its radius
    is 0 (densification does not count the view), the live one keeps its radius and the image is the same."""
    camera = Camera("cam", 32, 24, np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]), np.eye(3), np.array([0, 0, 4.0]))
    xyz = np.array([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0]], dtype=np.float32)
    config = PolynomialConfig(init_t_log_scale=-3.0, init_opacity=0.9)
    expert = PolynomialExpert.from_points(config, xyz, np.full((2, 3), 200, np.uint8), np.array([0.5, 0.0]), 24)
    with torch.no_grad():
        plain = render_expert(expert, camera, 0.5, CPU)
        culled = render_expert(expert, camera, 0.5, CPU, cull_transparent=True)
    assert (plain.radii > 0).all()
    assert culled.radii[0] == plain.radii[0] and culled.radii[1] == 0
    assert torch.equal(plain.image, culled.image)


def test_training_passes_cull_transparent_to_densification(tmp_path, monkeypatch) -> None:
    """The trainer asks for culled radii exactly when the family's config says so."""
    dataset = Dataset.load(build_small(tmp_path), cache_mb=0)
    asked: list[bool] = []
    real = train_module.render_expert

    def spy(*args, cull_transparent=False, **kwargs):
        asked.append(cull_transparent)
        return real(*args, cull_transparent=cull_transparent, **kwargs)

    monkeypatch.setattr(train_module, "render_expert", spy)
    p = dataset.points
    for cull in (False, True):
        expert = PolynomialExpert.from_points(PolynomialConfig(iterations=2, cull_transparent=cull),
                                              p.xyz, p.rgb, p.time, dataset.n_frames)
        train_module.train_expert(expert, dataset, tmp_path / f"work{cull}", CPU, progress=False)
    assert asked == [False, False, True, True]


def test_training_weights_moving_pixels_up(tmp_path, monkeypatch) -> None:
    """With ``motion_weight`` the training loss gets the motion weight map of each sampled view (against
    that camera's background); without it, plain L1."""
    dataset = Dataset.load(build_small(tmp_path), cache_mb=0)
    seen: list[torch.Tensor | None] = []
    real = train_module.photometric

    def spy(img, gt, lambda_dssim=0.2, weight=None):
        seen.append(weight)
        return real(img, gt, lambda_dssim=lambda_dssim, weight=weight)

    monkeypatch.setattr(train_module, "photometric", spy)
    p = dataset.points
    for strength in (0.0, 3.0):
        config = PolynomialConfig(iterations=3, motion_weight=strength)
        expert = PolynomialExpert.from_points(config, p.xyz, p.rgb, p.time, dataset.n_frames)
        train_module.train_expert(expert, dataset, tmp_path / f"work{strength}", CPU, progress=False)
    assert seen[:3] == [None, None, None]
    weights, camera = seen[3:], dataset.train_cameras[0]
    assert len(weights) == 3 and all(w is not None and w.shape == (camera.height, camera.width) for w in weights)
    assert all(float(w.min()) >= 1.0 and float(w.max()) <= 4.0 for w in weights)
    assert any(float(w.max()) > 1.0 for w in weights)

