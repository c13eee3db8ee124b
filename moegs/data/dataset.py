"""The on-disk dataset payload that ``moegs preprocess`` writes and every later stage reads.

Layout of a dataset directory (the artifact's payload; the manifest is the artifact system's)::

    cameras.json          generic camera format, pinhole, each camera with "split", "near", "far"
    frames/<cam>/<i:05d>.png   uint8 RGB, i = 0 .. T-1 after frame-range selection
    labels/<cam>.npz      optional uint8 "labels" [T, H, W] (synthetic scene regions)
    regions.json          optional {"names": [...]} for the label values
    points.ply            initial points: x y z, red green blue, time, error, track_len
    times.json            {"n_frames": T, "source_frames": [...], "fps": ...}; t_i = i / T
    preview.png           contact sheet for a human
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from moegs.cameras import Camera, cameras_from_json
from moegs.data.colmap_init import PointCloud
from moegs.errors import InputError

CAMERAS_FILE = "cameras.json"
TIMES_FILE = "times.json"
POINTS_FILE = "points.ply"
REGIONS_FILE = "regions.json"
PREVIEW_FILE = "preview.png"
FRAMES_DIR = "frames"
LABELS_DIR = "labels"


def frame_path(root: Path, cam_name: str, index: int) -> Path:
    return Path(root) / FRAMES_DIR / cam_name / f"{index:05d}.png"


def label_path(root: Path, cam_name: str) -> Path:
    return Path(root) / LABELS_DIR / f"{cam_name}.npz"


def normalised_times(n_frames: int) -> np.ndarray:
    """t_i = i / T in [0, 1), the time every expert sees for frame i."""
    return (np.arange(n_frames) / n_frames).astype(np.float32)


class Dataset:
    """A loaded dataset payload; frames are decoded on demand and kept in a bounded LRU cache."""

    def __init__(self, path: Path, cameras: list[Camera], test_names: list[str], n_frames: int,
                 source_frames: list[int], fps: float | None, region_names: list[str] | None,
                 cache_frames: int = 256) -> None:
        self.path = Path(path)
        self.cameras = cameras
        self.test_names = list(test_names)
        self.n_frames = n_frames
        self.source_frames = source_frames
        self.fps = fps
        self.region_names = region_names
        self.times = normalised_times(n_frames)
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_frames = cache_frames
        self._points: PointCloud | None = None

    @classmethod
    def load(cls, path: Path, cache_frames: int = 256) -> Dataset:
        """Open a dataset directory, checking that every camera has all its frames."""
        path = Path(path)
        cam_file = cameras_from_json(path / CAMERAS_FILE)
        times_path = path / TIMES_FILE
        try:
            times = json.loads(times_path.read_text())
            n_frames = int(times["n_frames"])
            source_frames = [int(i) for i in times.get("source_frames", range(n_frames))]
        except FileNotFoundError:
            raise InputError(f"{times_path}: not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{times_path}: expected {{\"n_frames\": T, ...}} ({exc})") from None
        if n_frames <= 0 or len(source_frames) != n_frames:
            raise InputError(f"{times_path}: n_frames={n_frames} but {len(source_frames)} source frames")
        test = cam_file.test_cameras or [n for n, s in cam_file.splits.items() if s == "test"]
        for cam in cam_file.cameras:
            folder = path / FRAMES_DIR / cam.name
            count = len(list(folder.glob("*.png"))) if folder.is_dir() else 0
            if count != n_frames:
                raise InputError(f"{folder}: camera {cam.name} has {count} frames, expected {n_frames}")
        region_names = None
        if (path / REGIONS_FILE).is_file():
            region_names = json.loads((path / REGIONS_FILE).read_text())["names"]
        return cls(path, cam_file.cameras, test, n_frames, source_frames, times.get("fps"), region_names, cache_frames)

    @property
    def train_cameras(self) -> list[Camera]:
        return [c for c in self.cameras if c.name not in self.test_names]

    @property
    def test_cameras(self) -> list[Camera]:
        return [c for c in self.cameras if c.name in self.test_names]

    def camera(self, name: str) -> Camera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise InputError(f"{self.path}: no camera named {name!r}")

    def frame(self, cam_name: str, i: int) -> np.ndarray:
        """uint8 [H, W, 3] of frame i (cached)."""
        key = (cam_name, int(i))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        cam = self.camera(cam_name)
        if not 0 <= i < self.n_frames:
            raise InputError(f"{self.path}: frame {i} outside 0..{self.n_frames - 1}")
        path = frame_path(self.path, cam_name, i)
        try:
            image = iio.imread(path, plugin="pillow")
        except Exception as exc:  # imageio raises plugin-specific errors for corrupt files
            raise InputError(f"{path}: not a readable image ({exc})") from None
        if image.shape != (cam.height, cam.width, 3):
            raise InputError(f"{path}: image shape {image.shape}, camera {cam_name} is {cam.width}x{cam.height} RGB")
        self._cache[key] = image
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return image

    def frames_tensor(self, cam_name: str) -> torch.Tensor:
        """All frames of one camera as float32 [T, H, W, 3] in [0, 1]."""
        stack = np.stack([self.frame(cam_name, i) for i in range(self.n_frames)])
        return torch.from_numpy(stack).float().div_(255.0)

    def labels(self, cam_name: str) -> np.ndarray | None:
        """uint8 region labels [T, H, W], or None when the dataset has none."""
        path = label_path(self.path, cam_name)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["labels"]

    @property
    def points(self) -> PointCloud:
        if self._points is None:
            self._points = PointCloud.load_ply(self.path / POINTS_FILE)
        return self._points

    @property
    def scene_extent(self) -> float:
        """3DGS's radius: 1.1 x the largest distance of a training camera centre from their mean."""
        return scene_extent(self.train_cameras or self.cameras)


def scene_extent(cameras: list[Camera]) -> float:
    centres = np.stack([c.center for c in cameras])
    return 1.1 * float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())


def write_times(root: Path, n_frames: int, source_frames: list[int], fps: float | None) -> None:
    data = {"n_frames": n_frames, "source_frames": [int(i) for i in source_frames], "fps": fps,
            "time_normalisation": "i/T"}
    (Path(root) / TIMES_FILE).write_text(json.dumps(data, indent=1))
