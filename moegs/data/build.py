"""``build_dataset``: raw capture -> dataset payload (the work behind ``moegs preprocess``).

Order per camera: decode -> undistort (if the calibration has distortion) -> resize -> frame store
(one uint8 array per camera, see ``frame_store``), cameras in parallel; the first frame of each
camera is also written as a PNG preview. The cameras written are the pinhole, resized ones the
frames are in. Initial points (COLMAP, carving or the shared frusta, see
:mod:`moegs.data.init_points`) are made from the stored frames of the training cameras (the
held-out view stays unseen), so colours and intrinsics match what the experts train on. The
caller owns ``out_dir`` (an empty folder; it renames it and writes the manifest).
"""

from __future__ import annotations

import hashlib
import json
import time as _time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from moegs.camera_path import rig_shape
from moegs.cameras import Camera, cameras_to_json
from moegs.data.capture import Capture, open_capture
from moegs.data.colmap_init import PointCloud
from moegs.data.dataset import (CAMERAS_FILE, POINTS_FILE, PREVIEW_FILE, REGIONS_FILE, label_path, preview_path,
                                scene_extent, store_path, write_times)
from moegs.data.frame_store import FrameStore, FrameStoreWriter
from moegs.data.init_points import initial_points, record_stats, spread_indices
from moegs.data.preprocess_config import PreprocessConfig
from moegs.data.preview import write_preview
from moegs.data.undistort import Undistorter, make_undistorter
from moegs.errors import InputError
from moegs.pools import pool_size
from moegs.progress import progress_bar


def build_dataset(src: Path, out_dir: Path, config: PreprocessConfig, *, num_threads: int = 1,
                  decode_workers: int | None = None, progress: bool = True) -> dict:
    """Write the dataset payload for ``config``'s frames of ``src`` into ``out_dir``.

    ``config`` is validated here (the one place its bounds live). Initial points come from
    :func:`moegs.data.init_points.initial_points` (``config.init``; ``auto`` picks COLMAP, carving
    or the shared frusta and the manifest records which and why). Returns ``{"metrics": {...},
    "compat": {...}, "init": {...}}`` for the manifest. Cameras are decoded by ``decode_workers``
    threads (default: one per core), COLMAP triangulates one frame set per core, each on
    ``num_threads``; neither changes the result.
    """
    started = _time.perf_counter()
    out_dir = Path(out_dir)
    config.validate()
    fmt, frame_start = config.format, config.frame_start
    size_mismatch = None if config.size_mismatch == "refuse" else config.size_mismatch
    capture = open_capture(src, fmt, truncate=config.truncate, size_mismatch=size_mismatch)
    names = [cam.name for cam in capture.cameras]
    test = list(config.test_cameras) if config.test_cameras is not None else capture.test_cameras
    unknown = [n for n in test if n not in names]
    if unknown:
        raise InputError(f"{src}: test camera(s) {unknown} not among the cameras {names}")
    if len(test) >= len(names):
        raise InputError(f"{src}: every camera is a test camera ({test}); at least one must train")

    stop = capture.n_frames if config.frame_stop is None else config.frame_stop
    if not 0 <= frame_start < stop <= capture.n_frames:
        raise InputError(f"{src}: frame range [{frame_start}, {stop}) outside the {capture.n_frames} frames available")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_frames = stop - frame_start

    workers = pool_size(len(names), decode_workers)  # each holds about one frame
    with progress_bar("preprocess: frames", len(names) * n_frames, enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
        jobs = [pool.submit(_write_camera, capture, cam, frame_start, stop, config, out_dir, bar.advance)
                for cam in capture.cameras]
        try:
            results = [job.result() for job in jobs]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    out_cameras = [target for target, _ in results]
    first_frames = {target.name: first for target, first in results}
    stores = {c.name: FrameStore(store_path(out_dir, c.name), n_frames, c.height, c.width) for c in out_cameras}

    train = [c for c in out_cameras if c.name not in test]
    if fmt != "n3v":
        _bounds_from_rig(out_cameras)  # a first guess for carving and random points; refined below
    with progress_bar("preprocess: COLMAP", len(spread_indices(n_frames, config.colmap_frames)),
                      enabled=progress and config.init in ("auto", "colmap")) as bar:
        points, init = initial_points(config, train, n_frames,
                                      lambda name, i: stores[name].read(i),
                                      num_threads=num_threads, on_colmap_frame=bar.advance)
    for store in stores.values():
        store.close()
    if fmt != "n3v" and init.method != "random":
        _bounds_from_points(out_cameras, points)

    cameras_json = cameras_to_json(out_cameras, test, capture.fps, out_dir / CAMERAS_FILE)
    write_times(out_dir, n_frames, capture.frame_ids[frame_start:stop], capture.fps)
    if capture.region_names is not None:
        (out_dir / REGIONS_FILE).write_text(json.dumps({"names": capture.region_names}, indent=1))
    points.save_ply(out_dir / POINTS_FILE)
    write_preview(out_dir / PREVIEW_FILE, out_cameras, first_frames, test, points)

    camera_bytes = json.dumps(cameras_json["cameras"], sort_keys=True).encode()
    return {
        "metrics": {
            "n_cameras": len(out_cameras),
            "n_frames": n_frames,
            "width": out_cameras[0].width,
            "height": out_cameras[0].height,
            **record_stats(points, init),
            "rig": rig_shape(train),
            "seconds": _time.perf_counter() - started,
        },
        "compat": {
            "n_frames": n_frames,
            "frame_range": [frame_start, stop],
            "time_normalisation": "i/T",
            "cameras_hash": hashlib.sha256(camera_bytes).hexdigest(),
        },
        "init": init.to_json(),
    }


def _write_camera(capture: Capture, cam: Camera, start: int, stop: int, config: PreprocessConfig, out_dir: Path,
                  advance: Callable[[], None]) -> tuple[Camera, np.ndarray]:
    """Decode -> undistort -> resize -> frame store for one camera (one frame in memory at a time).

    Returns the camera the frames are in and its first frame (the preview). Without distortion
    ffmpeg scales while decoding; with it, frames are undistorted at full size first.
    """
    undistorter = make_undistorter(cam) if cam.has_distortion else None
    pinhole = undistorter.camera if undistorter else cam
    factor = 1.0 / config.downscale
    if config.max_width is not None:
        factor = min(factor, config.max_width / pinhole.width)
    target = pinhole.scaled(factor) if factor != 1.0 else pinhole
    size_hint = (target.width, target.height) if undistorter is None and target is not pinhole else None
    first: np.ndarray | None = None
    with FrameStoreWriter(store_path(out_dir, cam.name), stop - start, target.height, target.width) as store:
        for i, frame in enumerate(capture.iter_frames(cam.name, start, stop, size=size_hint)):
            image = _resize(undistorter(frame) if undistorter else frame, target, Image.Resampling.LANCZOS)
            store.write(image)
            if i == 0:
                first = image.copy()
            advance()
    preview = preview_path(out_dir, cam.name)
    preview.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(preview, first)
    _write_labels(capture.labels(cam.name, start, stop), undistorter, target, out_dir)
    return target, first


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
    """Without points, guess near/far from the rig size: [0.1, 10] x the rig radius."""
    radius = max(scene_extent(cameras) / 1.1, 1e-3)
    for cam in cameras:
        cam.near, cam.far = 0.1 * radius, 10.0 * radius
