"""Browser cameras <-> our cameras: the pure part of the viewer, testable without a browser.

viser's convention (checked in viser 1.1.1, ``_viser.py``: "We're following OpenCV conventions:
look_direction is +Z, up_direction is -Y"): ``client.camera.wxyz`` is the rotation R in
``P_world = R @ p_camera + position`` (camera-to-world), and the camera frame is OpenCV's (x right,
y down, z forward), the same as :mod:`moegs.cameras`. So no axis flip is needed: our world-to-camera
rotation is ``R^T`` and ``t = -R^T position``. ``fov`` is the vertical field of view in radians and
``aspect`` the canvas width / height; the browser has square pixels and a centred principal point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moegs.cameras import Camera, quaternion_to_rotation
from moegs.errors import InputError

POSITION_TOLERANCE = 1e-4
"""A browser pose 'sits on' a dataset camera when its centre is this close (relative to 1 + |centre|)..."""
ANGLE_TOLERANCE = 1e-4
"""...its orientation and vertical field of view agree to this many radians (survives the float round trip)."""


@dataclass(frozen=True)
class BrowserPose:
    """What the browser sends: camera-to-world quaternion (w, x, y, z), centre, vertical fov, aspect."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float
    aspect: float


def browser_camera(pose: BrowserPose, height: int, near: float = 0.01, far: float = 100.0, name: str = "browser") -> Camera:
    """Our pinhole camera for ``pose`` rendered ``height`` pixels tall (width from the aspect)."""
    if height < 1:
        raise InputError(f"render height must be at least 1 pixel, got {height}")
    if not 0.0 < pose.fov < math.pi:
        raise InputError(f"browser field of view must be in (0, pi) radians, got {pose.fov}")
    if not pose.aspect > 0.0:
        raise InputError(f"browser aspect ratio must be positive, got {pose.aspect}")
    q = np.asarray(pose.wxyz, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not norm > 0.0:
        raise InputError(f"browser camera quaternion is zero: {pose.wxyz}")
    c2w = quaternion_to_rotation(q / norm)
    width = max(1, round(height * pose.aspect))
    focal = 0.5 * height / math.tan(0.5 * pose.fov)
    K = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    R = c2w.T
    t = -R @ np.asarray(pose.position, dtype=np.float64)
    return Camera(name, width, height, K, R, t, None, near, far)


def pose_of(camera: Camera) -> BrowserPose:
    """The browser pose that looks through ``camera`` (its vertical fov from fy, its aspect)."""
    fov = 2.0 * math.atan(0.5 * camera.height / camera.K[1, 1])
    wxyz = rotation_to_quaternion(camera.R.T)
    return BrowserPose(tuple(float(v) for v in wxyz), tuple(float(v) for v in camera.center), fov,
                       camera.width / camera.height)


def matching_camera(pose: BrowserPose, cameras: list[Camera]) -> Camera | None:
    """The dataset camera the browser is looking through, if any (then render with its exact intrinsics)."""
    c2w = quaternion_to_rotation(np.asarray(pose.wxyz, dtype=np.float64) / np.linalg.norm(pose.wxyz))
    position = np.asarray(pose.position, dtype=np.float64)
    for camera in cameras:
        cam_fov = 2.0 * math.atan(0.5 * camera.height / camera.K[1, 1])
        offset = float(np.linalg.norm(position - camera.center))
        if offset > POSITION_TOLERANCE * (1.0 + float(np.linalg.norm(camera.center))):
            continue
        cos_angle = (np.trace(camera.R @ c2w) - 1.0) / 2.0
        if math.acos(min(1.0, max(-1.0, cos_angle))) <= ANGLE_TOLERANCE and abs(cam_fov - pose.fov) <= ANGLE_TOLERANCE:
            return camera
    return None


def at_height(camera: Camera, height: int) -> Camera:
    """``camera`` resized to ``height`` pixels tall, keeping its aspect ratio."""
    if height == camera.height:
        return camera
    return camera.resized(max(1, round(camera.width * height / camera.height)), height)


def widened(camera: Camera, aspect: float) -> Camera:
    """``camera`` with its width changed to match ``aspect`` (the browser canvas) and the principal point
    moved by half the change, so its own pixels stay centred and undistorted instead of stretched."""
    width = max(1, round(camera.height * aspect))
    if width == camera.width:
        return camera
    K = camera.K.copy()
    K[0, 2] += 0.5 * (width - camera.width)
    return Camera(camera.name, width, camera.height, K, camera.R.copy(), camera.t.copy(),
                  None if camera.dist is None else camera.dist.copy(), camera.near, camera.far)


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix (Shepperd's method, stable everywhere)."""
    R = np.asarray(R, dtype=np.float64)
    trace = float(np.trace(R))
    diagonal = [R[0, 0], R[1, 1], R[2, 2]]
    if trace >= max(diagonal):
        w = 0.5 * math.sqrt(1.0 + trace)
        q = [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)]
    else:
        i = int(np.argmax(diagonal))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 0.5 * math.sqrt(max(0.0, 1.0 + R[i, i] - R[j, j] - R[k, k]))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (R[k, j] - R[j, k]) / (4 * s)
        q[1 + i] = s
        q[1 + j] = (R[j, i] + R[i, j]) / (4 * s)
        q[1 + k] = (R[k, i] + R[i, k]) / (4 * s)
    quat = np.asarray(q)
    quat /= np.linalg.norm(quat)
    return -quat if quat[0] < 0 else quat
