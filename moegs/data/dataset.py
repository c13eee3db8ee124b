"""The on-disk dataset payload that ``moegs preprocess`` writes and every later stage reads.

Layout of a dataset directory (the artifact's payload; the manifest is the artifact system's)::

    cameras.json          generic camera format, pinhole, each camera with "split", "near", "far"
    frames/<cam>.npy      frame store: uint8 RGB [T, H, W, 3], frame i = 0 .. T-1 after frame-range selection
    previews/<cam>.png    the camera's first frame, for a human
    labels/<cam>.npz      optional uint8 "labels" [T, H, W] (synthetic scene regions)
    regions.json          optional {"names": [...]} for the label values
    points.ply            initial points: x y z, red green blue, time, error, track_len
    times.json            {"n_frames": T, "source_frames": [...], "fps": ...}; t_i = i / T
    preview.png           contact sheet for a human
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moegs.cache import ByteLRUCache, budget_bytes
from moegs.cameras import Camera, cameras_from_json
from moegs.data.colmap_init import PointCloud
from moegs.data.frame_store import SUFFIX, FrameStore
from moegs.data.init_points import BACKGROUND_FRAMES, spread_indices
from moegs.errors import InputError

CAMERAS_FILE = "cameras.json"
TIMES_FILE = "times.json"
POINTS_FILE = "points.ply"
REGIONS_FILE = "regions.json"
PREVIEW_FILE = "preview.png"
FRAMES_DIR = "frames"
PREVIEWS_DIR = "previews"
LABELS_DIR = "labels"
FRAME_CACHE_MB = 512
"""Default budget of a dataset's decoded-frame cache (one N3V frame at 1352x1014 is 4 MB)."""


def store_path(root: Path, cam_name: str) -> Path:
    return Path(root) / FRAMES_DIR / f"{cam_name}{SUFFIX}"


def preview_path(root: Path, cam_name: str) -> Path:
    return Path(root) / PREVIEWS_DIR / f"{cam_name}.png"


def label_path(root: Path, cam_name: str) -> Path:
    return Path(root) / LABELS_DIR / f"{cam_name}.npz"


def normalised_times(n_frames: int) -> np.ndarray:
    """t_i = i / T in [0, 1), the time every expert sees for frame i."""
    return (np.arange(n_frames) / n_frames).astype(np.float32)


class Dataset:
    """A loaded dataset payload; frames are read on demand from the frame stores and kept in a
    byte-bounded LRU cache (``cache_mb``; 0 turns it off)."""

    def __init__(self, path: Path, cameras: list[Camera], test_names: list[str], n_frames: int,
                 source_frames: list[int], fps: float | None, region_names: list[str] | None,
                 cache_mb: float = FRAME_CACHE_MB) -> None:
        self.path = Path(path)
        self.cameras = cameras
        self.test_names = list(test_names)
        self.n_frames = n_frames
        self.source_frames = source_frames
        self.fps = fps
        self.region_names = region_names
        self.times = normalised_times(n_frames)
        self.frame_offset = 0
        """Index in the frame stores of this dataset's frame 0 (non-zero for a chunk: ``frame_range.select_frames``)."""
        self.frame_cache: ByteLRUCache[np.ndarray] = ByteLRUCache(budget_bytes(cache_mb, "frame_cache_mb"))
        self._backgrounds: dict[tuple[str, int, int], np.ndarray] = {}
        self._stores = {cam.name: FrameStore(store_path(self.path, cam.name), n_frames, cam.height, cam.width)
                        for cam in cameras}
        self._points: PointCloud | None = None

    @classmethod
    def load(cls, path: Path, cache_mb: float = FRAME_CACHE_MB) -> Dataset:
        """Open a dataset directory, checking that every camera has a frame store of all its frames."""
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
            store = store_path(path, cam.name)
            if store.is_file():
                continue
            if (path / FRAMES_DIR / cam.name).is_dir():
                raise InputError(f"{path}: dataset written by an older moegs (PNG frames, no frame store "
                                 f"{store.name}); re-run preprocess with --force to rebuild it")
            raise InputError(f"{store}: frame store of camera {cam.name} not found")
        region_names = None
        if (path / REGIONS_FILE).is_file():
            region_names = json.loads((path / REGIONS_FILE).read_text())["names"]
        return cls(path, cam_file.cameras, test, n_frames, source_frames, times.get("fps"), region_names, cache_mb)

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
        """uint8 [H, W, 3] of frame i (cached; callers must not modify it)."""
        store = self._stores.get(cam_name)
        if store is None:
            raise InputError(f"{self.path}: no camera named {cam_name!r}")
        if not 0 <= i < self.n_frames:
            raise InputError(f"{self.path}: frame {i} outside 0..{self.n_frames - 1}")
        stored = self.frame_offset + int(i)
        return self.frame_cache.get_or_create((cam_name, stored), lambda: store.read(stored))

    def background(self, cam_name: str) -> np.ndarray:
        """uint8 [H, W, 3]: the camera's per-pixel temporal median over :data:`BACKGROUND_FRAMES` frames
        spread over the clip (rounded to the nearest level). Rigs are static, so what a frame shows
        elsewhere is moving content. Computed once per camera and frame range (chunks share the dict)."""
        key = (cam_name, self.frame_offset, self.n_frames)
        if key not in self._backgrounds:
            stack = np.stack([self.frame(cam_name, i) for i in spread_indices(self.n_frames, BACKGROUND_FRAMES)])
            self._backgrounds[key] = np.median(stack, axis=0).round().astype(np.uint8)
        return self._backgrounds[key]

    def mean_colour(self, cameras: list[Camera]) -> list[float]:
        """RGB in [0, 1]: the mean colour of ``cameras`` over :data:`BACKGROUND_FRAMES` frames spread
        over the clip, the least-squares guess for a pixel nothing else explains."""
        frames = spread_indices(self.n_frames, BACKGROUND_FRAMES)
        means = [self.frame(cam.name, i).reshape(-1, 3).mean(axis=0) for cam in cameras for i in frames]
        return (np.mean(means, axis=0) / 255.0).tolist()

    def frame_tensor(self, cam_name: str, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Frame i as float32 [H, W, 3] in [0, 1] on ``device`` (moved as uint8, converted there)."""
        image = torch.from_numpy(self.frame(cam_name, i)).to(device, non_blocking=True)
        return image.to(torch.float32).div_(255.0)

    def labels(self, cam_name: str) -> np.ndarray | None:
        """uint8 region labels [T, H, W], or None when the dataset has none."""
        path = label_path(self.path, cam_name)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["labels"][self.frame_offset:self.frame_offset + self.n_frames]

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
