"""Smooth novel camera paths through a rig: a spiral around it, an interpolation between its cameras,
or an orbit through the cameras of a rig that surrounds the scene; and the default path for a rig's shape."""

from __future__ import annotations

from typing import Literal

import numpy as np

from moegs.cameras import Camera
from moegs.errors import InputError

RigShape = Literal["forward", "surround"]
PATHS: tuple[str, ...] = ("auto", "spiral", "interp", "orbit")
FORWARD_HALF_ANGLE_DEG = 45.0
"""A rig whose optical axes all lie within this angle of their mean direction faces forward."""


def focus_point(cameras: list[Camera]) -> np.ndarray:
    """The point nearest to all optical axes (least squares): where a forward-facing rig looks."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cameras:
        d = cam.R[2]  # optical axis in world coordinates (third row of R = R^T z)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ cam.center
    if abs(np.linalg.det(A)) < 1e-9:  # parallel axes: look a mean depth ahead instead
        depth = np.mean([0.5 * (c.near + min(c.far, 10 * c.near)) for c in cameras])
        return np.mean([c.center + depth * c.R[2] for c in cameras], axis=0)
    return np.linalg.solve(A, b)


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (OpenCV axes) of a camera at ``center`` looking at ``target``."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:
        raise InputError("camera path: viewing direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def spiral_path(cameras: list[Camera], n_views: int, radius_scale: float = 1.0, turns: float = 1.0) -> list[Camera]:
    """Views on an ellipse in the rig's plane (radii from the spread of the cameras), all looking at the focus point."""
    ref = cameras[0]
    centers = np.stack([c.center for c in cameras])
    mean = centers.mean(axis=0)
    target = focus_point(cameras)
    up = -np.mean([c.R[1] for c in cameras], axis=0)  # OpenCV y points down
    forward = target - mean
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    spread = centers - mean
    rx = radius_scale * max(np.abs(spread @ right).max(), 1e-3)
    ry = radius_scale * max(np.abs(spread @ true_up).max(), 1e-3)
    views = []
    for i in range(n_views):
        angle = 2 * np.pi * turns * i / max(n_views, 1)
        center = mean + rx * np.cos(angle) * right + ry * np.sin(angle) * true_up
        R = look_at(center, target, true_up)
        views.append(Camera(f"spiral_{i:04d}", ref.width, ref.height, ref.K.copy(), R, -R @ center,
                            None, ref.near, ref.far))
    return views


def interpolated_path(cameras: list[Camera], n_views: int) -> list[Camera]:
    """Views sliding through the given cameras in order: centres linearly, rotations by slerp."""
    if len(cameras) < 2:
        raise InputError("camera path 'interp' needs at least 2 cameras")
    ref = cameras[0]
    views = []
    for i in range(n_views):
        s = (len(cameras) - 1) * i / max(n_views - 1, 1)
        j = min(int(np.floor(s)), len(cameras) - 2)
        u = s - j
        a, b = cameras[j], cameras[j + 1]
        center = (1 - u) * a.center + u * b.center
        R = _slerp_rotation(a.R, b.R, u)
        views.append(Camera(f"interp_{i:04d}", ref.width, ref.height, ((1 - u) * a.K + u * b.K), R, -R @ center,
                            None, min(a.near, b.near), max(a.far, b.far)))
    return views


def _slerp_rotation(Ra: np.ndarray, Rb: np.ndarray, u: float) -> np.ndarray:
    """Geodesic interpolation between rotations via the axis-angle of Ra^T Rb."""
    rel = Ra.T @ Rb
    angle = np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))
    if angle < 1e-8:
        return Ra.copy()
    axis = np.array([rel[2, 1] - rel[1, 2], rel[0, 2] - rel[2, 0], rel[1, 0] - rel[0, 1]]) / (2 * np.sin(angle))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    step = np.eye(3) + np.sin(u * angle) * K + (1 - np.cos(u * angle)) * K @ K
    return Ra @ step


def rig_shape(cameras: list[Camera]) -> RigShape:
    """``forward`` when every optical axis is within :data:`FORWARD_HALF_ANGLE_DEG` of the mean axis
    (N3V, Technicolor: a spiral in front stays among the views), else ``surround`` (views from
    around the scene, where the path must go around it too)."""
    if not cameras:
        raise InputError("rig shape: no cameras")
    axes = np.stack([c.R[2] for c in cameras])
    mean = axes.mean(axis=0)
    if np.linalg.norm(mean) < 1e-6:
        return "surround"
    cosines = axes @ (mean / np.linalg.norm(mean))
    return "forward" if cosines.min() >= np.cos(np.radians(FORWARD_HALF_ANGLE_DEG)) else "surround"


def orbit_path(cameras: list[Camera], n_views: int) -> list[Camera]:
    """A closed loop through the cameras in azimuth order around the focus point (surround rigs).

    Between two cameras the centre moves along the arc (azimuth, distance from the rig's vertical
    axis and height interpolated linearly), so the path goes around the scene instead of cutting
    through it; rotations are slerped and intrinsics interpolated.
    """
    if len(cameras) < 2:
        raise InputError("camera path 'orbit' needs at least 2 cameras")
    target = focus_point(cameras)
    up = -np.mean([c.R[1] for c in cameras], axis=0)
    up /= max(np.linalg.norm(up), 1e-12)
    ref = cameras[0].center - target
    ref -= (ref @ up) * up
    if np.linalg.norm(ref) < 1e-9:
        raise InputError("camera path 'orbit': the first camera sits on the rig's vertical axis")
    ref /= np.linalg.norm(ref)
    side = np.cross(up, ref)

    def cylindrical(cam: Camera) -> np.ndarray:
        offset = cam.center - target
        return np.array([np.arctan2(offset @ side, offset @ ref) % (2 * np.pi),
                         np.hypot(offset @ side, offset @ ref), offset @ up])

    ring = sorted(cameras, key=lambda c: cylindrical(c)[0])
    coords = [cylindrical(c) for c in ring]
    coords.append(coords[0] + [2 * np.pi, 0.0, 0.0])
    ring.append(ring[0])
    views = []
    for i in range(n_views):
        s = (len(ring) - 1) * i / n_views
        j = min(int(np.floor(s)), len(ring) - 2)
        u = s - j
        azimuth, radius, height = (1 - u) * coords[j] + u * coords[j + 1]
        center = target + radius * (np.cos(azimuth) * ref + np.sin(azimuth) * side) + height * up
        a, b = ring[j], ring[j + 1]
        R = _slerp_rotation(a.R, b.R, u)
        views.append(Camera(f"orbit_{i:04d}", a.width, a.height, (1 - u) * a.K + u * b.K, R, -R @ center,
                            None, min(a.near, b.near), max(a.far, b.far)))
    return views


def default_path(cameras: list[Camera], n_views: int) -> list[Camera]:
    """The novel path that suits the rig: a spiral for forward-facing rigs, an orbit for surround rigs."""
    return spiral_path(cameras, n_views) if rig_shape(cameras) == "forward" else orbit_path(cameras, n_views)


def make_path(kind: str, cameras: list[Camera], n_views: int) -> list[Camera]:
    """The path named ``kind`` (one of :data:`PATHS`; ``auto`` = :func:`default_path`)."""
    makers = {"auto": default_path, "spiral": spiral_path, "interp": interpolated_path, "orbit": orbit_path}
    if kind not in makers:
        raise InputError(f"unknown camera path {kind!r} (choose from {', '.join(PATHS)})")
    return makers[kind](cameras, n_views)
