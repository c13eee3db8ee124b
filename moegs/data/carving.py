"""Initial points by space carving with the known cameras, for rigs where feature matching fails.

Sparse and surround rigs (4-8 cameras 50-140 degrees apart) give SIFT too little overlap to
triangulate, but static calibrated cameras still say a lot about the scene:

- each camera's **background** is the per-pixel temporal median of frames spread over the clip;
- the moving **foreground** of a frame is where it differs from that background; a voxel whose
  projection is foreground in every camera that sees it belongs to the visual hull at that frame;
  plane-sweep stereo between that frame's views, on their foreground pixels and within the hull's
  depths, places points on its textured moving surfaces, and the hull's surface voxels fill in
  where stereo found nothing near (untextured parts); all are stamped with the frame's time;
- the static **background** surfaces come from plane-sweep stereo over the cameras' backgrounds
  (:mod:`moegs.data.plane_sweep`: dense, a few centimetres from the surface where a voxel is ten);
  where it confirms too few points (textureless or unmatched views), from voxels outside every
  hull whose (blurred) background colours agree across at least two textured views and that lie
  in front in those views (a z-buffer over the consistent voxels), i.e. one pass of
  photo-consistent space carving.

The voxel grid spans the intersection of the training frusta between each camera's near and far.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from moegs.cameras import Camera, unproject
from moegs.data.colmap_init import PointCloud
from moegs.data.plane_sweep import SweepSettings, stereo_points, sweep_range

log = logging.getLogger("moegs")

MIN_STEREO_POINTS = 300
"""Fewer confirmed stereo points than this and the background comes from the carved voxels instead."""


@dataclass(frozen=True)
class CarveSettings:
    """Thresholds of the carving (colours in [0, 1]); the defaults suit 8-bit video of textured scenes."""

    grid: int = 96
    """Voxels along the longest side of the volume."""
    foreground_threshold: float = 0.1
    """Max-channel difference from the background that counts as foreground."""
    consistency_threshold: float = 0.035
    """Largest colour standard deviation (at two blur scales) across three or more views for a background voxel."""
    two_view_threshold: float = 0.015
    """The same bound for voxels only two textured views agree on (two views are easily fooled)."""
    texture_threshold: float = 0.02
    """Smallest background gradient magnitude for a view to vouch for a voxel's colour."""
    hull_views: int = 3
    """Cameras that must see a voxel (all of them foreground) for it to join the visual hull (2 on smaller rigs)."""


def frustum_samples(cameras: list[Camera], n_per_camera: int, rng: np.random.Generator) -> np.ndarray:
    """Points [n_cameras * n, 3] uniform in pixel and in inverse depth inside each camera's frustum."""
    out = []
    for cam in cameras:
        uv = rng.uniform([0, 0], [cam.width, cam.height], size=(n_per_camera, 2))
        inv = rng.uniform(1.0 / cam.far, 1.0 / cam.near, size=n_per_camera)
        out.append(unproject(cam, uv, 1.0 / inv))
    return np.concatenate(out)


def views_seeing(cameras: list[Camera], xyz: np.ndarray) -> np.ndarray:
    """How many cameras see each point [N, 3] inside their image and between their near and far."""
    count = np.zeros(len(xyz), dtype=np.int32)
    for cam in cameras:
        uv, depth = cam.project(xyz)
        count += _inside(cam, uv, depth)
    return count


def shared_volume(cameras: list[Camera], min_views: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Box (lo, hi) holding 98% of the frustum samples seen by ``min_views`` cameras, or None if none are."""
    samples = frustum_samples(cameras, 20_000, rng)
    shared = samples[views_seeing(cameras, samples) >= min_views]
    if len(shared) < 50:
        return None
    return np.percentile(shared, 1, axis=0), np.percentile(shared, 99, axis=0)


def carve_points(
    cameras: list[Camera],
    frames: dict[str, np.ndarray],
    times: np.ndarray,
    carve_index: list[int],
    settings: CarveSettings = CarveSettings(),
    seed: int = 0,
    sweep: SweepSettings | None = SweepSettings(),
) -> tuple[PointCloud, PointCloud, dict]:
    """Foreground points at the frames ``carve_index``, and static background points.

    ``frames[name]`` is uint8 [S, h, w, 3]: S frames spread over the clip at the size of camera
    ``name`` in ``cameras`` (a small size is enough; the grid is coarser than the pixels).
    ``times[s]`` is frame s's normalised time. ``sweep`` None: no stereo (the foreground from the
    hull's surface voxels only, the background from the photo-consistent voxels).
    Returns (foreground, background, stats for the manifest).
    """
    rng = np.random.default_rng(seed)
    stats: dict = {"method": "carve", "grid": settings.grid}
    box = shared_volume(cameras, 2, rng)
    if box is None:
        stats.update(points=0, foreground_points=0, background_points=0, voxel_size=None)
        return PointCloud.empty(), PointCloud.empty(), stats
    centres, shape, voxel = _grid(*box, settings.grid)
    stats["voxel_size"] = voxel
    # Per camera: pixel index of every voxel (-1 outside), and its depth.
    pixels, depths = {}, {}
    seen = np.zeros(len(centres), dtype=np.int32)
    for cam in cameras:
        uv, depth = cam.project(centres)
        ok = _inside(cam, uv, depth)
        idx = np.full(len(centres), -1, dtype=np.int64)
        idx[ok] = np.floor(uv[ok, 1]).astype(np.int64) * cam.width + np.floor(uv[ok, 0]).astype(np.int64)
        pixels[cam.name], depths[cam.name] = idx, depth
        seen += ok
    covered = seen >= max(2, min(settings.hull_views, len(cameras)))

    images = {name: stack.astype(np.float32) / 255.0 for name, stack in frames.items()}
    backgrounds = {name: np.median(stack, axis=0) for name, stack in images.items()}

    fg_clouds, any_hull = [], np.zeros(len(centres), dtype=bool)
    fg_fraction, stereo_count = {}, 0
    for s in carve_index:
        votes = np.zeros(len(centres), dtype=np.int32)
        instant = {name: stack[s] for name, stack in images.items()}
        masks = {}
        for cam in cameras:
            masks[cam.name] = _foreground_mask(instant[cam.name], backgrounds[cam.name], settings.foreground_threshold)
            fg_fraction.setdefault(cam.name, []).append(float(masks[cam.name].mean()))
            votes += _gather(masks[cam.name].reshape(-1), pixels[cam.name], False)
        hull = covered & (votes == seen)
        any_hull |= hull
        surface = hull & ~_interior(hull.reshape(shape)).reshape(-1)
        if sweep is not None and surface.any():
            xyz, rgb = _foreground_stereo(cameras, instant, masks, pixels, depths, hull, voxel, sweep)
            fg_clouds.append(_cloud(xyz, rgb, np.full(len(xyz), times[s])))
            stereo_count += len(xyz)
            surface &= _away_from(centres, surface, xyz, 1.5 * voxel)
        if surface.any():
            colours = _median_colour(cameras, instant, pixels, surface)
            fg_clouds.append(_cloud(centres[surface], colours, np.full(int(surface.sum()), times[s])))
    stats["foreground_fraction"] = {name: float(np.mean(v)) for name, v in fg_fraction.items()}
    if sweep is not None:
        stats["foreground_stereo_points"] = stereo_count

    bg_xyz, bg_colours = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if sweep is not None:
        started = time.perf_counter()
        ranges = {c.name: sweep_range(c, *box) for c in cameras}
        bg_xyz, bg_colours, sweep_stats = stereo_points(cameras, backgrounds, ranges, sweep)
        stats.update(sweep_stats)
        bg_xyz, bg_colours = _one_per_cell(bg_xyz, bg_colours, voxel / 2)
        log.info("carving: stereo background %d points from %d views in %.1f s", len(bg_xyz), len(cameras),
                 time.perf_counter() - started)
    stats["background_method"] = "stereo" if len(bg_xyz) >= MIN_STEREO_POINTS else "voxels"
    if stats["background_method"] == "voxels":
        background = _background_voxels(cameras, backgrounds, pixels, depths, (seen >= 2) & ~any_hull, voxel, settings)
        bg_xyz, bg_colours = centres[background], _median_colour(cameras, backgrounds, pixels, background)
    bg_times = rng.choice(np.asarray(times)[carve_index], size=len(bg_xyz))
    foreground = PointCloud.concat(fg_clouds) if fg_clouds else PointCloud.empty()
    static = _cloud(bg_xyz, bg_colours, bg_times)
    stats.update(points=len(foreground) + len(static), foreground_points=len(foreground), background_points=len(static))
    log.debug("carving: %d foreground + %d background points (%s), voxel %.3g, foreground fractions %s",
              len(foreground), len(static), stats["background_method"], voxel, stats["foreground_fraction"])
    return foreground, static, stats


def _inside(cam: Camera, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    return ((depth >= cam.near) & (depth <= cam.far) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width)
            & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height))


def _grid(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """Voxel centres [V, 3] (C order over x, y, z), the grid shape and the voxel edge."""
    voxel = float((hi - lo).max() / n)
    counts = np.maximum(np.ceil((hi - lo) / voxel).astype(int), 1)
    axes = [lo[i] + voxel * (np.arange(counts[i]) + 0.5) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid, (int(counts[0]), int(counts[1]), int(counts[2])), voxel


def _gather(values: np.ndarray, index: np.ndarray, fill) -> np.ndarray:
    out = np.full(len(index), fill, dtype=values.dtype)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


def _foreground_mask(image: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels that differ from the background (opened against noise, then grown by a pixel)."""
    diff = np.abs(ndimage.gaussian_filter(image - background, sigma=(0.7, 0.7, 0))).max(axis=-1)
    mask = ndimage.binary_opening(diff > threshold)
    return ndimage.binary_dilation(mask)


def _interior(occupied: np.ndarray) -> np.ndarray:
    """Occupied voxels whose six neighbours are all occupied."""
    return ndimage.binary_erosion(occupied, border_value=0)


def _median_colour(cameras: list[Camera], images: dict[str, np.ndarray], pixels: dict[str, np.ndarray],
                   select: np.ndarray) -> np.ndarray:
    """Median over the cameras that see each selected voxel of its pixel colour (uint8 [M, 3])."""
    samples = np.full((len(cameras), int(select.sum()), 3), np.nan, dtype=np.float32)
    for k, cam in enumerate(cameras):
        idx = pixels[cam.name][select]
        ok = idx >= 0
        samples[k, ok] = images[cam.name].reshape(-1, 3)[idx[ok]]
    with np.errstate(all="ignore"):
        colour = np.nanmedian(samples, axis=0) if len(cameras) else np.zeros((0, 3))
    return np.clip(np.nan_to_num(colour, nan=0.5) * 255.0, 0, 255).round().astype(np.uint8)


def _background_voxels(cameras: list[Camera], backgrounds: dict[str, np.ndarray], pixels: dict[str, np.ndarray],
                       depths: dict[str, np.ndarray], candidates: np.ndarray, voxel: float,
                       settings: CarveSettings) -> np.ndarray:
    """Candidates whose colour agrees across textured views, in front in as many views as agree.

    Colours are compared at two blur scales (fine detail, and the context around it), since one
    pixel's colour matches many wrong depths along an epipolar line.
    """
    std = np.zeros(len(candidates), np.float32)
    for sigma in (1.0, 3.0):
        spread, views, textured = _colour_spread(cameras, backgrounds, pixels, candidates, sigma,
                                                 settings.texture_threshold)
        std = np.maximum(std, spread)
    agree = np.where(textured >= 3, std < settings.consistency_threshold, std < settings.two_view_threshold)
    consistent = candidates & (views >= 2) & (textured >= 2) & agree
    front = np.zeros(len(candidates), np.int32)
    for cam in cameras:
        idx, depth = pixels[cam.name], depths[cam.name]
        ok = consistent & (idx >= 0)
        zbuf = np.full(cam.width * cam.height, np.inf)
        np.minimum.at(zbuf, idx[ok], depth[ok])
        front[ok] += depth[ok] <= zbuf[idx[ok]] + 1.5 * voxel
    return consistent & (front >= np.minimum(textured, 3))


def _colour_spread(cameras: list[Camera], backgrounds: dict[str, np.ndarray], pixels: dict[str, np.ndarray],
                   candidates: np.ndarray, sigma: float, texture_threshold: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per voxel: largest channel std of the blurred colours across views, views seeing it, textured views."""
    n = len(candidates)
    total, total_sq = np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32)
    views, textured = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for cam in cameras:
        blurred = ndimage.gaussian_filter(backgrounds[cam.name], sigma=(sigma, sigma, 0))
        grad = np.hypot(*np.gradient(ndimage.gaussian_filter(backgrounds[cam.name].mean(axis=-1), 1.0)))
        idx = pixels[cam.name]
        ok = candidates & (idx >= 0)
        colour = blurred.reshape(-1, 3)[idx[ok]]
        total[ok] += colour
        total_sq[ok] += colour**2
        views[ok] += 1
        textured[ok] += grad.reshape(-1)[idx[ok]] > texture_threshold
    count = np.maximum(views, 1)[:, None]
    mean = total / count
    return np.sqrt(np.maximum(total_sq / count - mean**2, 0)).max(axis=1), views, textured


def _foreground_stereo(cameras: list[Camera], images: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                       pixels: dict[str, np.ndarray], depths: dict[str, np.ndarray], hull: np.ndarray, voxel: float,
                       sweep: SweepSettings) -> tuple[np.ndarray, np.ndarray]:
    """One instant's moving content by plane-sweep stereo between its frames, limited to each view's
    foreground pixels and to the depths of the hull voxels it sees (plus two voxels): points on the
    textured moving surfaces, a median 1.7 cm from the truth on the tiny surround preset where the
    hull's surface voxels are 5.5 cm off (the hull is an outer shell). A view that sees none of the
    hull matches nothing."""
    ranges, view_masks = {}, {}
    for cam in cameras:
        visible = hull & (pixels[cam.name] >= 0)
        if not visible.any():
            ranges[cam.name], view_masks[cam.name] = (cam.near, 2.0 * cam.near), np.zeros_like(masks[cam.name])
            continue
        depth = depths[cam.name][visible]
        near = max(cam.near, float(depth.min()) - 2 * voxel)
        ranges[cam.name] = (near, max(float(depth.max()) + 2 * voxel, 2.0 * near))
        view_masks[cam.name] = masks[cam.name]
    xyz, rgb, _ = stereo_points(cameras, images, ranges, sweep, view_masks)
    return _one_per_cell(xyz, rgb, voxel / 2)


def _away_from(centres: np.ndarray, select: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """``select`` [V] without the voxels within ``radius`` of any of ``points`` [M, 3]: the hull fills
    in only what stereo did not find (untextured moving parts)."""
    if len(points) == 0 or not select.any():
        return select
    distance, _ = cKDTree(points).query(centres[select], distance_upper_bound=radius)
    out = np.zeros_like(select)
    out[np.flatnonzero(select)[~np.isfinite(distance)]] = True
    return out


def _one_per_cell(xyz: np.ndarray, rgb: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """The first point of every ``cell``-sized cube that holds any. Each view finds the surfaces it
    shares with its neighbours, so stereo lays several slightly different copies of one surface; a
    copy per cell starts the experts from one layer (tiny surround preset, expert seeds 0-5, cell
    half a voxel: the mixture 0.02-0.33 dB below its best expert -> -0.02 to +0.51 above; a
    quarter voxel, or the cells' mean point, did no better)."""
    if len(xyz) == 0:
        return xyz, rgb
    _, first = np.unique(np.floor(xyz / cell).astype(np.int64), axis=0, return_index=True)
    first = np.sort(first)
    return xyz[first], rgb[first]


def _cloud(xyz: np.ndarray, rgb: np.ndarray, time: np.ndarray) -> PointCloud:
    n = len(xyz)
    return PointCloud(xyz, rgb, np.zeros(n), np.zeros(n), time)
