"""A contact sheet of a dataset for a quick human check: first frame per camera, test cameras
marked, the initial points projected into one training view."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from moegs.cameras import Camera  # noqa: E402
from moegs.data.colmap_init import PointCloud  # noqa: E402


def write_preview(path: Path, cameras: list[Camera], first_frames: dict[str, np.ndarray], test_cameras: list[str],
                  points: PointCloud, max_points: int = 20000) -> None:
    """Save the contact sheet PNG; the points are drawn on the first training camera (an extra panel)."""
    overlay_cam = next((c for c in cameras if c.name not in test_cameras), cameras[0])
    panels = [(cam, False) for cam in cameras] + [(overlay_cam, True)]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    aspect = overlay_cam.height / overlay_cam.width
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * aspect * nrows + 0.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (cam, overlay) in zip(axes.ravel(), panels):
        ax.imshow(_thumbnail(first_frames[cam.name]), extent=(0, cam.width, cam.height, 0))  # pixel coordinates
        is_test = cam.name in test_cameras
        title = f"{cam.name} (test)" if is_test else cam.name
        if overlay:
            uv, depth = cam.project(points.xyz)
            keep = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
            uv = uv[keep][:max_points]
            ax.scatter(uv[:, 0], uv[:, 1], s=1.5, c="lime", linewidths=0)
            title = f"{cam.name}: {int(keep.sum())} of {len(points)} points"
        ax.set_title(title, fontsize=8, color="red" if is_test and not overlay else "black")
        if is_test and not overlay:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


THUMB_WIDTH = 400
"""Panels are about 320 pixels wide at the sheet's dpi: drawing full-size N3V frames took a minute."""


def _thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if width <= THUMB_WIDTH:
        return image
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
