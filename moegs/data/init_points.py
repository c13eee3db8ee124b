"""Choosing the initial points of a dataset: COLMAP, then space carving, then the shared frusta.

``auto`` (the default) tries, in order, what gives the best points on the rig at hand:

1. COLMAP triangulation with the known poses, on frames spread over the clip (forward-facing
   rigs with textured, overlapping views: N3V, Technicolor). With ``colmap_new_content`` the first
   frame keeps all its points and a later frame only those farther than half the first frame's
   point spacing from every point kept before (:func:`new_content`): the static background is
   triangulated again at every frame, so what a later frame adds is, almost only, the moving
   content where it has gone (STG's "preprocesspoints" keeps the most isolated points of later
   frames for the same reason);
2. space carving (:mod:`moegs.data.carving`): sparse and surround rigs, where SIFT finds too few
   matches between views 50-140 degrees apart;
3. points sampled in the intersection of the training frusta, ``init_points`` of them, with a
   warning: the experts then start from nothing the cameras agree on.

On a surround rig (:func:`moegs.camera_path.rig_shape`) COLMAP's points, when there are enough,
sit on a few spots of the static background (views far apart match only there), so ``auto`` adds
the carved points: the foreground at its frames' times and the background (method ``colmap+carve``).
On forward-facing rigs the visual hull of a frame is a long cone along the viewing direction, so it
is not used there.

Every try is recorded (points, reprojection error, matches per camera pair, why it was rejected)
so the dataset manifest says which init was used and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from moegs.camera_path import rig_shape
from moegs.cameras import Camera
from moegs.data.carving import carve_points, frustum_samples, views_seeing
from moegs.data.colmap_init import PointCloud, colmap_points
from moegs.data.foreground_seeds import SeedSettings, foreground_seeds
from moegs.data.preprocess_config import PreprocessConfig
from moegs.errors import InputError, MoegsError

log = logging.getLogger("moegs")

CARVE_WIDTH = 256
"""Carving works on frames resized to at most this width (the voxel grid is coarser anyway)."""
BACKGROUND_FRAMES = 24
"""Frames per camera whose per-pixel median is the background."""

FrameReader = Callable[[str, int], np.ndarray]
"""(camera name, frame index) -> uint8 [H, W, 3] at the camera's size."""


@dataclass
class InitRecord:
    """Which init produced the points, why, and what every method tried gave (for the manifest)."""

    method: str = ""
    reason: str = ""
    tried: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"method": self.method, "reason": self.reason, "tried": self.tried}


def spread_indices(n_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``[0, n_frames)``, first and last included."""
    return sorted(set(np.linspace(0, n_frames - 1, min(count, n_frames)).round().astype(int).tolist()))


def initial_points(
    config: PreprocessConfig,
    cameras: list[Camera],
    n_frames: int,
    read_frame: FrameReader,
    *,
    num_threads: int = 1,
    on_colmap_frame: Callable[[], None] | None = None,
) -> tuple[PointCloud, InitRecord]:
    """Initial points for the training ``cameras`` per ``config.init``; time of a point = its frame's ``i / n_frames``.

    Raises :class:`InputError` naming every count when the requested method (or, for ``auto``,
    every method) fails.
    """
    record = InitRecord()
    order = ["colmap", "carve", "random"] if config.init == "auto" else [config.init]
    for method in order:
        try:
            points = _run(method, config, cameras, n_frames, read_frame, num_threads, on_colmap_frame, record)
        except MoegsError as exc:
            if config.init != "auto":
                raise
            record.tried[method] = {"error": str(exc)}
            continue
        if len(points) >= config.min_points:
            if method == "colmap" and config.init == "auto" and rig_shape(cameras) == "surround":
                points, method = _with_carving(points, config, cameras, n_frames, read_frame, record)
            record.method = method
            record.reason = _reason(method, config, record)
            if method == "random" and config.init == "auto":
                log.warning("initial points: %s", record.reason)
            else:
                log.info("initial points: %d from %s (%s)", len(points), method, record.reason)
            return points, record
        if config.init != "auto":
            raise InputError(f"init {method}: {_failure(method, record.tried[method], config.min_points)}")
        log.info("init %s: %s", method, _failure(method, record.tried[method], config.min_points))
    raise InputError("no initial points: " + "; ".join(
        f"{m}: {_failure(m, record.tried[m], config.min_points)}" for m in record.tried))


def _run(method: str, config: PreprocessConfig, cameras: list[Camera], n_frames: int, read_frame: FrameReader,
         num_threads: int, on_colmap_frame: Callable[[], None] | None, record: InitRecord) -> PointCloud:
    if method == "colmap":
        index = spread_indices(n_frames, config.colmap_frames)
        frames = [{c.name: read_frame(c.name, i) for c in cameras} for i in index]
        points, stats = colmap_points(cameras, frames, [i / n_frames for i in index],
                                      max_features=config.colmap_max_features, num_threads=num_threads,
                                      progress=on_colmap_frame)
        kept = new_content(points) if config.colmap_new_content else points
        record.tried["colmap"] = {**stats, "frames": index, "triangulated": len(points), "points": len(kept)}
        if config.foreground_seeds and len(points):
            seeds, seed_stats = foreground_seeds(cameras, read_frame, index, n_frames,
                                                 camera_backgrounds(cameras, n_frames, read_frame), points,
                                                 SeedSettings(per_patch=config.foreground_seeds))
            record.tried["colmap"]["foreground_seeds"] = seed_stats
            log.debug("foreground seeds per frame: %s", seed_stats["per_frame"])
            kept = PointCloud.concat([kept, _capped(seeds, config.init_points, seed_stats)])
        return kept
    if method == "carve":
        foreground, background, stats = _carve(config, cameras, n_frames, read_frame)
        record.tried["carve"] = stats
        return _capped(PointCloud.concat([foreground, background]), config.init_points, stats)
    points = frustum_points(cameras, config.init_points)
    record.tried["random"] = {"points": len(points)}
    return points


def camera_backgrounds(cameras: list[Camera], n_frames: int, read_frame: FrameReader) -> dict[str, np.ndarray]:
    """Each static camera's background, float [H, W, 3] in [0, 1]: the per-pixel median of
    :data:`BACKGROUND_FRAMES` frames spread over the clip (what moves is elsewhere most of the time)."""
    index = spread_indices(n_frames, BACKGROUND_FRAMES)
    return {cam.name: np.median(np.stack([read_frame(cam.name, i) for i in index]), axis=0).round().astype(np.float32) / 255.0
            for cam in cameras}


def new_content(points: PointCloud, radius_factor: float = 0.5, error_factor: float = 4.0) -> PointCloud:
    """The first time's points, and of each later time's only those farther than ``radius_factor``
    times the first time's median point spacing from every point kept before, and with a
    reprojection error at most ``error_factor`` times the first time's median.

    Times are the frame sets of a multi-frame triangulation (a point's ``time``); a static surface
    found again at a later frame lands on the points already kept and is dropped, a moved object is
    not. Isolated points are also where mismatches end up; the error bound drops most of those
    (demo scene, 4 frames: later points within 5 cm of a true surface 65% -> 81%, 91% of those on
    moving objects kept).
    """
    times = np.unique(points.time)
    if len(times) < 2:
        return points
    keep = points.time == times[0]
    first = points.xyz[keep]
    if len(first) < 2:
        return points
    spacing = float(np.median(cKDTree(first).query(first, k=2)[0][:, 1]))
    radius = radius_factor * spacing
    max_error = error_factor * float(np.median(points.error[keep]))
    for t in times[1:]:
        rows = np.flatnonzero((points.time == t) & (points.error <= max_error))
        distance, _ = cKDTree(points.xyz[keep]).query(points.xyz[rows], distance_upper_bound=radius)
        keep[rows[distance > radius]] = True  # inf where nothing kept lies within the radius
    return PointCloud(points.xyz[keep], points.rgb[keep], points.error[keep], points.track_len[keep], points.time[keep])


def _with_carving(points: PointCloud, config: PreprocessConfig, cameras: list[Camera], n_frames: int,
                  read_frame: FrameReader, record: InitRecord) -> tuple[PointCloud, str]:
    """COLMAP's points plus the carved foreground and background (surround rigs); COLMAP's alone if
    carving finds none. Views far apart let COLMAP triangulate only a few background spots, so the
    carved background stays too: without it most of the room starts empty."""
    foreground, background, stats = _carve(config, cameras, n_frames, read_frame)
    record.tried["carve"] = stats
    carved = PointCloud.concat([foreground, background])
    if len(carved) == 0:
        return points, "colmap"
    return PointCloud.concat([points, _capped(carved, config.init_points, stats)]), "colmap+carve"


def _carve(config: PreprocessConfig, cameras: list[Camera], n_frames: int,
           read_frame: FrameReader) -> tuple[PointCloud, PointCloud, dict]:
    """Carve on frames resized to :data:`CARVE_WIDTH`: (foreground, background, stats)."""
    small = [cam.scaled(min(1.0, CARVE_WIDTH / cam.width)) for cam in cameras]
    index = spread_indices(n_frames, BACKGROUND_FRAMES)
    frames = {}
    for cam, target in zip(cameras, small):
        frames[cam.name] = np.stack([_resized(read_frame(cam.name, i), target) for i in index])
    carve_at = sorted({min(range(len(index)), key=lambda k: abs(index[k] - i))
                       for i in spread_indices(n_frames, config.carve_frames)})
    foreground, background, stats = carve_points(small, frames, np.asarray(index) / n_frames, carve_at)
    stats["frames"] = [index[k] for k in carve_at]
    return foreground, background, stats


def _capped(points: PointCloud, cap: int, stats: dict) -> PointCloud:
    """A seeded random subset of ``cap`` points when there are more (recorded as ``kept``)."""
    if len(points) <= cap:
        return points
    keep = np.sort(np.random.default_rng(0).choice(len(points), cap, replace=False))
    stats["kept"] = cap
    return PointCloud(points.xyz[keep], points.rgb[keep], points.error[keep], points.track_len[keep], points.time[keep])


def _resized(image: np.ndarray, target: Camera) -> np.ndarray:
    if image.shape[:2] == (target.height, target.width):
        return image
    return np.asarray(Image.fromarray(image).resize((target.width, target.height), Image.Resampling.BOX))


def frustum_points(cameras: list[Camera], n: int, seed: int = 0) -> PointCloud:
    """``n`` points in the intersection of the cameras' frusta (seen by two or more between near and far).

    Colours are mid-grey with noise; time is 0.5, error 0 and track length 0 (not observed).
    Raises :class:`InputError` if no two cameras share any volume.
    """
    if n <= 0:
        raise InputError(f"random initialisation needs a positive point count, got {n}")
    for cam in cameras:
        if not 0 < cam.near < cam.far:
            raise InputError(f"camera {cam.name}: random initialisation needs 0 < near < far, got {cam.near}, {cam.far}")
    rng = np.random.default_rng(seed)
    need = min(2, len(cameras))
    found, total = [], 0
    for _ in range(20):
        batch = frustum_samples(cameras, max(2 * n // len(cameras), 1000), rng)
        batch = batch[views_seeing(cameras, batch) >= need]
        found.append(batch)
        total += len(batch)
        if total >= n:
            break
    xyz = np.concatenate(found)
    if len(xyz) < n:
        raise InputError(f"random initialisation: the {len(cameras)} training cameras share almost no volume "
                         f"between their near and far ({len(xyz)} of the points drawn are seen by {need} cameras)")
    xyz = xyz[rng.permutation(len(xyz))[:n]]
    rgb = np.clip(128 + rng.normal(0, 30, size=(n, 3)), 0, 255)
    return PointCloud(xyz, rgb, np.zeros(n), np.zeros(n), np.full(n, 0.5))


def _failure(method: str, stats: dict, min_points: int) -> str:
    if "error" in stats:
        return stats["error"]
    if method == "random":
        return f"{stats['points']} points (need {min_points})"
    if method == "colmap":
        pairs = stats.get("pair_inliers", {})
        best = max(pairs.values(), default=0)
        return (f"COLMAP triangulated {stats['points']} points on {len(stats['frames'])} frame(s) (need {min_points}); "
                f"best camera pair had {best} verified matches")
    return (f"carving found {stats.get('foreground_points', 0)} foreground and {stats.get('background_points', 0)} "
            f"background points (need {min_points})")


def _reason(method: str, config: PreprocessConfig, record: InitRecord) -> str:
    if config.init != "auto":
        return f"init {method} asked for"
    failed = [f"{m}: {_failure(m, record.tried[m], config.min_points)}" for m in record.tried if m != method]
    if method == "colmap":
        return "COLMAP triangulated enough points"
    if method == "colmap+carve":
        return ("COLMAP triangulated enough points; surround rig: carved points added (foreground at its "
                "frames' times, and the static background)")
    prefix = "; ".join(failed)
    if method == "carve":
        return f"{prefix}; carving found enough points"
    return f"{prefix}; falling back to {config.init_points} points in the shared frusta"


def record_stats(points: PointCloud, record: InitRecord) -> dict:
    """Manifest metrics of the chosen init: count, method, and COLMAP's reprojection error when it took part."""
    colmap = record.tried.get("colmap", {}) if record.method.startswith("colmap") else {}
    return {"points": len(points), "init": record.method,
            "reproj_error_mean": colmap.get("reproj_error_mean"),
            "reproj_error_median": colmap.get("reproj_error_median")}
