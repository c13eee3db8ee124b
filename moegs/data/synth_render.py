"""Numpy ray caster for the synthetic scene: pinhole cameras, 2x2 supersampling, region labels.

Static surfaces are intersected once per camera; each frame then only re-casts the rays inside the
screen box of each moving primitive's bounding sphere and depth-tests them against the static
buffer, which keeps the ``demo`` preset well under a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moegs.data.synth_scene import Primitive, Rect, Scene
from moegs.data.synth_texture import Texture

SUPERSAMPLE = 2


@dataclass(frozen=True)
class RigCamera:
    """OpenCV pinhole camera, ``x_cam = R @ X_world + t``, square pixels, principal point at the
    image centre (LLFF / N3V store a single focal and no principal point)."""

    name: str
    width: int
    height: int
    focal: float
    R: np.ndarray
    t: np.ndarray

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.focal, 0.0, 0.5 * self.width], [0.0, self.focal, 0.5 * self.height], [0.0, 0.0, 1.0]])

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RigCamera:
        """Inverse of :meth:`to_json` (a ``scene.json`` camera entry; extra keys are ignored)."""
        return cls(name=data["name"], width=int(data["width"]), height=int(data["height"]),
                   focal=float(data["K"][0][0]), R=np.asarray(data["R"], dtype=np.float64),
                   t=np.asarray(data["t"], dtype=np.float64))


def look_at(name: str, centre: np.ndarray, target: np.ndarray, width: int, height: int, focal: float) -> RigCamera:
    """Camera at ``centre`` looking at ``target`` with image rows along world +y (y is down)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return RigCamera(name=name, width=width, height=height, focal=focal, R=R, t=-R @ centre)


@dataclass(frozen=True)
class CameraRender:
    """Everything one camera contributes: frames, labels, and the depth range for LLFF bounds."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    labels: np.ndarray  # uint8 [T, H, W]
    depth_min: float
    depth_max: float


def _shade(scene: Scene, albedo: np.ndarray, normal: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Lambertian colour; normals are turned towards the viewer so sheets light from either side."""
    facing = np.where((np.einsum("ij,ij->i", normal, dirs) > 0)[:, None], -normal, normal)
    light = np.asarray(scene.light) / np.linalg.norm(scene.light)
    lambert = np.maximum(facing @ light, 0.0)
    return albedo * (scene.ambient + scene.diffuse * lambert)[:, None]


def _screen_box(cam: RigCamera, centre: np.ndarray, radius: float, rows: int, cols: int) -> tuple[int, int, int, int]:
    """Supersampled row/column range [r0, r1) x [c0, c1) covering a world sphere's projection.

    The projections of the 8 corners of the sphere's camera-aligned bounding cube enclose the
    sphere's image whenever the cube is in front of the camera; otherwise the whole image is used.
    """
    c = cam.R @ centre + cam.t
    if c[2] - radius <= 1e-3:
        return 0, rows, 0, cols
    offsets = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * radius
    corners = c + offsets
    u = cam.focal * corners[:, 0] / corners[:, 2] + 0.5 * cam.width
    v = cam.focal * corners[:, 1] / corners[:, 2] + 0.5 * cam.height
    # Sample j sits at pixel coordinate (j + 0.5) / SUPERSAMPLE.
    c0 = int(np.clip(np.floor(u.min() * SUPERSAMPLE - 0.5), 0, cols))
    c1 = int(np.clip(np.ceil(u.max() * SUPERSAMPLE - 0.5) + 1, 0, cols))
    r0 = int(np.clip(np.floor(v.min() * SUPERSAMPLE - 0.5), 0, rows))
    r1 = int(np.clip(np.ceil(v.max() * SUPERSAMPLE - 0.5) + 1, 0, rows))
    return r0, r1, c0, c1


def _vote(labels: np.ndarray, depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per output pixel, the label covering most of its sub-samples; ties go to the nearest surface."""
    n = SUPERSAMPLE * SUPERSAMPLE
    lab = labels.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).transpose(0, 2, 1, 3).reshape(height, width, n)
    dep = depth.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).transpose(0, 2, 1, 3).reshape(height, width, n)
    counts = (lab[..., :, None] == lab[..., None, :]).sum(axis=-1)
    score = counts - 1e-4 * np.minimum(dep, 1e3)
    best = score.argmax(axis=-1)[..., None]
    return np.take_along_axis(lab, best, axis=-1)[..., 0]


def render_camera(
    scene: Scene,
    textures: dict[str, Texture],
    cam: RigCamera,
    n_frames: int,
    on_frame: Callable[[], None],
) -> CameraRender:
    """Render frames ``i = 0 .. n_frames - 1`` at times ``t = i / n_frames``."""
    rows, cols = cam.height * SUPERSAMPLE, cam.width * SUPERSAMPLE
    v, u = np.mgrid[0:rows, 0:cols]
    d_cam = np.stack(
        [
            ((u + 0.5) / SUPERSAMPLE - 0.5 * cam.width) / cam.focal,
            ((v + 0.5) / SUPERSAMPLE - 0.5 * cam.height) / cam.focal,
            np.ones((rows, cols)),
        ],
        axis=-1,
    )
    # Camera z of each direction is 1, so the ray parameter of a hit is its camera depth.
    dirs = d_cam @ cam.R
    origin = cam.centre
    flat = dirs.reshape(-1, 3)

    static: list[Primitive] = [p for p in scene.primitives if not p.dynamic]
    dynamic: list[Primitive] = [p for p in scene.primitives if p.dynamic]
    hits = [p.intersect(origin, flat, 0.0) for p in static]
    all_s = np.stack([h.s for h in hits])
    nearest = all_s.argmin(axis=0)
    depth = all_s.min(axis=0)
    colour = np.tile(np.asarray(scene.sky, dtype=np.float64), (len(flat), 1))
    label = np.zeros(len(flat), dtype=np.uint8)
    tinted = []
    for k, (prim, hit) in enumerate(zip(static, hits)):
        sel = (nearest == k) & np.isfinite(depth)
        albedo = textures[prim.name].sample(hit.uv[sel])
        colour[sel] = _shade(scene, albedo, hit.normal[sel], flat[sel])
        label[sel] = prim.region
        if isinstance(prim, Rect) and prim.tint is not None:
            tinted.append((sel.reshape(rows, cols), prim.tint))
    colour = colour.reshape(rows, cols, 3)
    label = label.reshape(rows, cols)
    depth = depth.reshape(rows, cols)

    frames = np.empty((n_frames, cam.height, cam.width, 3), dtype=np.uint8)
    labels = np.empty((n_frames, cam.height, cam.width), dtype=np.uint8)
    depth_min, depth_max = np.inf, 0.0
    for i in range(n_frames):
        t = i / n_frames
        col, lab, dep = colour.copy(), label.copy(), depth.copy()
        for mask, tint in tinted:
            col[mask] = tint.apply(col[mask], t)
        for prim in dynamic:
            r0, r1, c0, c1 = _screen_box(cam, *prim.bounding_sphere(t), rows, cols)
            if r1 <= r0 or c1 <= c0:
                continue
            block_dirs = dirs[r0:r1, c0:c1].reshape(-1, 3)
            hit = prim.intersect(origin, block_dirs, t)
            dep_block = dep[r0:r1, c0:c1]
            closer = hit.s.reshape(dep_block.shape) < dep_block
            flat_closer = closer.ravel()
            albedo = textures[prim.name].sample(hit.uv[flat_closer])
            dep_block[closer] = hit.s[flat_closer]
            lab[r0:r1, c0:c1][closer] = prim.region
            col[r0:r1, c0:c1][closer] = _shade(scene, albedo, hit.normal[flat_closer], block_dirs[flat_closer])
        small = col.reshape(cam.height, SUPERSAMPLE, cam.width, SUPERSAMPLE, 3).mean(axis=(1, 3))
        frames[i] = np.round(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8)
        labels[i] = _vote(lab, dep, cam.height, cam.width)
        finite = dep[np.isfinite(dep)]
        depth_min, depth_max = min(depth_min, float(finite.min())), max(depth_max, float(finite.max()))
        on_frame()
    return CameraRender(frames=frames, labels=labels, depth_min=depth_min, depth_max=depth_max)
