"""``build_dataset``: raw capture -> dataset payload (the work behind ``moegs preprocess``).

Order per camera: decode -> undistort (if the calibration has distortion) -> resize -> frame store
(one uint8 array per camera, see ``frame_store``), cameras in parallel; the first frame of each
camera is also written as a PNG preview. The cameras written are the pinhole, resized ones the
frames are in. Initial points are triangulated on the written frames of the training cameras (the
held-out view stays unseen), so colours and intrinsics match what the experts train on. The
caller owns ``out_dir`` (an empty folder; it renames it and writes the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import time as _time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from moegs.cameras import Camera, cameras_to_json
from moegs.data.capture import Capture, SizeMismatch, open_capture
from moegs.data.colmap_init import PointCloud, colmap_points, point_stats, random_points
from moegs.data.dataset import (CAMERAS_FILE, POINTS_FILE, PREVIEW_FILE, REGIONS_FILE, label_path, preview_path,
                                scene_extent, store_path, write_times)
from moegs.data.frame_store import FrameStoreWriter
from moegs.data.preview import write_preview
from moegs.data.undistort import Undistorter, make_undistorter
from moegs.errors import InputError
from moegs.progress import progress_bar


def build_dataset(
    src: Path,
    fmt: str,
    out_dir: Path,
    *,
    frame_start: int = 0,
    frame_stop: int | None = None,
    downscale: float = 1.0,
    max_width: int | None = None,
    truncate: bool = False,
    size_mismatch: SizeMismatch = None,
    init: str = "colmap",
    colmap_frames: int = 1,
    colmap_max_features: int = 8000,
    min_points: int = 100,
    n_random_points: int = 100_000,
    test_cameras: list[str] | None = None,
    num_threads: int = 1,
    decode_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write the dataset payload for frames ``[frame_start, frame_stop)`` of ``src`` into ``out_dir``.

    ``downscale`` divides the image size (2 = half resolution, N3V's usual setting); ``max_width``
    additionally caps each camera's width. ``colmap_frames`` frames, evenly spread over the range,
    are triangulated (``init="colmap"``); ``init="random"`` samples points in the frustums instead.
    Cameras are decoded in parallel by ``decode_workers`` threads (default: one per CPU core).
    Returns ``{"metrics": {...}, "compat": {...}}`` for the manifest.
    """
    started = _time.perf_counter()
    out_dir = Path(out_dir)
    if init not in ("colmap", "random"):
        raise InputError(f"unknown init {init!r}; expected 'colmap' or 'random'")
    if not downscale >= 1.0:
        raise InputError(f"downscale must be >= 1 (2 = half resolution), got {downscale}")
    if max_width is not None and max_width < 8:
        raise InputError(f"max_width must be at least 8 pixels, got {max_width}")
    if colmap_frames < 1:
        raise InputError(f"colmap_frames must be >= 1, got {colmap_frames}")
    capture = open_capture(src, fmt, truncate=truncate, size_mismatch=size_mismatch)
    names = [cam.name for cam in capture.cameras]
    test = list(test_cameras) if test_cameras is not None else capture.test_cameras
    unknown = [n for n in test if n not in names]
    if unknown:
        raise InputError(f"{src}: test camera(s) {unknown} not among the cameras {names}")
    if len(test) >= len(names):
        raise InputError(f"{src}: every camera is a test camera ({test}); at least one must train")

    stop = capture.n_frames if frame_stop is None else frame_stop
    if not 0 <= frame_start < stop <= capture.n_frames:
        raise InputError(f"{src}: frame range [{frame_start}, {stop}) outside the {capture.n_frames} frames available")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_frames = stop - frame_start
    colmap_idx = sorted(set(np.linspace(0, n_frames - 1, min(colmap_frames, n_frames)).round().astype(int).tolist()))

    keep = set(colmap_idx) | {0}
    workers = max(1, min(len(names), decode_workers or os.cpu_count() or 1))
    with progress_bar("preprocess: frames", len(names) * n_frames, enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
        jobs = [pool.submit(_write_camera, capture, cam, frame_start, stop, downscale, max_width, out_dir, keep,
                            bar.advance) for cam in capture.cameras]
        try:
            results = [job.result() for job in jobs]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    out_cameras = [target for target, _ in results]
    kept = {i: {target.name: frames[i] for target, frames in results} for i in colmap_idx}
    first_frames = {target.name: frames[0] for target, frames in results}

    train = [c for c in out_cameras if c.name not in test]
    if init == "colmap":
        frames = [{c.name: kept[i][c.name] for c in train} for i in colmap_idx]
        with progress_bar("preprocess: COLMAP", 1, enabled=progress) as bar:
            points, _ = colmap_points(train, frames, [i / n_frames for i in colmap_idx],
                                      max_features=colmap_max_features, num_threads=num_threads,
                                      min_points=min_points)
            bar.advance()
        if fmt != "n3v":
            _bounds_from_points(out_cameras, points)
    else:
        if fmt != "n3v":
            _bounds_from_rig(out_cameras)
        points = random_points(train, n_random_points)

    cameras_json = cameras_to_json(out_cameras, test, capture.fps, out_dir / CAMERAS_FILE)
    write_times(out_dir, n_frames, capture.frame_ids[frame_start:stop], capture.fps)
    if capture.region_names is not None:
        (out_dir / REGIONS_FILE).write_text(json.dumps({"names": capture.region_names}, indent=1))
    points.save_ply(out_dir / POINTS_FILE)
    write_preview(out_dir / PREVIEW_FILE, out_cameras, first_frames, test, points)

    stats = point_stats(points)
    camera_bytes = json.dumps(cameras_json["cameras"], sort_keys=True).encode()
    return {
        "metrics": {
            "n_cameras": len(out_cameras),
            "n_frames": n_frames,
            "width": out_cameras[0].width,
            "height": out_cameras[0].height,
            "points": stats["points"],
            "reproj_error_mean": stats["reproj_error_mean"] if init == "colmap" else None,
            "reproj_error_median": stats["reproj_error_median"] if init == "colmap" else None,
            "seconds": _time.perf_counter() - started,
        },
        "compat": {
            "n_frames": n_frames,
            "frame_range": [frame_start, stop],
            "time_normalisation": "i/T",
            "cameras_hash": hashlib.sha256(camera_bytes).hexdigest(),
        },
    }


def _write_camera(capture: Capture, cam: Camera, start: int, stop: int, downscale: float, max_width: int | None,
                  out_dir: Path, keep: set[int], advance: Callable[[], None]) -> tuple[Camera, dict[int, np.ndarray]]:
    """Decode -> undistort -> resize -> frame store for one camera (one frame in memory at a time).

    Returns the camera the frames are in and the frames whose index is in ``keep`` (COLMAP, preview).
    Without distortion ffmpeg scales while decoding; with it, frames are undistorted at full size first.
    """
    undistorter = make_undistorter(cam) if cam.has_distortion else None
    pinhole = undistorter.camera if undistorter else cam
    factor = 1.0 / downscale
    if max_width is not None:
        factor = min(factor, max_width / pinhole.width)
    target = pinhole.scaled(factor) if factor != 1.0 else pinhole
    size_hint = (target.width, target.height) if undistorter is None and target is not pinhole else None
    kept: dict[int, np.ndarray] = {}
    with FrameStoreWriter(store_path(out_dir, cam.name), stop - start, target.height, target.width) as store:
        for i, frame in enumerate(capture.iter_frames(cam.name, start, stop, size=size_hint)):
            image = _resize(undistorter(frame) if undistorter else frame, target, Image.Resampling.LANCZOS)
            store.write(image)
            if i in keep:
                kept[i] = image.copy()
            advance()
    preview = preview_path(out_dir, cam.name)
    preview.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(preview, kept[0])
    _write_labels(capture.labels(cam.name, start, stop), undistorter, target, out_dir)
    return target, kept


def _resize(image: np.ndarray, target: Camera, resample: Image.Resampling) -> np.ndarray:
    """Resize to the target camera's size (PIL maps pixel edges to edges, matching Camera.resized)."""
    if image.shape[:2] == (target.height, target.width):
        return image
    return np.asarray(Image.fromarray(image).resize((target.width, target.height), resample))


def _write_labels(labels: np.ndarray | None, undistorter: Undistorter | None, target: Camera, out_dir: Path) -> None:
    if labels is None:
        return
    if undistorter is not None:
        labels = undistorter.labels(labels)
    labels = np.stack([_resize(frame, target, Image.Resampling.NEAREST) for frame in labels])
    path = label_path(out_dir, target.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, labels=labels)


def _bounds_from_points(cameras: list[Camera], points: PointCloud) -> None:
    """near/far per camera from the depths of the points it sees (formats whose calibration has none)."""
    for cam in cameras:
        uv, depth = cam.project(points.xyz)
        seen = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        if seen.sum() >= 10:
            cam.near = float(0.5 * np.percentile(depth[seen], 1))
            cam.far = float(2.0 * np.percentile(depth[seen], 99))


def _bounds_from_rig(cameras: list[Camera]) -> None:
    """Without points, guess near/far from the rig size (random init only): [0.1, 10] x the rig radius."""
    radius = max(scene_extent(cameras) / 1.1, 1e-3)
    for cam in cameras:
        cam.near, cam.far = 0.1 * radius, 10.0 * radius
