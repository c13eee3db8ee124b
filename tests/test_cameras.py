"""Camera conventions and converters: LLFF, Technicolor, generic JSON, scaling, rays, validation."""

from __future__ import annotations

import numpy as np
import pytest

from moegs.cameras import (Camera, cameras_from_json, cameras_from_llff, cameras_from_technicolor, cameras_to_json,
                           cameras_to_llff, distort_normalized, quaternion_to_rotation, undistort_normalized,
                           validate_rotation)
from moegs.errors import InputError


def look_at_camera(name: str, center, target, width=640, height=480, focal=500.0) -> Camera:
    z = np.asarray(target, float) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    return Camera(name, width, height, K, R, -R @ np.asarray(center, float), near=0.5, far=20.0)


POINTS = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [-0.4, 0.1, -0.3]])


def test_projection_convention() -> None:
    cam = Camera("c", 100, 80, np.array([[50, 0, 50], [0, 50, 40], [0, 0, 1.0]]), np.eye(3), np.zeros(3))
    uv, depth = cam.project(np.array([[0.0, 0.0, 2.0], [1.0, 0.5, 2.0]]))
    np.testing.assert_allclose(uv, [[50, 40], [75, 52.5]])  # +x right, +y down
    np.testing.assert_allclose(depth, [2, 2])
    np.testing.assert_allclose(cam.c2w @ cam.w2c, np.eye(4), atol=1e-12)


def test_llff_round_trip_and_axes() -> None:
    cams = [look_at_camera(f"cam{i:02d}", [x, 0.2, -4.0], [0, 0, 0]) for i, x in enumerate([-1.0, 0.0, 1.5])]
    pb = cameras_to_llff(cams)
    assert pb.shape == (3, 17)
    back = cameras_from_llff(pb, [c.name for c in cams])
    for a, b in zip(cams, back):
        np.testing.assert_allclose(b.project(POINTS)[0], a.project(POINTS)[0], atol=1e-9)
        np.testing.assert_allclose(b.project(POINTS)[1], a.project(POINTS)[1], atol=1e-9)
        assert (b.width, b.height, b.near, b.far) == (640, 480, 0.5, 20.0)
    # LLFF columns are (down, right, back) of the camera-to-world rotation
    m = pb[0, :15].reshape(3, 5)
    c2w = cams[0].R.T
    np.testing.assert_allclose(m[:, 0], c2w[:, 1])
    np.testing.assert_allclose(m[:, 1], c2w[:, 0])
    np.testing.assert_allclose(m[:, 2], -c2w[:, 2])
    np.testing.assert_allclose(m[:, 4], [480, 640, 500])


def test_llff_errors_name_camera() -> None:
    cams = [look_at_camera("cam00", [0, 0, -4.0], [0, 0, 0]), look_at_camera("cam01", [1, 0, -4.0], [0, 0, 0])]
    pb = cameras_to_llff(cams)
    with pytest.raises(InputError, match="2 pose rows but 3 cameras"):
        cameras_from_llff(pb, ["cam00", "cam01", "cam02"])
    bad = pb.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="cam01.*NaN"):
        cameras_from_llff(bad, ["cam00", "cam01"])
    bad = pb.copy()
    bad[0, 0] += 0.5
    with pytest.raises(InputError, match="cam00.*not orthonormal"):
        cameras_from_llff(bad, ["cam00", "cam01"])


def test_scaled_keeps_projection() -> None:
    cam = look_at_camera("c", [0.5, 0.2, -4.0], [0, 0, 0])
    cam.K[0, 2], cam.K[1, 2] = 300.0, 250.0
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (320, 240)
    np.testing.assert_allclose(half.project(POINTS)[0], 0.5 * cam.project(POINTS)[0], atol=1e-9)
    # pixel centre (0.5, 0.5) of the half image covers pixel centres 0.5..1.5 of the full one: edges map to edges
    np.testing.assert_allclose(half.K[:2, 2], [150.0, 125.0])
    with pytest.raises(InputError):
        cam.scaled(0.0)


def test_rays_through_pixel_centres() -> None:
    cam = look_at_camera("c", [0.5, 0.2, -4.0], [0, 0, 0], width=32, height=24, focal=30.0)
    origins, dirs = cam.rays()
    assert origins.shape == dirs.shape == (24, 32, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs.numpy(), axis=-1), 1.0, atol=1e-6)
    pts = origins[5, 7].numpy() + 3.0 * dirs[5, 7].numpy()
    uv, _ = cam.project(pts[None])
    np.testing.assert_allclose(uv[0], [7.5, 5.5], atol=1e-4)
    assert cam.viewmat_tensor().shape == (4, 4) and cam.K_tensor().dtype.is_floating_point


def test_technicolor_parse(tmp_path) -> None:
    q = np.array([0.9, 0.1, -0.3, 0.2])
    q /= np.linalg.norm(q)
    text = "# some comment\nf cu cv ar sk qw qx qy qz tx ty tz\n\n"
    text += f"1000 1020.5 540.25 1.001 0 {' '.join(map(str, q))} 0.1 -0.2 0.3\n"
    text += "1100 1000 500 1 0 1 0 0 0 0.2 0 0\n"
    path = tmp_path / "cameras_parameters.txt"
    path.write_text(text)
    cams = cameras_from_technicolor(path, 2048, 1088)
    assert [c.name for c in cams] == ["cam00", "cam01"]
    np.testing.assert_allclose(cams[0].K, [[1000, 0, 1020.5], [0, 1001, 540.25], [0, 0, 1]])
    np.testing.assert_allclose(cams[0].R, quaternion_to_rotation(q))
    np.testing.assert_allclose(cams[0].t, [0.1, -0.2, 0.3])
    np.testing.assert_allclose(cams[1].R, np.eye(3))
    # a quaternion rotation of 90 degrees about z maps x to y
    np.testing.assert_allclose(quaternion_to_rotation(np.array([np.sqrt(0.5), 0, 0, np.sqrt(0.5)])) @ [1, 0, 0],
                               [0, 1, 0], atol=1e-12)
    path.write_text("1000 1020 540 1 0 0.5 0.5 0.5 0.6 0 0 0\n")
    with pytest.raises(InputError, match="cameras_parameters.txt:1: camera cam00: rotation quaternion"):
        cameras_from_technicolor(path, 2048, 1088)
    path.write_text("1000 1020 540 1 0 1 0 0 0 0 0\n")
    with pytest.raises(InputError, match="expected 12 numbers"):
        cameras_from_technicolor(path, 2048, 1088)


def test_json_round_trip(tmp_path) -> None:
    cam = look_at_camera("left", [0.5, 0.2, -4.0], [0, 0, 0])
    cam.dist = np.array([-0.1, 0.01, 0.001, -0.002, 0.0])
    other = look_at_camera("right", [-0.5, 0.2, -4.0], [0, 0, 0])
    path = tmp_path / "cameras.json"
    cameras_to_json([cam, other], ["right"], 25.0, path)
    parsed = cameras_from_json(path)
    assert parsed.test_cameras == ["right"] and parsed.fps == 25.0
    assert parsed.splits == {"left": "train", "right": "test"}
    for a, b in zip([cam, other], parsed.cameras):
        assert a.name == b.name and (a.near, a.far) == (b.near, b.far)
        np.testing.assert_allclose(b.project(POINTS)[0], a.project(POINTS)[0])
    assert parsed.cameras[1].dist is None


def test_json_errors(tmp_path) -> None:
    path = tmp_path / "cameras.json"
    with pytest.raises(InputError, match="not found"):
        cameras_from_json(path)
    entry = look_at_camera("a", [0, 0, -4.0], [0, 0, 0]).to_json()
    entry["R"][0][0] = float("nan")
    import json

    path.write_text(json.dumps({"cameras": [entry]}))
    with pytest.raises(InputError, match="camera a: R: contains NaN"):
        cameras_from_json(path)
    entry = look_at_camera("a", [0, 0, -4.0], [0, 0, 0]).to_json()
    path.write_text(json.dumps({"cameras": [entry], "test_cameras": ["b"]}))
    with pytest.raises(InputError, match="test camera"):
        cameras_from_json(path)


def test_validate_rotation() -> None:
    validate_rotation(quaternion_to_rotation(np.array([0.5, 0.5, 0.5, 0.5])), "x")
    with pytest.raises(InputError, match="where: rotation contains NaN"):
        validate_rotation(np.full((3, 3), np.nan), "where")
    with pytest.raises(InputError, match="not orthonormal"):
        validate_rotation(np.eye(3) * 1.01, "where")
    with pytest.raises(InputError, match="determinant"):
        validate_rotation(np.diag([1.0, 1.0, -1.0]), "where")


def test_distortion_inverse() -> None:
    dist = np.array([-0.33, 0.046, -0.004, 0.004, 0.066])
    xy = np.random.default_rng(0).uniform(-0.6, 0.6, size=(200, 2))
    np.testing.assert_allclose(undistort_normalized(distort_normalized(xy, dist), dist), xy, atol=1e-9)


@pytest.mark.parametrize("dist", [None, np.array([-0.1, 0.01, 0.001, -0.002, 0.0])])
def test_unproject_inverts_project(dist) -> None:
    """Seeds and carving samples back-project pixels: the inverse of ``project``, distortion included."""
    from moegs.cameras import unproject

    cam = look_at_camera("c", np.array([0.5, -0.3, -4.0]), [0.0, 0.0, 0.0])
    cam.dist = dist
    uv = np.random.default_rng(1).uniform([20, 20], [620, 460], size=(100, 2))
    depth = np.random.default_rng(2).uniform(1.0, 9.0, size=100)
    back_uv, back_depth = cam.project(unproject(cam, uv, depth))
    np.testing.assert_allclose(back_uv, uv, atol=1e-6)
    np.testing.assert_allclose(back_depth, depth, rtol=1e-9)
