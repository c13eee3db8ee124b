"""Training views streamed from the dataset's frame stores: one (camera, frame) per step.

Drop-in for the old ``TrainViews`` (which decoded every frame of every training camera into float32
up front: about 94 GB at N3V size). ``sample`` makes exactly the same generator calls as before, so
a training run sees the same sequence and, since frames convert to float the same way, the same
numbers. The frame just sampled is read by a background thread while the caller renders (the
forward pass runs between ``sample`` and ``image``); nothing else is read ahead, because the
generator is shared with densification and the next sample cannot be known early.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from moegs.cameras import Camera
from moegs.data.dataset import Dataset
from moegs.losses import motion_weight


class StreamedViews:
    """Ground-truth frames of some cameras, read as uint8 on demand and converted on ``device``."""

    def __init__(self, dataset: Dataset, cameras: list[Camera], device: torch.device | str = "cpu",
                 prefetch: bool = True) -> None:
        self.dataset = dataset
        self.cameras = list(cameras)
        self.device = torch.device(device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-prefetch") if prefetch else None
        self._pending: tuple[tuple[int, int], Future[np.ndarray]] | None = None
        self._backgrounds: dict[int, Tensor] = {}

    def sample(self, generator: torch.Generator, frame_limit: int) -> tuple[int, int]:
        """A random (camera index, frame) with frame < ``frame_limit``; its frame starts loading now."""
        cam = int(torch.randint(len(self.cameras), (1,), generator=generator))
        frame = int(torch.randint(max(1, frame_limit), (1,), generator=generator))
        if self._pool is not None:
            self._pending = ((cam, frame), self._pool.submit(self._read, cam, frame))
        return cam, frame

    def image(self, cam_index: int, frame: int) -> Tensor:
        """float32 [H, W, 3] in [0, 1] on the views' device."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (cam_index, frame):
            array = pending[1].result()
        else:
            array = self._read(cam_index, frame)
        return torch.from_numpy(array).to(self.device).to(torch.float32).div_(255.0)

    def background(self, cam_index: int) -> Tensor:
        """float32 [H, W, 3] on the views' device: the camera's temporal-median background
        (:meth:`moegs.data.dataset.Dataset.background`), moved once and kept as uint8."""
        if cam_index not in self._backgrounds:
            self._backgrounds[cam_index] = torch.from_numpy(self.dataset.background(self.cameras[cam_index].name)).to(self.device)
        return self._backgrounds[cam_index].to(torch.float32).div_(255.0)

    def loss_weight(self, cam_index: int, image: Tensor, strength: float) -> Tensor | None:
        """The L1 weight map of ``image`` (a frame of that camera) with moving content counting up to
        ``1 + strength`` times (:func:`moegs.losses.motion_weight`); None (plain L1) at strength 0."""
        return motion_weight(image, self.background(cam_index), strength) if strength else None

    def _read(self, cam_index: int, frame: int) -> np.ndarray:
        return self.dataset.frame(self.cameras[cam_index].name, frame)

    def close(self) -> None:
        """Stop the prefetch thread (idle threads also end when the views are garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
