"""Undistortion against the forward OpenCV model, random points, and the real caliscope capture
end to end (undistort, downscale, COLMAP triangulation with the calibration held fixed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from moegs.cameras import Camera, distort_normalized
from moegs.data.build import build_dataset
from moegs.data.colmap_init import PointCloud, colmap_points
from moegs.data.dataset import Dataset
from moegs.data.init_points import frustum_points
from moegs.data.preprocess_config import PreprocessConfig
from moegs.data.undistort import make_undistorter, pinhole_camera
from moegs.errors import InputError

# The shared data folder sits beside the checkout (as in CI: a fresh clone with shared/ next to it).
CALISCOPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "caliscope_4cam"


def distorted_camera(dist) -> Camera:
    K = np.array([[300.0, 0, 161.0], [0, 302.0, 118.0], [0, 0, 1]])
    return Camera("d", 320, 240, K, np.eye(3), np.zeros(3), np.array(dist, dtype=float))


@pytest.mark.parametrize("dist", [[-0.33, 0.046, -0.004, 0.004, 0.066], [0.18, -0.25, 0.003, 0.002, 0.12]])
def test_undistort_matches_forward_model(dist) -> None:
    cam = distorted_camera(dist)
    und = make_undistorter(cam)
    target = und.camera
    assert target.dist is None and (target.width, target.height) == (320, 240)
    # known undistorted pixels -> forward OpenCV distortion -> source pixels; draw blobs there
    known = np.array([[60.5, 50.5], [160.5, 120.5], [250.5, 200.5], [290.5, 40.5]])
    xy = (known - target.K[:2, 2]) / np.diag(target.K)[:2]
    src = distort_normalized(xy, cam.dist) @ cam.K[:2, :2].T + cam.K[:2, 2]
    jj, ii = np.meshgrid(np.arange(320) + 0.5, np.arange(240) + 0.5)
    image = np.zeros((240, 320), dtype=float)
    for u, v in src:
        image += np.exp(-((jj - u) ** 2 + (ii - v) ** 2) / (2 * 2.0**2))
    frame = np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    out = und(frame)[..., 0].astype(float)
    for u, v in known:
        win = (np.abs(jj - u) < 8) & (np.abs(ii - v) < 8)
        w = out * win
        centroid = np.array([(w * jj).sum(), (w * ii).sum()]) / w.sum()
        np.testing.assert_allclose(centroid, [u, v], atol=0.15)
    # "valid" K: every output pixel samples inside the source image (no unfilled border)
    border = np.concatenate([np.stack([np.linspace(0.5, 319.5, 200), np.full(200, e)], 1) for e in (0.5, 239.5)]
                            + [np.stack([np.full(200, e), np.linspace(0.5, 239.5, 200)], 1) for e in (0.5, 319.5)])
    xy = (border - target.K[:2, 2]) / np.diag(target.K)[:2]
    src = distort_normalized(xy, cam.dist) @ cam.K[:2, :2].T + cam.K[:2, 2]
    margin = np.minimum(np.minimum(src[:, 0] - 0.5, 319.5 - src[:, 0]), np.minimum(src[:, 1] - 0.5, 239.5 - src[:, 1]))
    assert margin.min() > -1e-3 and margin.min() < 0.05  # inside, and tight (no field thrown away)
    same = pinhole_camera(cam, "same")
    np.testing.assert_allclose(same.K, cam.K)


def test_random_points_in_the_shared_frusta() -> None:
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    cams = [Camera(f"c{i}", 64, 48, K, np.eye(3), np.array([-1.5 * i, 0, 0]), near=2.0, far=5.0) for i in range(2)]
    pts = frustum_points(cams, 500, seed=1)
    assert len(pts) == 500 and pts.rgb.dtype == np.uint8
    seen_by = np.zeros(500, dtype=int)
    for cam in cams:
        uv, depth = cam.project(pts.xyz)
        seen_by += (depth >= 2.0 - 1e-4) & (depth <= 5.0 + 1e-4) & np.all((uv >= 0) & (uv <= [64, 48]), axis=1)
    assert (seen_by == 2).all()  # in both frusta, not just one
    apart = [Camera(f"a{i}", 64, 48, K, np.eye(3), np.array([-100.0 * i, 0, 0]), near=2.0, far=5.0) for i in range(2)]
    with pytest.raises(InputError, match="share almost no volume"):
        frustum_points(apart, 500)


def test_point_cloud_ply_round_trip(tmp_path) -> None:
    pts = PointCloud(np.random.rand(10, 3), np.arange(30).reshape(10, 3), np.linspace(0, 1, 10), np.arange(10),
                     np.full(10, 0.25))
    pts.save_ply(tmp_path / "p.ply")
    back = PointCloud.load_ply(tmp_path / "p.ply")
    for key in ("xyz", "rgb", "error", "track_len", "time"):
        np.testing.assert_allclose(getattr(back, key), getattr(pts, key), rtol=1e-6)


@pytest.mark.skipif(not CALISCOPE.is_dir(), reason="caliscope_4cam capture not available")
def test_caliscope_multiview_end_to_end(tmp_path) -> None:
    started = time.perf_counter()
    result = build_dataset(CALISCOPE, tmp_path / "ds", PreprocessConfig(format="multiview", frame_stop=3, max_width=640,
                                                                    colmap_frames=3, init="colmap"), progress=False)
    seconds = time.perf_counter() - started
    m = result["metrics"]
    print(f"caliscope: {seconds:.1f} s, {m['points']} points, reprojection error "
          f"mean {m['reproj_error_mean']:.2f} px, median {m['reproj_error_median']:.2f} px")
    assert (m["n_cameras"], m["n_frames"], m["width"], m["height"]) == (4, 3, 640, 360)
    assert m["points"] >= 100 and m["reproj_error_median"] < 2.0
    ds = Dataset.load(tmp_path / "ds")
    assert [c.name for c in ds.test_cameras] == ["cam_1"] and len(ds.train_cameras) == 3
    assert all(c.dist is None for c in ds.cameras)  # undistorted to pinhole
    assert ds.frame("cam_0", 2).shape == (360, 640, 3)
    raw = json.loads((CALISCOPE / "cameras.json").read_text())["cameras"][0]
    assert ds.cameras[0].K[0, 0] != pytest.approx(raw["K"][0][0] / 2)  # "valid" K rescaled the focal
    # the points project in front of the training cameras that triangulated them, near/far bracket them
    uv, depth = ds.cameras[0].project(ds.points.xyz)
    assert np.median(depth) > 0 and ds.cameras[0].near < np.median(depth) < ds.cameras[0].far
    assert 0.1 < ds.scene_extent < 5.0  # metres: a rig about 1 m across


def test_colmap_points_are_reproducible(tiny_raw, tmp_path) -> None:
    """The same capture gives bit-identical points twice (the content-addressed dataset promises it;
    with several COLMAP threads the image ids and RANSAC streams depend on thread timing)."""
    points = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        build_dataset(tiny_raw, out, PreprocessConfig(frame_stop=2, colmap_frames=2, init="colmap"), progress=False)
        points.append(Dataset.load(out).points)
    assert len(points[0].xyz) >= 100
    assert set(np.unique(points[0].time).tolist()) == {0.0, 0.5}  # each point carries its own frame's time
    np.testing.assert_array_equal(points[0].xyz, points[1].xyz)
    np.testing.assert_array_equal(points[0].rgb, points[1].rgb)


def test_parallel_frame_sets_give_the_points_of_one_at_a_time(tiny_raw, tmp_path) -> None:
    """Frame sets triangulated on several threads at once (each its own seeded COLMAP run) give
    bit for bit the points, times and match counts of one frame set after another, in order."""
    build_dataset(tiny_raw, tmp_path, PreprocessConfig(frame_stop=4, colmap_frames=2, init="colmap"), progress=False)
    ds = Dataset.load(tmp_path)
    frames = [{c.name: ds.frame(c.name, i) for c in ds.train_cameras} for i in range(4)]
    times = [i / 4 for i in range(4)]
    ticks: list[int] = []
    runs = {w: colmap_points(ds.train_cameras, frames, times, workers=w, progress=lambda: ticks.append(w))
            for w in (1, 3)}
    (one, one_stats), (par, par_stats) = runs[1], runs[3]
    assert len(one) >= 100 and ticks == [1] * 4 + [3] * 4
    for field in ("xyz", "rgb", "error", "track_len", "time"):
        np.testing.assert_array_equal(getattr(one, field), getattr(par, field))
    assert one_stats["pair_inliers"] == par_stats["pair_inliers"]
