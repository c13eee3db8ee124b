"""Undistort OpenCV-distorted frames (k1 k2 p1 p2 k3) into pinhole images.

The output camera keeps the input's size, pose and principal point and drops skew. Its focal
length depends on ``mode``:

* ``"valid"`` (default): focal lengths scaled by one factor s so that every output pixel samples
  inside the source image (like OpenCV's ``getOptimalNewCameraMatrix`` with alpha=0): no black
  borders, which a splatting model would otherwise have to learn. Barrel lenses give s < 1 (wider
  field kept), pincushion lenses s > 1 (a little of the border is lost).
* ``"same"``: the input focal lengths; pincushion lenses leave unfilled corners (edge pixels
  repeated).

The per-pixel source coordinates are computed once per camera (forward distortion of each output
pixel centre); applying them to a frame is a gather with fixed bilinear weights, the same result as
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` but without recomputing the spline
set-up for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from moegs.cameras import Camera, distort_normalized, undistort_normalized
from moegs.errors import InputError

Mode = Literal["valid", "same"]


@dataclass
class Undistorter:
    """Maps frames of ``source`` (distorted) to frames of ``camera`` (pinhole, same size)."""

    source: Camera
    camera: Camera
    _index: np.ndarray = field(repr=False)  # [4, H*W] flat source indices of the bilinear corners
    _weight: np.ndarray = field(repr=False)  # [4, H*W, 1] float32 bilinear weights
    _nearest: np.ndarray = field(repr=False)  # [H*W] flat source index of the nearest pixel

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Bilinear resampling of uint8 frames [T, H, W, C] (or one [H, W, C])."""
        single = frames.ndim == 3
        batch = frames[None] if single else frames
        t, h, w, c = batch.shape
        flat = batch.reshape(t, h * w, c)
        out = np.empty((t, self.camera.height * self.camera.width, c), dtype=np.uint8)
        for k in range(t):
            acc = sum(self._weight[n] * flat[k, self._index[n]] for n in range(4))
            out[k] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
        out = out.reshape(t, self.camera.height, self.camera.width, c)
        return out[0] if single else out

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resampling of integer label maps [T, H, W]."""
        t = labels.shape[0]
        return labels.reshape(t, -1)[:, self._nearest].reshape(t, self.camera.height, self.camera.width)


def pinhole_camera(camera: Camera, mode: Mode = "valid") -> Camera:
    """The pinhole camera the undistorted frames of ``camera`` are expressed in (see module doc)."""
    if mode not in ("valid", "same"):
        raise InputError(f"camera {camera.name}: unknown undistortion mode {mode!r}; expected 'valid' or 'same'")
    K = camera.K.copy()
    K[0, 1] = 0.0
    if mode == "valid" and camera.has_distortion:
        scale = _valid_scale(camera)
        K[0, 0] *= scale
        K[1, 1] *= scale
    return Camera(camera.name, camera.width, camera.height, K, camera.R.copy(), camera.t.copy(), None,
                  camera.near, camera.far)


def make_undistorter(camera: Camera, mode: Mode = "valid") -> Undistorter:
    """Precompute the source coordinates of every output pixel of :func:`pinhole_camera`."""
    target = pinhole_camera(camera, mode)
    w, h = camera.width, camera.height
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    Kt = target.K
    xy = np.stack([(u.ravel() - Kt[0, 2]) / Kt[0, 0], (v.ravel() - Kt[1, 2]) / Kt[1, 1]], axis=1)
    if camera.has_distortion:
        xy = distort_normalized(xy, camera.dist)
    K = camera.K
    src_u = K[0, 0] * xy[:, 0] + K[0, 1] * xy[:, 1] + K[0, 2]
    src_v = K[1, 1] * xy[:, 1] + K[1, 2]
    # array coordinates (pixel centres at integers), clamped to the image like mode="nearest"
    col = np.clip(src_u - 0.5, 0, w - 1)
    row = np.clip(src_v - 0.5, 0, h - 1)
    c0 = np.minimum(np.floor(col).astype(np.int64), w - 2 if w > 1 else 0)
    r0 = np.minimum(np.floor(row).astype(np.int64), h - 2 if h > 1 else 0)
    c1, r1 = np.minimum(c0 + 1, w - 1), np.minimum(r0 + 1, h - 1)
    fc, fr = col - c0, row - r0
    index = np.stack([r0 * w + c0, r0 * w + c1, r1 * w + c0, r1 * w + c1])
    weight = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]).astype(np.float32)[..., None]
    nearest = np.rint(row).astype(np.int64) * w + np.rint(col).astype(np.int64)
    return Undistorter(camera, target, index, weight, nearest)


def _valid_scale(camera: Camera) -> float:
    """Smallest focal scale s for which all output pixel centres land inside the distorted image."""
    w, h, K = camera.width, camera.height, camera.K
    n = 256
    us, vs = np.linspace(0.5, w - 0.5, n), np.linspace(0.5, h - 0.5, n)
    edges = {
        "left": np.stack([np.full(n, 0.5), vs], 1), "right": np.stack([np.full(n, w - 0.5), vs], 1),
        "top": np.stack([us, np.full(n, 0.5)], 1), "bottom": np.stack([us, np.full(n, h - 0.5)], 1),
    }
    Kinv = np.linalg.inv(K)
    und = {}
    for key, uv in edges.items():
        xy_d = uv @ Kinv[:2, :2].T + Kinv[:2, 2]
        xy = undistort_normalized(xy_d, camera.dist)
        residual = np.abs(distort_normalized(xy, camera.dist) - xy_d).max()
        if not np.isfinite(residual) or residual > 1e-6:
            raise InputError(f"camera {camera.name}: distortion {camera.dist.tolist()} cannot be inverted at the "
                             "image border (calibration unusable outside its fitted field)")
        und[key] = xy
    left, right = und["left"][:, 0].max(), und["right"][:, 0].min()
    top, bottom = und["top"][:, 1].max(), und["bottom"][:, 1].min()
    cx, cy, fx, fy = K[0, 2], K[1, 2], K[0, 0], K[1, 1]
    if not (left < 0 < right and top < 0 < bottom):
        raise InputError(f"camera {camera.name}: principal point ({cx:.1f}, {cy:.1f}) outside the undistorted image")
    return float(max((cx - 0.5) / (-left * fx), (w - 0.5 - cx) / (right * fx),
                     (cy - 0.5) / (-top * fy), (h - 0.5 - cy) / (bottom * fy)))
