"""Which initial points lie on moving content, so the explicit temporal families can give them a short
life and the background seeds the whole clip (:meth:`moegs.experts.base.Expert.from_points`).

Rigs here do not move, so a camera's per-pixel temporal median (:meth:`moegs.data.dataset.Dataset.background`)
is its static background and what differs from it at a frame is moving content: the space carving's
foreground test (:mod:`moegs.data.carving`), and the pixels the loss weighs up
(:func:`moegs.losses.motion_weight`).
"""

from __future__ import annotations

import numpy as np

from moegs.cameras import Camera
from moegs.data.colmap_init import PointCloud
from moegs.data.dataset import Dataset
from moegs.losses import MOTION_THRESHOLD


def moving_points(dataset: Dataset, points: PointCloud, cameras: list[Camera],
                  threshold: float = MOTION_THRESHOLD) -> np.ndarray:
    """bool [M]: the points on moving content.

    A point seen at frame ``f`` (its time x the dataset's frames) votes in each camera that sees it
    in front and inside the image: moving when frame ``f``'s pixel there differs from the camera's
    background by more than ``threshold`` in some channel. It is moving when most of those cameras
    say so; a point no camera sees is not.
    """
    frames = np.clip(np.round(points.time * dataset.n_frames).astype(np.int64), 0, dataset.n_frames - 1)
    votes = np.zeros(len(points), dtype=np.int32)
    seen = np.zeros(len(points), dtype=np.int32)
    for cam in cameras:
        background = dataset.background(cam.name).astype(np.int16)
        uv, depth = cam.project(points.xyz)
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (depth > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        seen += inside
        for frame in np.unique(frames[inside]):
            at = np.flatnonzero(inside & (frames == frame))
            image = dataset.frame(cam.name, int(frame)).astype(np.int16)
            difference = np.abs(image[row[at], col[at]] - background[row[at], col[at]]).max(axis=-1)
            votes[at] += difference > threshold * 255.0
    return (seen > 0) & (2 * votes > seen)
