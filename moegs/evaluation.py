"""Scoring any renderer (an expert, a MoE) on the held-out cameras, over all frames or an evenly spread
sample of them (a stage's work must not grow with the capture's length: N3V has 300 frames)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moegs.cameras import Camera
from moegs.data.dataset import Dataset
from moegs.data.init_points import spread_indices
from moegs.data.video import write_video
from moegs.metrics import evaluate_images, psnr
from moegs.progress import Bar, progress_bar

RenderFn = Callable[[Camera, float], Tensor]  # (camera, t) -> image [H, W, 3]

EVAL_FRAMES = 30
"""Default number of frames a stage scores: every frame of a synthetic preset, 1 in 10 of N3V."""


def evaluation_frames(n_frames: int, limit: int) -> list[int]:
    """At most ``limit`` frame indices spread evenly over ``[0, n_frames)``, first and last included; 0 = all."""
    return list(range(n_frames)) if limit == 0 or limit >= n_frames else spread_indices(n_frames, limit)


@torch.no_grad()
def evaluate_renderer(
    render: RenderFn,
    dataset: Dataset,
    cameras: list[Camera] | None = None,
    *,
    frames: list[int] | None = None,
    video_path: Path | None = None,
    with_flip: bool = False,
    lpips_weights: Path | None = None,
    progress: bool = True,
    label: str = "evaluate",
) -> dict:
    """PSNR/SSIM (and FLIP/LPIPS on request) per frame of every test camera, their means, per-region PSNR
    and, with region labels, ``moving_psnr`` over every pixel that is not background (label 0).

    ``frames`` (default: all) are the frames scored; the result lists them under ``"frames"``. With
    ``video_path`` also writes the first test camera as an MP4 of ground truth beside the render.
    """
    cameras = cameras if cameras is not None else dataset.test_cameras
    frames = list(range(dataset.n_frames)) if frames is None else list(frames)
    per_frame: list[dict] = []
    region_values: dict[str, list[float]] = {}
    moving_values: list[float] = []
    names = dataset.region_names

    def scored(camera: Camera, bar: Bar) -> Iterator[tuple[Tensor, Tensor]]:
        """Score ``frames`` of ``camera``, yielding (ground truth, render): one frame in memory at a time."""
        labels = dataset.labels(camera.name)
        for frame in frames:
            gt = dataset.frame_tensor(camera.name, frame)
            image = render(camera, float(dataset.times[frame])).clamp(0, 1).float().cpu()  # scored on the host
            lab = None if labels is None else torch.as_tensor(labels[frame].astype(np.int64))
            m = evaluate_images(image, gt, lab, lpips_weights=lpips_weights, with_flip=with_flip)
            entry = {"camera": camera.name, "frame": frame, "psnr": m["psnr"], "ssim": m["ssim"]}
            if with_flip:
                entry["flip"] = m["flip"]
            if lpips_weights is not None:
                entry["lpips"] = m["lpips"]
            per_frame.append(entry)
            if lab is not None and bool((lab > 0).any()):
                mask = lab > 0
                moving_values.append(psnr(image[mask][None], gt[mask][None]))
            for region_id, value in m["region_psnr"].items():
                name = names[region_id] if names and region_id < len(names) else str(region_id)
                region_values.setdefault(name, []).append(value)
            bar.advance()
            yield gt, image

    with progress_bar(label, len(cameras) * len(frames), enabled=progress) as bar:
        for cam_index, camera in enumerate(cameras):
            if video_path is not None and cam_index == 0:  # encoded as it is scored, never held whole
                pairs = (torch.cat([gt, image], dim=1) for gt, image in scored(camera, bar))
                write_video(video_path, ((pair.numpy() * 255 + 0.5).astype(np.uint8) for pair in pairs),
                            fps=dataset.fps or 30.0)
            else:
                for _ in scored(camera, bar):
                    pass
    result = {
        "psnr": float(np.mean([e["psnr"] for e in per_frame])),
        "ssim": float(np.mean([e["ssim"] for e in per_frame])),
        "region_psnr": {k: float(np.mean(v)) for k, v in region_values.items()},
        "frames": frames,
        "per_frame": per_frame,
    }
    if moving_values:
        result["moving_psnr"] = float(np.mean(moving_values))
    if with_flip:
        result["flip"] = float(np.mean([e["flip"] for e in per_frame]))
    if lpips_weights is not None:
        result["lpips"] = float(np.mean([e["lpips"] for e in per_frame]))
    return result


@torch.no_grad()
def measure_fps(render: RenderFn, camera: Camera, times: list[float], warmup: int = 2, repeats: int = 1) -> float:
    """Frames per second of ``render`` over ``times`` (warm-up renders excluded; everything the
    renderer does, e.g. a MoE's blend, is included)."""
    for t in times[:warmup]:
        _finished(render(camera, t))
    started = time.perf_counter()
    count, image = 0, None
    for _ in range(repeats):
        for t in times:
            image = render(camera, t)
            count += 1
    _finished(image)
    return count / max(time.perf_counter() - started, 1e-9)


def _finished(image: Tensor | None) -> None:
    """Wait for queued GPU work (CUDA kernels run asynchronously, so timing would stop too early)."""
    if image is not None and image.is_cuda:
        torch.cuda.synchronize(image.device)
