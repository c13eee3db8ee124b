"""Cameras in one internal convention, and converters from the calibration formats we read.

Convention (OpenCV): ``x_cam = R @ X_world + t``; camera axes x right, y down, z forward; pixel
``(u, v)`` has its centre at ``(j + 0.5, i + 0.5)``, so resizing an image by ``s`` maps every
continuous pixel coordinate ``u -> s * u`` and the intrinsics scale without a half-pixel shift.
Lens distortion, when present, is the OpenCV ``k1 k2 p1 p2 k3`` model on normalised coordinates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moegs.errors import InputError

DEFAULT_NEAR = 0.01
DEFAULT_FAR = 100.0


@dataclass
class Camera:
    """One calibrated view: intrinsics ``K`` at ``width x height``, world-to-camera ``R, t``."""

    name: str
    width: int
    height: int
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    dist: np.ndarray | None = None
    near: float = DEFAULT_NEAR
    far: float = DEFAULT_FAR

    def __post_init__(self) -> None:
        self.width = int(self.width)
        self.height = int(self.height)
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        if self.dist is not None:
            self.dist = np.asarray(self.dist, dtype=np.float64).reshape(5)
        self.near = float(self.near)
        self.far = float(self.far)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, ``-R^T t``."""
        return -self.R.T @ self.t

    @property
    def w2c(self) -> np.ndarray:
        """4x4 world-to-camera matrix."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    @property
    def c2w(self) -> np.ndarray:
        """4x4 camera-to-world matrix (columns: x right, y down, z forward, centre)."""
        m = np.eye(4)
        m[:3, :3] = self.R.T
        m[:3, 3] = self.center
        return m

    @property
    def has_distortion(self) -> bool:
        return self.dist is not None and bool(np.any(self.dist != 0.0))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates [N, 2] and camera depth [N] of world points [N, 3] (with distortion if any).

        Points behind the camera get meaningless ``uv``; callers filter on ``depth > 0``.
        """
        x_cam = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ self.R.T + self.t
        depth = x_cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        xy = x_cam[:, :2] / safe[:, None]
        if self.has_distortion:
            xy = distort_normalized(xy, self.dist)
        uv = xy @ self.K[:2, :2].T + self.K[:2, 2]
        return uv, depth

    def resized(self, width: int, height: int) -> Camera:
        """The same camera for an image resized to ``width x height`` (x and y scaled separately)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return Camera(self.name, width, height, K, self.R.copy(), self.t.copy(),
                      None if self.dist is None else self.dist.copy(), self.near, self.far)

    def scaled(self, factor: float) -> Camera:
        """The camera for an image resized by ``factor`` (size rounded; intrinsics follow the rounded size)."""
        if not factor > 0:
            raise InputError(f"camera {self.name}: scale factor must be positive, got {factor}")
        return self.resized(max(1, round(self.width * factor)), max(1, round(self.height * factor)))

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON dict in the generic multiview format (plus near/far)."""
        out: dict[str, Any] = {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
        }
        if self.dist is not None:
            out["dist"] = self.dist.tolist()
        out["near"] = self.near
        out["far"] = self.far
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any], where: str = "cameras.json") -> Camera:
        """Parse and validate one camera entry; ``where`` names the file in error messages."""
        if not isinstance(entry, dict):
            raise InputError(f"{where}: camera entry is not an object: {entry!r:.60}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: camera entry without a 'name'")
        at = f"{where}: camera {name}"
        for key in ("width", "height", "K", "R", "t"):
            if key not in entry:
                raise InputError(f"{at}: missing '{key}'")
        width, height = entry["width"], entry["height"]
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise InputError(f"{at}: width/height must be positive integers, got {width!r} x {height!r}")
        K = _float_array(entry["K"], (3, 3), f"{at}: K")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
            raise InputError(f"{at}: K must have positive focal lengths and last row [0, 0, 1]")
        R = _float_array(entry["R"], (3, 3), f"{at}: R")
        validate_rotation(R, at)
        t = _float_array(entry["t"], (3,), f"{at}: t")
        dist = None
        if entry.get("dist") is not None:
            raw = np.asarray(entry["dist"], dtype=object).reshape(-1)
            if raw.size not in (4, 5):
                raise InputError(f"{at}: dist must be k1 k2 p1 p2 [k3] (4 or 5 numbers), got {raw.size}")
            dist = _float_array(list(raw) + [0.0] * (5 - raw.size), (5,), f"{at}: dist")
        near = float(entry.get("near", DEFAULT_NEAR))
        far = float(entry.get("far", DEFAULT_FAR))
        if not 0 < near < far:
            raise InputError(f"{at}: need 0 < near < far, got near={near}, far={far}")
        return cls(name, width, height, K, R, t, dist, near, far)

    def viewmat_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """World-to-camera 4x4 as float32 (gsplat's ``viewmats``)."""
        return torch.as_tensor(self.w2c, dtype=torch.float32, device=device)

    def K_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.as_tensor(self.K, dtype=torch.float32, device=device)

    def normalized(self, uv: np.ndarray) -> np.ndarray:
        """Undistorted normalised image coordinates [N, 2] (camera x/z, y/z) of pixel positions ``uv`` [N, 2]."""
        Kinv = np.linalg.inv(self.K)
        xy = np.asarray(uv, dtype=np.float64) @ Kinv[:2, :2].T + Kinv[:2, 2]
        return undistort_normalized(xy, self.dist) if self.has_distortion else xy

    def rays(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """World-frame ray origins [H, W, 3] and unit directions [H, W, 3] through the pixel centres."""
        j, i = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        xy = self.normalized(np.stack([j.ravel(), i.ravel()], axis=1))
        d_cam = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)
        d_world = d_cam @ self.R  # R^T d for each row
        d_world /= np.linalg.norm(d_world, axis=1, keepdims=True)
        dirs = torch.as_tensor(d_world.reshape(self.height, self.width, 3), dtype=torch.float32, device=device)
        origins = torch.as_tensor(self.center, dtype=torch.float32, device=device).expand_as(dirs).contiguous()
        return origins, dirs


def distort_normalized(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """OpenCV forward model: undistorted normalised coordinates [N, 2] -> distorted ones."""
    k1, k2, p1, p2, k3 = dist
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=1)


def undistort_normalized(xy_d: np.ndarray, dist: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Inverse of :func:`distort_normalized` by OpenCV's fixed-point iteration (good inside the calibrated field)."""
    k1, k2, p1, p2, k3 = dist
    xd, yd = xy_d[:, 0], xy_d[:, 1]
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return np.stack([x, y], axis=1)


def validate_rotation(R: np.ndarray, where: str) -> None:
    """Refuse NaN, non-orthonormal or reflecting rotation matrices (a mangled calibration)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise InputError(f"{where}: rotation must be 3x3, got shape {R.shape}")
    if not np.all(np.isfinite(R)):
        raise InputError(f"{where}: rotation contains NaN or infinite values")
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > 1e-3:
        raise InputError(f"{where}: rotation is not orthonormal (max |R R^T - I| = {err:.3g})")
    if np.linalg.det(R) < 0:
        raise InputError(f"{where}: rotation has determinant < 0 (a reflection, not a rotation)")


def _float_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: not numeric") from None
    if arr.shape != shape:
        raise InputError(f"{where}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: contains NaN or infinite values")
    return arr


# ---------------------------------------------------------------------------------------------
# LLFF poses_bounds.npy (N3V)


def cameras_from_llff(poses_bounds: np.ndarray, names: list[str], where: str = "poses_bounds.npy") -> list[Camera]:
    """N3V/LLFF rows [N, 17] -> cameras; row i belongs to ``names[i]``.

    Each row is a 3x5 camera-to-world [c0 c1 c2 | centre | (H, W, f)] whose rotation columns are
    (down, right, back), then near, far. OpenCV c2w columns (x, y, z) = (c1, c0, -c2); the
    principal point is the image centre.
    """
    pb = np.asarray(poses_bounds, dtype=np.float64)
    if pb.ndim != 2 or pb.shape[1] != 17:
        raise InputError(f"{where}: expected an array of shape [N, 17], got {pb.shape}")
    if pb.shape[0] != len(names):
        raise InputError(f"{where}: {pb.shape[0]} pose rows but {len(names)} cameras ({', '.join(names)})")
    cameras = []
    for row, name in zip(pb, names):
        at = f"{where}: camera {name}"
        if not np.all(np.isfinite(row)):
            raise InputError(f"{at}: row contains NaN or infinite values")
        m = row[:15].reshape(3, 5)
        c2w = np.stack([m[:, 1], m[:, 0], -m[:, 2]], axis=1)
        validate_rotation(c2w, at)
        height, width, focal = m[:, 4]
        if height <= 0 or width <= 0 or focal <= 0 or height != round(height) or width != round(width):
            raise InputError(f"{at}: bad (H, W, f) = ({height}, {width}, {focal})")
        near, far = float(row[15]), float(row[16])
        if not 0 < near < far:
            raise InputError(f"{at}: need 0 < near < far, got near={near}, far={far}")
        K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
        R = c2w.T
        cameras.append(Camera(name, int(width), int(height), K, R, -R @ m[:, 3], None, near, far))
    return cameras


def cameras_to_llff(cameras: list[Camera]) -> np.ndarray:
    """Inverse of :func:`cameras_from_llff` for pinhole cameras with fx == fy and a centred principal point."""
    rows = []
    for cam in cameras:
        K = cam.K
        centred = np.allclose(K[:2, 2], [cam.width / 2, cam.height / 2], atol=1e-6 * cam.width)
        if cam.has_distortion or not np.isclose(K[0, 0], K[1, 1]) or not centred or K[0, 1] != 0:
            raise InputError(f"camera {cam.name}: LLFF needs an undistorted camera with fx == fy, no skew "
                             "and a centred principal point")
        c2w = cam.R.T
        m = np.stack([c2w[:, 1], c2w[:, 0], -c2w[:, 2], cam.center, [cam.height, cam.width, K[0, 0]]], axis=1)
        rows.append(np.concatenate([m.ravel(), [cam.near, cam.far]]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 17)


# ---------------------------------------------------------------------------------------------
# Technicolor cameras_parameters.txt


def cameras_from_technicolor(path: Path, width: int, height: int) -> list[Camera]:
    """Parse ``cameras_parameters.txt`` of the undistorted Technicolor release.

    One line per camera (cam00, cam01, ... in order): ``f cu cv ar sk qw qx qy qz tx ty tz``,
    world-to-camera (COLMAP convention). K = [[f, sk, cu], [0, f*ar, cv], [0, 0, 1]]. Blank lines,
    ``#`` comments and a leading non-numeric header line are skipped. The image size is not in the
    file; the caller reads it from the images.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: cameras file not found")
    cameras: list[Camera] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        tokens = text.split()
        try:
            values = np.array([float(tok) for tok in tokens])
        except ValueError:
            if not cameras:
                continue  # the header line
            raise InputError(f"{path}:{lineno}: non-numeric camera line: {text[:60]!r}") from None
        name = f"cam{len(cameras):02d}"
        at = f"{path}:{lineno}: camera {name}"
        if values.size == 14:
            raise InputError(f"{at}: 14 columns (distorted release with d1 d2); "
                             "use the undistorted release (12 columns)")
        if values.size != 12:
            raise InputError(f"{at}: expected 12 numbers 'f cu cv ar sk qw qx qy qz tx ty tz', got {values.size}")
        if not np.all(np.isfinite(values)):
            raise InputError(f"{at}: contains NaN or infinite values")
        f, cu, cv, ar, sk = values[:5]
        if f <= 0 or ar <= 0:
            raise InputError(f"{at}: focal and aspect ratio must be positive, got f={f}, ar={ar}")
        q = values[5:9]
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > 1e-3:
            raise InputError(f"{at}: rotation quaternion is not unit length (|q| = {norm:.6g})")
        R = quaternion_to_rotation(q / norm)
        K = np.array([[f, sk, cu], [0, f * ar, cv], [0, 0, 1]])
        cameras.append(Camera(name, width, height, K, R, values[9:12]))
    if not cameras:
        raise InputError(f"{path}: no camera lines")
    return cameras


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion ``(w, x, y, z)``."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# ---------------------------------------------------------------------------------------------
# Generic JSON (multiview input and the dataset payload)


@dataclass
class CameraFile:
    """Contents of a generic ``cameras.json``."""

    cameras: list[Camera]
    test_cameras: list[str]
    fps: float | None
    splits: dict[str, str] = field(default_factory=dict)


def cameras_from_json(path: Path) -> CameraFile:
    """Read the generic format ``{"cameras": [...], "test_cameras": [...], "fps": ...}``.

    ``test_cameras`` is empty when the file has none (the caller picks a default); per-camera
    ``"split"`` entries, if present, are returned in ``splits``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: cameras file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise InputError(f"{path}: expected an object with a non-empty 'cameras' list")
    cameras = [Camera.from_json(entry, str(path)) for entry in data["cameras"]]
    names = [cam.name for cam in cameras]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: duplicate camera names {duplicates}")
    test = data.get("test_cameras") or []
    if not isinstance(test, list) or not all(isinstance(n, str) for n in test):
        raise InputError(f"{path}: 'test_cameras' must be a list of camera names")
    unknown = [n for n in test if n not in names]
    if unknown:
        raise InputError(f"{path}: test camera(s) {unknown} not among the cameras {names}")
    fps = data.get("fps")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise InputError(f"{path}: 'fps' must be a positive number, got {fps!r}")
    splits = {e["name"]: e["split"] for e in data["cameras"] if "split" in e}
    bad = {n: s for n, s in splits.items() if s not in ("train", "test")}
    if bad:
        raise InputError(f"{path}: camera split must be 'train' or 'test', got {bad}")
    return CameraFile(cameras, list(test), None if fps is None else float(fps), splits)


def cameras_to_json(cameras: list[Camera], test_cameras: list[str] = (), fps: float | None = None,
                    path: Path | None = None) -> dict[str, Any]:
    """The generic format as a dict (each camera with its "split"); also written to ``path`` if given."""
    entries = []
    for cam in cameras:
        entry = cam.to_json()
        entry["split"] = "test" if cam.name in test_cameras else "train"
        entries.append(entry)
    data: dict[str, Any] = {"cameras": entries, "test_cameras": list(test_cameras)}
    if fps is not None:
        data["fps"] = float(fps)
    if path is not None:
        Path(path).write_text(json.dumps(data, indent=1))
    return data


def unproject(cam: Camera, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """World points [N, 3] at camera depth ``depth`` [N] behind pixels ``uv`` [N, 2]: the inverse of
    :meth:`Camera.project`, lens distortion included."""
    xy = cam.normalized(uv)
    x_cam = np.concatenate([xy, np.ones((len(uv), 1))], axis=1) * depth[:, None]
    return (x_cam - cam.t) @ cam.R  # R^T (x_cam - t)
