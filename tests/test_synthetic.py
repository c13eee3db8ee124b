"""The synthetic scene generator: N3V folder layout, camera convention, geometry and motion.

The expected values here are computed independently of the generator's own helpers where it
matters (LLFF -> OpenCV conversion, object positions from scene.json), so a convention slip in the
generator cannot be hidden by the same slip in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moegs.data.synth_scene import Box, HeightField, Scene
from moegs.data.synthetic import PRESETS, REGION_NAMES, generate, surface_distance, surface_samples
from moegs.data.video import read_video
from moegs.errors import InputError

TINY = PRESETS["tiny"]
RIGID, FAST, COLOUR = REGION_NAMES.index("rigid"), REGION_NAMES.index("fast"), REGION_NAMES.index("colour")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    summary = generate(out, "tiny", seed=0, progress=False)
    return out, summary


def _labels(raw_dir: Path, cam: int) -> np.ndarray:
    with np.load(raw_dir / "labels" / f"cam{cam:02d}.npz") as data:
        return data["labels"]


def _scene_info(raw_dir: Path) -> dict:
    return json.loads((raw_dir / "scene.json").read_text())


def _primitive(info: dict, name: str) -> dict:
    return next(p for p in info["scene"]["primitives"] if p["name"] == name)


def _opencv_from_llff(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(K, R, t) with x_cam = R X + t from one poses_bounds row, written out longhand."""
    pose = row[:15].reshape(3, 5)
    down, right, back, centre = pose[:, 0], pose[:, 1], pose[:, 2], pose[:, 3]
    height, width, focal = pose[:, 4]
    c2w = np.stack([right, down, -back], axis=1)
    R = c2w.T
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return K, R, -R @ centre, int(height), int(width)


def test_writes_a_raw_n3v_folder(raw: tuple[Path, dict]) -> None:
    out, summary = raw
    assert summary["cams"] == TINY.n_cams and summary["frames"] == TINY.n_frames
    assert summary["size"] == [TINY.width, TINY.height] and summary["seconds"] > 0
    assert json.loads((out / "regions.json").read_text()) == {"names": REGION_NAMES}
    poses_bounds = np.load(out / "poses_bounds.npy")
    assert poses_bounds.shape == (TINY.n_cams, 17)
    near, far = poses_bounds[:, 15], poses_bounds[:, 16]
    assert np.all(near > 0.5) and np.all(far > near)
    cams_with_every_region = 0
    for cam in range(TINY.n_cams):
        video = read_video(out / f"cam{cam:02d}.mp4")
        assert video.shape == (TINY.n_frames, TINY.height, TINY.width, 3)
        labels = _labels(out, cam)
        assert labels.dtype == np.uint8 and labels.shape == video.shape[:3]
        cams_with_every_region += set(np.unique(labels)) == set(range(len(REGION_NAMES)))
    assert cams_with_every_region >= 1
    assert not (out.parent / "raw.partial").exists()


def test_same_seed_same_output_other_seed_differs(raw: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = raw
    again = tmp_path / "again"
    generate(again, "tiny", seed=0, progress=False)
    assert (again / "scene.json").read_text() == (out / "scene.json").read_text()
    for cam in range(TINY.n_cams):
        np.testing.assert_array_equal(_labels(again, cam), _labels(out, cam))
    other = tmp_path / "other"
    generate(other, "tiny", seed=1, progress=False)
    assert (other / "scene.json").read_text() != (out / "scene.json").read_text()


def test_llff_poses_project_object_centres_onto_their_labels(raw: tuple[Path, dict]) -> None:
    out, _ = raw
    info = _scene_info(out)
    box, ball = _primitive(info, "rigid_box"), _primitive(info, "fast_ball")
    # Positions at t = 0 straight from the motion formulas documented in scene.json's primitives.
    box_centre = np.array(box["centre"]) + np.array(box["amplitude"]) * np.sin(np.array(box["phase"]))
    ball_centre = np.array(
        [ball["x0"], ball["floor_y"] - ball["radius"] - ball["height"] * abs(np.sin(ball["bounce_phase"])), ball["z0"]]
    )
    poses_bounds = np.load(out / "poses_bounds.npy")
    seen = 0
    for cam, row in enumerate(poses_bounds):
        K, R, t, height, width = _opencv_from_llff(row)
        assert (height, width) == (TINY.height, TINY.width)
        cam_json = info["cameras"][cam]
        np.testing.assert_allclose(R, cam_json["R"], atol=1e-12)
        np.testing.assert_allclose(K, cam_json["K"], atol=1e-12)
        labels = _labels(out, cam)[0]
        for point, region in ((box_centre, RIGID), (ball_centre, FAST)):
            x = K @ (R @ point + t)
            assert x[2] > 0
            u, v = x[:2] / x[2]
            if 0 <= u < width and 0 <= v < height:
                assert labels[int(v), int(u)] == region, (cam, REGION_NAMES[region])
                seen += 1
    assert seen >= TINY.n_cams  # both objects are in view of most cameras


def test_surface_distance_is_zero_on_surfaces_and_grows_off_them(raw: tuple[Path, dict]) -> None:
    out, _ = raw
    info = _scene_info(out)
    rng = np.random.default_rng(0)
    frame = 3
    t = frame / TINY.n_frames

    wall = _primitive(info, "back_wall")
    ab = rng.uniform([3.0, 0.5], [12.0, 3.0], size=(50, 2))
    wall_points = np.array(wall["origin"]) + ab[:, :1] * np.array(wall["u_axis"]) + ab[:, 1:] * np.array(wall["v_axis"])
    wall_normal = np.array([0.0, 0.0, -1.0])  # towards the cameras

    scene = Scene.from_json(info["scene"])
    box = next(p for p in scene.primitives if isinstance(p, Box))
    centre, rot = box.pose(t)
    local = rng.uniform(-1.0, 1.0, size=(60, 3)) * np.array(box.half_size)
    axis = rng.integers(0, 3, size=60)
    sign = rng.choice([-1.0, 1.0], size=60)
    local[np.arange(60), axis] = sign * np.array(box.half_size)[axis]
    box_points = centre + local @ rot.T
    box_normals = (np.eye(3)[axis] * sign[:, None]) @ rot.T

    flag = next(p for p in scene.primitives if isinstance(p, HeightField))
    x = rng.uniform(flag.x0 + 0.1, flag.x0 + flag.width - 0.1, 40)
    y = rng.uniform(flag.y0 + 0.1, flag.y0 + flag.height - 0.1, 40)
    h, hx, hy = flag.height_and_slope(x, y, t)
    flag_points = np.stack([x, y, flag.z0 + h], axis=-1)
    flag_normals = np.stack([hx, hy, -np.ones_like(hx)], axis=-1)
    flag_normals /= np.linalg.norm(flag_normals, axis=-1, keepdims=True)

    points = np.concatenate([wall_points, box_points, flag_points])
    normals = np.concatenate([np.tile(wall_normal, (len(wall_points), 1)), box_normals, flag_normals])
    assert surface_distance(out, points, frame).max() < 1e-6
    previous = np.zeros(len(points))
    for offset in (0.01, 0.03, 0.06):
        moved = surface_distance(out, points + offset * normals, frame)
        np.testing.assert_allclose(moved, offset, atol=2e-3)
        assert np.all(moved > previous)
        previous = moved
    # The box moves: its frame-3 surface points are off the surface at frame 0.
    assert surface_distance(out, box_points, 0).mean() > 0.02
    # Empty space in front of the rig is far from everything.
    assert surface_distance(out, np.array([[0.0, -1.0, 1.0]]), frame)[0] > 0.5


def test_surface_samples_lie_on_the_rendered_surfaces_at_their_frames(raw: tuple[Path, dict]) -> None:
    """bench_step's stand-in for an SfM initialisation: points on the scene the same preset and
    seed render, each at its own frame."""
    points, times = surface_samples("tiny", 600, seed=3)
    assert len(points) == 600 and times.min() >= 0.0 and times.max() < 1.0
    frames = np.rint(times * TINY.n_frames).astype(int)
    assert len(np.unique(frames)) == TINY.n_frames
    for f in np.unique(frames):
        assert np.abs(surface_distance(raw[0], points[frames == f], frame=int(f))).max() < 1e-6
    with pytest.raises(InputError, match="positive"):
        surface_samples("tiny", 0)


def test_surface_distance_rejects_bad_input(raw: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = raw
    with pytest.raises(InputError, match="frame"):
        surface_distance(out, np.zeros((1, 3)), TINY.n_frames)
    with pytest.raises(InputError, match="shape"):
        surface_distance(out, np.zeros(3))
    with pytest.raises(InputError, match="scene.json"):
        surface_distance(tmp_path, np.zeros((1, 3)))


def test_motion_rigid_moves_and_colour_panel_changes_in_place(raw: tuple[Path, dict]) -> None:
    out, _ = raw
    labels = _labels(out, 0)
    video = read_video(out / "cam00.mp4").astype(np.float64)
    first, later = 0, TINY.n_frames // 2

    def centroid(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask).mean(axis=0)

    rigid_shift = np.linalg.norm(centroid(labels[later] == RIGID) - centroid(labels[first] == RIGID))
    assert rigid_shift > 2.0
    fast_shift = np.linalg.norm(centroid(labels[later] == FAST) - centroid(labels[first] == FAST))
    assert fast_shift > 2.0

    panel = labels == COLOUR
    np.testing.assert_array_equal(panel[first], panel[later])
    inside = panel[first]
    assert inside.sum() > 100
    colour_change = np.abs(video[later][inside] - video[first][inside]).mean()
    assert colour_change > 10.0
    # Background that stays background barely changes (only compression noise).
    static = np.all(labels == 0, axis=0)
    assert np.abs(video[later][static] - video[first][static]).mean() < 2.0


def test_rejects_unknown_preset_and_non_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="preset"):
        generate(tmp_path / "x", "huge", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder"):
        generate(tmp_path / "busy", "tiny", progress=False)
    assert (tmp_path / "busy" / "file.txt").read_text() == "keep me"
