"""Choosing the initial points (auto: COLMAP, then carving, then the shared frusta), what the record
says, the errors that name the numbers, and the one place PreprocessConfig is validated."""

from __future__ import annotations

import numpy as np
import pytest

from moegs.cameras import Camera
from moegs.data.colmap_init import PointCloud
from moegs.data.init_points import initial_points, new_content, record_stats, spread_indices
from moegs.data.preprocess_config import PreprocessConfig
from moegs.errors import InputError


def _rig(spacing: float) -> list[Camera]:
    K = np.array([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
    return [Camera(f"c{i}", 48, 32, K, np.eye(3), np.array([-spacing * i, 0, 0]), near=1.0, far=4.0) for i in range(3)]


def _blank(name: str, i: int) -> np.ndarray:
    return np.full((32, 48, 3), 120, dtype=np.uint8)  # nothing to match, nothing moving, no texture


def test_spread_indices_cover_the_clip() -> None:
    assert spread_indices(24, 4) == [0, 8, 15, 23]
    assert spread_indices(3, 8) == [0, 1, 2]
    assert spread_indices(1, 4) == [0]


def test_auto_falls_back_to_the_shared_frusta_and_says_why() -> None:
    config = PreprocessConfig(init="auto", init_points=500, colmap_frames=2, carve_frames=2)
    points, record = initial_points(config, _rig(0.2), 4, _blank)
    assert record.method == "random" and len(points) == 500
    assert "COLMAP triangulated 0 points on 2 frame(s) (need 100)" in record.reason
    assert "carving found 0 foreground and 0 background points" in record.reason
    assert set(record.tried) == {"colmap", "carve", "random"}
    assert record_stats(points, record) == {"points": 500, "init": "random", "reproj_error_mean": None,
                                            "reproj_error_median": None}


def test_asked_method_that_fails_names_the_numbers() -> None:
    with pytest.raises(InputError, match=r"init colmap: COLMAP triangulated 0 points on 2 frame\(s\) \(need 100\); "
                                         r"best camera pair had 0 verified matches"):
        initial_points(PreprocessConfig(init="colmap", colmap_frames=2), _rig(0.2), 4, _blank)
    with pytest.raises(InputError, match=r"init carve: carving found 0 foreground and 0 background points \(need 100\)"):
        initial_points(PreprocessConfig(init="carve", carve_frames=2), _rig(0.2), 4, _blank)


def test_everything_failing_names_every_count() -> None:
    config = PreprocessConfig(init="auto", init_points=500, colmap_frames=1, carve_frames=1)
    with pytest.raises(InputError) as info:
        initial_points(config, _rig(500.0), 2, _blank)  # cameras far apart: no shared volume at all
    message = str(info.value)
    assert message.startswith("no initial points: colmap: COLMAP triangulated 0 points")
    assert "carve: carving found 0 foreground" in message and "share almost no volume" in message


@pytest.mark.parametrize("field, value, message", [
    ("downscale", 0.5, "config key downscale: must be >= 1, got 0.5"),
    ("max_width", 8, "config key max_width: must be >= 16, got 8"),
    ("colmap_frames", 0, "config key colmap_frames: must be >= 1, got 0"),
    ("size_mismatch", "stretch", "unknown size_mismatch 'stretch'"),
    ("init_points", 50, r"init_points \(50\) must be at least min_points \(100\)"),
    ("init", "dense", "unknown init 'dense'"),
    ("frame_stop", 0, "config key frame_stop: must be >= 1, got 0"),
])
def test_config_bounds_live_in_one_place(field, value, message) -> None:
    with pytest.raises(InputError, match=message):
        PreprocessConfig(**{field: value})  # refused on creation, however the config is made
    changed = PreprocessConfig()
    setattr(changed, field, value)
    with pytest.raises(InputError, match=message):
        changed.validate()  # and again where the library takes it (build_dataset)


def test_cross_field_rule() -> None:
    with pytest.raises(InputError, match=r"frame_stop \(2\) must be greater than frame_start \(3\)"):
        PreprocessConfig(frame_start=3, frame_stop=2)


def test_cli_refuses_a_bad_bound_before_reading_anything(tmp_path) -> None:
    from typer.testing import CliRunner

    from moegs_cli.app import app

    (tmp_path / "src").mkdir()
    result = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "preprocess", str(tmp_path / "src"),
                                      "--init-points", "10"])
    assert result.exit_code == 2 and "init_points (10) must be at least min_points (100)" in result.output
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("manifest.json"))


def test_new_content_keeps_what_moved_and_drops_static_repeats() -> None:
    """A later frame adds its moved object, not the static wall triangulated again (within 1 mm)."""
    rng = np.random.default_rng(0)
    u, v = np.meshgrid(np.arange(20) * 0.1, np.arange(20) * 0.1)
    wall = np.stack([u.ravel(), v.ravel(), np.full(u.size, 5.0)], axis=1)  # spacing 0.1
    ball = rng.normal(0.0, 0.05, size=(30, 3)) + [0.5, 0.5, 3.0]
    floater = np.array([[3.0, 3.0, 1.0]])  # isolated too, but a mismatch: 10x the usual reprojection error
    parts = [(wall, 0.0), (ball, 0.0), (wall + rng.normal(0, 1e-3, wall.shape), 0.5), (ball + [0.6, 0, 0], 0.5),
             (floater, 0.5)]
    xyz = np.concatenate([p for p, _ in parts])
    time = np.concatenate([np.full(len(p), t) for p, t in parts])
    error = np.where(np.arange(len(xyz)) == len(xyz) - 1, 1.0, 0.1)
    cloud = PointCloud(xyz, np.zeros((len(xyz), 3)), error, np.full(len(xyz), 2), time)
    kept = new_content(cloud)
    later = kept.xyz[kept.time == 0.5]
    assert len(kept) == len(wall) + 2 * len(ball)
    np.testing.assert_allclose(np.sort(later[:, 0]), np.sort(ball[:, 0] + 0.6), atol=1e-6)
    single = PointCloud(wall, np.zeros((len(wall), 3)), np.zeros(len(wall)), np.ones(len(wall)), np.zeros(len(wall)))
    assert len(new_content(single)) == len(wall)  # one frame: nothing to compare against
