"""``--size-mismatch keep|scale|crop`` on written multiview fixtures whose frames differ from the calibration."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from moegs.cameras import Camera, cameras_to_json
from moegs.data.capture import open_capture
from moegs.errors import InputError

CALIB = (64, 48)


def _camera(name: str, x: float, width: int = CALIB[0], height: int = CALIB[1]) -> Camera:
    K = np.array([[50.0, 0, 30.5], [0, 52.0, 22.5], [0, 0, 1]])
    return Camera(name, width, height, K, np.eye(3), np.array([-x, 0.0, 4.0]), near=1.0, far=10.0)


def _image(seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)


def _write_rig(root: Path, frame_sizes: dict[str, tuple[int, int]]) -> dict[str, Camera]:
    """Three cameras calibrated at 64x48 whose PNG frames have the sizes given (default: the calibration's)."""
    cams = {name: _camera(name, 0.3 * i) for i, name in enumerate(["a", "b", "c"])}
    cameras_to_json(list(cams.values()), ["a"], None, root / "cameras.json")
    for i, name in enumerate(cams):
        width, height = frame_sizes.get(name, CALIB)
        folder = root / "frames" / name
        folder.mkdir(parents=True)
        for k in range(2):
            iio.imwrite(folder / f"{k:04d}.png", _image(10 * i + k, width, height))
    return cams


def test_refusal_names_every_mismatched_camera(tmp_path):
    _write_rig(tmp_path, {"b": (56, 48), "c": (128, 96)})
    with pytest.raises(InputError) as err:
        open_capture(tmp_path, "multiview")
    message = str(err.value)
    assert "2 of 3 cameras" in message
    assert "(camera b): frames 56x48, calibration 64x48" in message
    assert "(camera c): frames 128x96, calibration 64x48" in message
    assert "--size-mismatch keep" in message and "\n" not in message


def test_keep_keeps_intrinsics_and_takes_the_frames_size(tmp_path):
    cams = _write_rig(tmp_path, {"b": (56, 40)})  # calibrated image cut at its right and bottom edges
    capture = open_capture(tmp_path, "multiview", size_mismatch="keep")
    kept = capture.camera("b")
    assert (kept.width, kept.height) == (56, 40)
    np.testing.assert_array_equal(kept.K, cams["b"].K)
    np.testing.assert_array_equal(capture.read_frames("b", 1, 2)[0], _image(11, 56, 40))  # frames untouched
    assert capture.camera("a").width == CALIB[0]


def test_keep_refuses_a_principal_point_outside_the_frames(tmp_path):
    _write_rig(tmp_path, {"b": (24, 48)})  # cx = 30.5 lies beyond a 24-pixel-wide frame
    with pytest.raises(InputError, match=r"camera b\): .*principal point \(30.5, 22.5\) lies outside"):
        open_capture(tmp_path, "multiview", size_mismatch="keep")


def test_scale_rescales_when_the_aspect_ratio_agrees(tmp_path):
    cams = _write_rig(tmp_path, {"b": (128, 96), "c": (129, 96)})  # 2x exactly, and 2x within a pixel
    capture = open_capture(tmp_path, "multiview", size_mismatch="scale")
    scaled = capture.camera("b")
    assert (scaled.width, scaled.height) == (128, 96)
    np.testing.assert_allclose(scaled.K[:2], cams["b"].K[:2] * 2.0)
    assert abs(capture.camera("c").K[0, 0] / capture.camera("c").K[1, 1] - 50.0 / 52.0) < 0.01


def test_scale_refuses_a_change_of_aspect_ratio_naming_every_camera(tmp_path):
    _write_rig(tmp_path, {"b": (64, 36), "c": (85, 48)})  # 4:3 calibration onto 16:9 frames
    with pytest.raises(InputError) as err:
        open_capture(tmp_path, "multiview", size_mismatch="scale")
    message = str(err.value)
    assert "(camera b): frames 64x36" in message and "(camera c): frames 85x48" in message
    assert "aspect ratio 1.7778 vs 1.3333" in message and "anisotropic" in message


def test_crop_centre_crops_larger_frames_and_refuses_smaller(tmp_path):
    _write_rig(tmp_path, {"b": (80, 64)})
    capture = open_capture(tmp_path, "multiview", size_mismatch="crop")
    assert (capture.camera("b").width, capture.camera("b").height) == CALIB
    np.testing.assert_array_equal(capture.read_frames("b", 0, 1)[0], _image(10, 80, 64)[8:56, 8:72])
    small = tmp_path / "small"
    small.mkdir()
    _write_rig(small, {"c": (60, 48)})
    with pytest.raises(InputError, match=r"camera c\): frames 60x48, calibration 64x48: cannot crop to a larger size"):
        open_capture(small, "multiview", size_mismatch="crop")


def test_unknown_choice_is_refused(tmp_path):
    _write_rig(tmp_path, {})
    with pytest.raises(InputError, match="expected one of keep, scale, crop"):
        open_capture(tmp_path, "multiview", size_mismatch="stretch")
