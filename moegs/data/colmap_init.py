"""Initial point clouds: COLMAP triangulation with the known cameras held fixed.

Per frame (STG style when several frames are used): the frames of the chosen cameras go into a
temporary folder, pycolmap 4.2.1 extracts SIFT features (CPU) with our pinhole intrinsics written
into its database, matches every pair, and ``triangulate_points`` triangulates and refines the
points while poses and intrinsics stay fixed. Points of all frames are concatenated, each tagged
with the normalised time of its frame.
"""

from __future__ import annotations

import logging
import tempfile
import time as _time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from plyfile import PlyData, PlyElement

from moegs.cameras import Camera
from moegs.errors import InputError, MissingDependencyError
from moegs.pools import pool_size

log = logging.getLogger("moegs")
MAX_WORKERS = 4  # frame sets triangulated at once by default


@dataclass
class PointCloud:
    """Points [M, 3] with colour, reprojection error (px; 0 for random points), track length and time."""

    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_len: np.ndarray
    time: np.ndarray

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float32).reshape(-1, 3)
        self.rgb = np.asarray(self.rgb, dtype=np.uint8).reshape(-1, 3)
        self.error = np.asarray(self.error, dtype=np.float32).reshape(-1)
        self.track_len = np.asarray(self.track_len, dtype=np.int32).reshape(-1)
        self.time = np.asarray(self.time, dtype=np.float32).reshape(-1)
        n = len(self.xyz)
        if not all(len(a) == n for a in (self.rgb, self.error, self.track_len, self.time)):
            raise ValueError("PointCloud arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.xyz)

    @classmethod
    def empty(cls) -> PointCloud:
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, clouds: Sequence[PointCloud]) -> PointCloud:
        keys = ("xyz", "rgb", "error", "track_len", "time")
        return cls(*(np.concatenate([getattr(c, k) for c in clouds]) for k in keys))

    def save_ply(self, path: Path) -> None:
        """Binary PLY with x y z, red green blue, time, error, track_len."""
        dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                 ("time", "f4"), ("error", "f4"), ("track_len", "i4")]
        rows = np.empty(len(self), dtype=dtype)
        for i, axis in enumerate("xyz"):
            rows[axis] = self.xyz[:, i]
        for i, channel in enumerate(("red", "green", "blue")):
            rows[channel] = self.rgb[:, i]
        rows["time"], rows["error"], rows["track_len"] = self.time, self.error, self.track_len
        PlyData([PlyElement.describe(rows, "vertex")]).write(str(path))

    @classmethod
    def load_ply(cls, path: Path) -> PointCloud:
        """Read :meth:`save_ply` output; a PLY with only x y z (and colours) is accepted too."""
        try:
            vertex = PlyData.read(str(path))["vertex"].data
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: not a readable PLY point cloud ({exc})") from None
        names = vertex.dtype.names
        if not {"x", "y", "z"} <= set(names):
            raise InputError(f"{path}: PLY vertices have no x y z")
        n = len(vertex)

        def column(key: str, default: float) -> np.ndarray:
            return np.ascontiguousarray(vertex[key]) if key in names else np.full(n, default)

        rgb = np.stack([column(c, 128) for c in ("red", "green", "blue")], axis=1)
        return cls(np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1), rgb,
                   column("error", 0.0), column("track_len", 0), column("time", 0.0))


def point_stats(points: PointCloud) -> dict[str, float | None]:
    """Count and reprojection error summary as recorded in the dataset manifest."""
    if len(points) == 0:
        return {"points": 0, "reproj_error_mean": None, "reproj_error_median": None}
    return {"points": len(points), "reproj_error_mean": float(points.error.mean()),
            "reproj_error_median": float(np.median(points.error))}


def colmap_points(
    cameras: Sequence[Camera],
    frames: Sequence[dict[str, np.ndarray]],
    times: Sequence[float],
    *,
    max_features: int = 8000,
    num_threads: int = 1,
    workers: int | None = None,
    two_view_tracks: bool = True,
    progress: Callable[[], None] | None = None,
) -> tuple[PointCloud, dict]:
    """Triangulate each frame set ``frames[k]`` ({camera name: uint8 [H, W, 3]}) with ``cameras`` fixed.

    Cameras must be pinhole (undistorted) at the size of the images passed. Returns the points
    (time ``times[k]`` for those of frame set k) and stats (points, reprojection error mean and
    median in px, seconds, and ``pair_inliers``: geometrically verified matches per camera pair,
    summed over the frame sets). Too few points is the caller's call (see ``init_points``).

    ``num_threads`` defaults to 1 so that the same input gives the same points, as content-addressed
    artifacts promise: with more, SIFT extraction stores the images in the order the threads finish
    (other image ids, other match order) and the seeded RANSAC streams interleave differently, so
    repeated runs differ (demo scene, 2 threads: 6,844-6,850 points run to run; 1 thread: 6,849
    every time, 9.6 s instead of 7.9 s). Instead, ``workers`` threads (default: one per core, at
    most `MAX_WORKERS`, as each run holds its images and SIFT state) triangulate that many frame
    sets at once, each in its own database with its own seeded single-threaded COLMAP run, so the
    points are those of one frame set at a time (pycolmap lets go of the GIL: 6 demo frame sets
    12.9 -> 8.2 s on 2 cores, the same points). Ctrl-C lets the runs in progress finish first.

    ``progress`` is called once per frame set. ``two_view_tracks`` keeps points seen by only two cameras (COLMAP drops them by default). Rigs
    with few, widely spaced cameras (caliscope_4cam: 1 point without them) have almost nothing else;
    the 4 px reprojection filter still applies to them.
    """
    try:
        import pycolmap
    except ImportError:
        raise MissingDependencyError("pycolmap is not installed: pip install pycolmap==4.2.1 "
                                     "(or use --init carve or --init random)") from None
    if len(frames) != len(times):
        raise ValueError("one time per frame set")
    started = _time.perf_counter()
    by_name = {cam.name: cam for cam in cameras}
    clouds = []
    pair_inliers: dict[str, int] = {}
    pycolmap.logging.minloglevel = 2  # warnings and errors only: COLMAP's INFO lines would drown the progress bar
    n_workers = pool_size(len(frames), workers, MAX_WORKERS)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="colmap") as pool:
        jobs = [pool.submit(_triangulate_frame, pycolmap, by_name, images, float(t), max_features, num_threads,
                            two_view_tracks) for images, t in zip(frames, times)]
        try:
            results = _in_order(jobs, progress)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for k, ((cloud, pairs), t) in enumerate(zip(results, times)):
        log.debug("COLMAP frame set %d/%d (t=%.3f): %d points; verified matches per pair: %s",
                  k + 1, len(frames), t, len(cloud), ", ".join(f"{p} {n}" for p, n in sorted(pairs.items())) or "none")
        for pair, n in pairs.items():
            pair_inliers[pair] = pair_inliers.get(pair, 0) + n
        clouds.append(cloud)
    points = PointCloud.concat(clouds)
    stats = {**point_stats(points), "seconds": _time.perf_counter() - started, "pair_inliers": pair_inliers}
    return points, stats


def _in_order(jobs: list[Future], progress: Callable[[], None] | None) -> list:
    """The jobs' results in submission order, calling ``progress`` once per finished job."""
    results = []
    for job in jobs:
        results.append(job.result())
        if progress is not None:
            progress()
    return results


def _triangulate_frame(pycolmap, cameras: dict[str, Camera], images: dict[str, np.ndarray], t: float,
                       max_features: int, num_threads: int, two_view_tracks: bool
                       ) -> tuple[PointCloud, dict[str, int]]:
    if len(images) < 2:
        raise InputError(f"COLMAP initialisation needs at least 2 cameras, got {len(images)}")
    with tempfile.TemporaryDirectory(prefix="moegs_colmap_") as tmp:
        image_dir, db_path, out_dir = Path(tmp) / "images", Path(tmp) / "database.db", Path(tmp) / "sparse"
        image_dir.mkdir()
        out_dir.mkdir()
        for name, image in images.items():
            cam = cameras[name]
            if cam.has_distortion or cam.K[0, 1] != 0:
                raise InputError(f"camera {name}: COLMAP initialisation needs undistorted pinhole cameras without skew")
            if image.shape[:2] != (cam.height, cam.width):
                raise InputError(f"camera {name}: image is {image.shape[1]}x{image.shape[0]}, "
                                 f"camera {cam.width}x{cam.height}")
            iio.imwrite(image_dir / f"{name}.png", image)

        pycolmap.set_random_seed(0)  # RANSAC in matching/triangulation: same input, same points (one thread)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = num_threads
        extraction.sift.max_num_features = max_features
        pycolmap.extract_features(db_path, image_dir, image_names=[f"{n}.png" for n in images],
                                  camera_mode=pycolmap.CameraMode.PER_IMAGE, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)

        # Our intrinsics replace COLMAP's guesses before matching, so geometric verification uses them too.
        db = pycolmap.Database.open(db_path)
        try:
            db_images = db.read_all_images()
            for image in db_images:
                cam = cameras[Path(image.name).stem]
                db_cam = db.read_camera(image.camera_id)
                db_cam.params = [cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]]
                db_cam.has_prior_focal_length = True
                db.update_camera(db_cam)
        finally:
            db.close()

        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = num_threads
        pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)

        db = pycolmap.Database.open(db_path)
        try:
            db_cameras = {c.camera_id: c for c in db.read_all_cameras()}
            db_images = db.read_all_images()
            pair_ids, inliers = db.read_two_view_geometry_num_inliers()
        finally:
            db.close()
        stems = {image.image_id: Path(image.name).stem for image in db_images}
        pairs = {}
        for pair_id, n in zip(pair_ids, inliers):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            pairs["-".join(sorted((stems[a], stems[b])))] = int(n)
        rec = pycolmap.Reconstruction()
        for db_cam in db_cameras.values():
            rec.add_camera_with_trivial_rig(db_cam)
        for image in db_images:
            cam = cameras[Path(image.name).stem]
            im = pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id)
            rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(pycolmap.Rotation3d(cam.R), cam.t))
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = num_threads
        options.ba_global_function_tolerance = 1e-6  # STG/E-D3DGS point_triangulator setting
        options.triangulation.ignore_two_view_tracks = not two_view_tracks
        tri = pycolmap.triangulate_points(rec, db_path, image_dir, out_dir, clear_points=True, options=options,
                                          refine_intrinsics=False)

        pts = list(tri.points3D.values())
        if not pts:
            return PointCloud(np.zeros((0, 3)), np.zeros((0, 3)), [], [], []), pairs
        return PointCloud(
            np.array([p.xyz for p in pts]), np.array([p.color for p in pts]),
            np.array([p.error for p in pts]), np.array([p.track.length() for p in pts]), np.full(len(pts), t),
        ), pairs
