"""Rendering an expert at (camera, time), and the training views it is compared against."""

from __future__ import annotations

import torch
from torch import Tensor

from moegs.cameras import Camera
from moegs.data.dataset import Dataset
from moegs.experts.base import DeformedGaussians, Expert
from moegs.raster import RasterOutput, rasterize


class TrainViews:
    """Ground-truth frames of some cameras, decoded once and kept as float tensors in [0, 1]."""

    def __init__(self, dataset: Dataset, cameras: list[Camera]) -> None:
        self.cameras = list(cameras)
        self._frames = [dataset.frames_tensor(cam.name) for cam in self.cameras]  # each [T, H, W, 3]

    def sample(self, generator: torch.Generator, frame_limit: int) -> tuple[int, int]:
        """A random (camera index, frame) with frame < ``frame_limit``."""
        cam = int(torch.randint(len(self.cameras), (1,), generator=generator))
        frame = int(torch.randint(max(1, frame_limit), (1,), generator=generator))
        return cam, frame

    def image(self, cam_index: int, frame: int) -> Tensor:
        return self._frames[cam_index][frame]


def camera_center(camera: Camera) -> Tensor:
    return torch.as_tensor(camera.center, dtype=torch.float32)


def rasterize_gaussians(
    g: DeformedGaussians,
    camera: Camera,
    background: Tensor | None,
    *,
    backend: str = "auto",
    retain_grad: bool = False,
    features: Tensor | None = None,
) -> RasterOutput:
    """Rasterise deformed Gaussians (their colours, or ``features`` [N, C] instead) into ``camera``."""
    return rasterize(
        g.means,
        g.quats,
        g.scales,
        g.opacities,
        g.colors if features is None else features,
        camera.viewmat_tensor(),
        camera.K_tensor(),
        camera.width,
        camera.height,
        background,
        near=camera.near,
        far=camera.far,
        backend=backend,
        retain_means2d_grad=retain_grad,
    )


def render_expert(
    expert: Expert,
    camera: Camera,
    t: float,
    background: Tensor | None = None,
    *,
    backend: str = "auto",
    sh_degree: int | None = None,
    retain_grad: bool = False,
) -> RasterOutput:
    """The expert's image of ``camera`` at normalised time ``t``."""
    if background is None:
        background = torch.tensor(expert.config.background, dtype=torch.float32)
    g = expert.gaussians_at(t, camera_center(camera), sh_degree)
    return rasterize_gaussians(g, camera, background, backend=backend, retain_grad=retain_grad)
