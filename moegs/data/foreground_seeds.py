"""Dense seeds on moving content: each frame's triangulated depths spread over its moving pixels.

SIFT finds few points on small, fast or spinning objects (the demo's ball: 2-20 of ~1,700 a frame),
so the temporal families start with almost nothing there and densification cannot grow what has no
seed (demo, polynomial: 150 true ball points a frame lift the ball from 19 to 26 dB). Static cameras
give more: a frame's moving pixels are where it differs from the camera's background (its
temporal median), and the few points triangulated on that moving patch at that frame give its
depth. Each frame, one training camera in turn is the reference: every connected moving patch of it
holding triangulated moving points gets pixels back-projected at the depth of the nearest of those
points (inverse-distance weighted in the image), a pixel's colour and the frame's time. A seed is
kept only where the other training cameras that see it see moving content too, so one placed at a
wrong depth does not survive (on rigs with a wide baseline; a narrow forward rig tests depth less).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from moegs.cameras import Camera, unproject
from moegs.data.colmap_init import PointCloud
from moegs.losses import MOTION_THRESHOLD

FrameReader = Callable[[str, int], np.ndarray]


@dataclass(frozen=True)
class SeedSettings:
    """Per-patch budget and the tests a seed must pass; the defaults suit 8-bit video."""

    per_patch: int = 60
    """Seeds wanted on a moving patch at a frame, counting the triangulated points already there."""
    min_patch_pixels: int = 12
    """Smaller moving patches are noise."""
    neighbours: int = 4
    """Triangulated points whose depths are blended for a pixel."""
    agree: float = 0.75
    """Fraction of the other cameras seeing a seed that must see moving content there."""


def foreground_seeds(cameras: list[Camera], read_frame: FrameReader, frame_index: list[int], n_frames: int,
                     backgrounds: dict[str, np.ndarray], points: PointCloud,
                     settings: SeedSettings = SeedSettings(), seed: int = 0) -> tuple[PointCloud, dict]:
    """Seeds [M] on the moving content of frames ``frame_index`` (each with its time ``i / n_frames``).

    ``backgrounds[name]``: float [H, W, 3] in [0, 1], camera ``name``'s static background;
    ``points``: the triangulated points, those of frame i stamped ``i / n_frames``.
    Returns the seeds and stats for the manifest (seeds per frame, patches used).
    """
    rng = np.random.default_rng(seed)
    clouds, per_frame, patches = [], {}, 0
    frame_of = np.round(points.time * n_frames).astype(np.int64)
    for k, i in enumerate(frame_index):
        images = {c.name: read_frame(c.name, i).astype(np.float32) / 255.0 for c in cameras}
        masks = {c.name: moving_mask(images[c.name], backgrounds[c.name]) for c in cameras}
        grown = {name: ndimage.binary_dilation(mask) for name, mask in masks.items()}  # for calibration error
        at_frame = points.xyz[frame_of == i]
        moving = at_frame[_agreeing(cameras, grown, at_frame, settings.agree, minimum=2)]
        reference = cameras[k % len(cameras)]
        seeds, used = _patch_seeds(reference, images[reference.name], masks[reference.name], moving, settings, rng)
        others = [c for c in cameras if c.name != reference.name]
        keep = _agreeing(others, grown, seeds.xyz, settings.agree, minimum=1)
        kept = PointCloud(seeds.xyz[keep], seeds.rgb[keep], seeds.error[keep], seeds.track_len[keep],
                          np.full(int(keep.sum()), i / n_frames, dtype=np.float32))
        clouds.append(kept)
        per_frame[int(i)] = len(kept)
        patches += used
    cloud = PointCloud.concat(clouds) if clouds else PointCloud.empty()
    return cloud, {"points": len(cloud), "per_frame": per_frame, "patches": patches}


def moving_mask(image: np.ndarray, background: np.ndarray, threshold: float = MOTION_THRESHOLD) -> np.ndarray:
    """bool [H, W]: pixels farther than ``threshold`` (largest channel) from the background, opened against noise."""
    return ndimage.binary_opening(np.abs(image - background).max(axis=-1) > threshold)


def _agreeing(cameras: list[Camera], masks: dict[str, np.ndarray], xyz: np.ndarray, agree: float,
              minimum: int) -> np.ndarray:
    """bool [N]: points seen by at least ``minimum`` of ``cameras``, of which a fraction ``agree``
    see moving content (``masks``) where the point lands."""
    seen = np.zeros(len(xyz), dtype=np.int32)
    votes = np.zeros(len(xyz), dtype=np.int32)
    for cam in cameras:
        uv, depth = cam.project(xyz)
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (depth > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        seen += inside
        votes[inside] += masks[cam.name][row[inside], col[inside]]
    return (seen >= minimum) & (votes >= agree * seen)


def _patch_seeds(cam: Camera, image: np.ndarray, mask: np.ndarray, moving: np.ndarray, settings: SeedSettings,
                 rng: np.random.Generator) -> tuple[PointCloud, int]:
    """Back-projected pixels of ``cam``'s moving patches that hold triangulated ``moving`` points."""
    if len(moving) == 0:
        return PointCloud.empty(), 0
    labels, n_labels = ndimage.label(mask)
    uv, depth = cam.project(moving)
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (depth > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
    point_label = np.zeros(len(moving), dtype=np.int64)
    point_label[inside] = labels[row[inside], col[inside]]
    xyz, rgb, used = [], [], 0
    for label in range(1, n_labels + 1):
        on_patch = point_label == label
        wanted = settings.per_patch - int(on_patch.sum())
        rows, cols = np.nonzero(labels == label)
        if not on_patch.any() or wanted <= 0 or len(rows) < settings.min_patch_pixels:
            continue
        pick = rng.choice(len(rows), size=min(wanted, len(rows)), replace=False)
        pixels = np.stack([cols[pick], rows[pick]], axis=1).astype(np.float64) + 0.5
        known_uv, known_depth = uv[on_patch], depth[on_patch]
        k = min(settings.neighbours, len(known_depth))
        distance, nearest = cKDTree(known_uv).query(pixels, k=k)
        distance, nearest = distance.reshape(len(pixels), k), nearest.reshape(len(pixels), k)
        weight = 1.0 / np.maximum(distance, 0.5)
        pixel_depth = (weight * known_depth[nearest]).sum(axis=1) / weight.sum(axis=1)
        xyz.append(unproject(cam, pixels, pixel_depth))
        rgb.append(np.round(image[rows[pick], cols[pick]] * 255.0))
        used += 1
    if not xyz:
        return PointCloud.empty(), 0
    xyz_all = np.concatenate(xyz)
    return PointCloud(xyz_all, np.concatenate(rgb), np.zeros(len(xyz_all)), np.ones(len(xyz_all)),
                      np.zeros(len(xyz_all))), used
