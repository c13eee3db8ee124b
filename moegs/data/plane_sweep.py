"""Dense points by plane-sweep stereo with the known cameras (sparse and surround rigs).

Space carving (:mod:`moegs.data.carving`) places points on a voxel grid: they are a voxel (about
1% of the room) off the surface, and a held-out view between cameras 50-140 degrees apart shows
every such error as a shifted texture. Static cameras give each view's background image (the
temporal median), and the known poses turn matching into a 1-D search: for every pixel of a
reference view, depths are swept in inverse depth and the neighbours' images (the backgrounds, or
the frames of one instant for its moving content) are compared with the reference by zero-mean
normalised cross-correlation (ZNCC, robust to the exposure differences of real rigs) over a small
window. A pixel keeps its best depth when

- the window is textured (flat colour matches at every depth);
- its best neighbours agree (the mean cost of the ``best_views`` best-matching neighbours, so a
  neighbour that does not see the point, or sees it occluded, does not veto it);
- another view's depth map puts the same surface there (geometric consistency, as in COLMAP's
  fusion): its point reprojects into a second view within ``consistency`` of that view's depth.

Points carry the reference image's colour.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moegs.cameras import Camera, distort_normalized, unproject

log = logging.getLogger("moegs")


@dataclass(frozen=True)
class SweepSettings:
    """Plane-sweep parameters (colours in [0, 1])."""

    depths: int = 192
    """Depth hypotheses per pixel, uniform in inverse depth over the range swept."""
    window: int = 5
    """Side of the ZNCC window, in pixels."""
    min_zncc: float = 0.8
    """Smallest mean ZNCC over the best views for a pixel to keep its depth."""
    best_views: int = 1
    """Neighbours whose costs are averaged at each depth (the best-matching ones)."""
    min_texture: float = 0.01
    """Smallest standard deviation of the reference window (grey levels in [0, 1])."""
    neighbours: int = 4
    """Views matched against each reference: those whose optical axes are closest to its own."""
    consistency: float = 0.005
    """Largest relative depth difference for another view's depth map to confirm a point."""


def sweep_depths(reference: Camera, neighbours: list[Camera], grey: dict[str, np.ndarray],
                 depth_range: tuple[float, float], settings: SweepSettings,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best depth [H, W] of every reference pixel (nan where unsure) and its mean ZNCC [H, W].

    ``grey[name]`` is a camera's image as float [H, W] in [0, 1]; ``depth_range`` (near, far)
    bounds the sweep; ``mask`` [H, W] (optional) limits it to those pixels (the sweep runs over
    their bounding box only: a frame's moving content is a small part of it).
    """
    h, w = reference.height, reference.width
    depth_map = np.full((h, w), np.nan)
    score_map = np.full((h, w), -1.0)
    rows, cols = _bounding_box(mask, settings.window) if mask is not None else (slice(0, h), slice(0, w))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return depth_map, score_map
    v, u = np.mgrid[rows, cols]
    ch, cw = v.shape
    uv = np.stack([u.ravel(), v.ravel()], axis=1) + 0.5
    ref_mean, ref_std = (x[rows, cols] for x in _window_stats(grey[reference.name], settings.window))
    ref = grey[reference.name][rows, cols]
    inverse = np.linspace(1.0 / depth_range[1], 1.0 / depth_range[0], settings.depths)
    costs = np.full((settings.depths, ch * cw), np.inf, dtype=np.float32)
    k = min(settings.best_views, len(neighbours))
    # a pixel's point at depth d is centre + d * ray; in a neighbour's frame that is base + d * step
    ray = unproject(reference, uv, np.ones(len(uv))) - reference.center
    frames = [(cam, (reference.center @ cam.R.T + cam.t)[:, None], np.ascontiguousarray((ray @ cam.R.T).T))
              for cam in neighbours]
    for i, inv in enumerate(inverse):
        per_view = np.full((len(neighbours), ch * cw), np.inf, dtype=np.float32)
        for j, (cam, base, step) in enumerate(frames):
            warped, valid = _warp(cam, grey[cam.name], base + step / inv)
            zncc = _zncc(ref, ref_mean, ref_std, warped.reshape(ch, cw), settings.window)
            ok = valid.reshape(ch, cw) & (ndimage.minimum_filter(valid.reshape(ch, cw).astype(np.uint8),
                                                                 settings.window) > 0)
            per_view[j] = np.where(ok, 1.0 - zncc, np.inf).ravel()
        costs[i] = per_view.min(axis=0) if k == 1 else np.partition(per_view, k - 1, axis=0)[:k].mean(axis=0)
    best = np.argmin(costs, axis=0)
    best_cost = costs[best, np.arange(ch * cw)]
    depth = 1.0 / _subsample(costs, best, inverse)
    sure = (best_cost <= 1.0 - settings.min_zncc) & (ref_std.ravel() >= settings.min_texture)
    sure &= (best > 0) & (best < settings.depths - 1)  # a minimum at the range's end is no minimum
    if mask is not None:
        sure &= mask[rows, cols].ravel()
    depth[~sure] = np.nan
    depth_map[rows, cols] = depth.reshape(ch, cw)
    score_map[rows, cols] = (1.0 - best_cost).reshape(ch, cw)
    return depth_map, score_map


def stereo_points(cameras: list[Camera], images: dict[str, np.ndarray], depth_range: dict[str, tuple[float, float]],
                  settings: SweepSettings = SweepSettings(),
                  masks: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """World points [M, 3] and colours uint8 [M, 3] of what two or more views see alike.

    ``images[name]`` is float [H, W, 3] in [0, 1] at camera ``name``'s size (a background, or the
    frames of one instant); ``depth_range[name]`` the (near, far) to sweep for it; ``masks[name]``
    (optional) the pixels to match (a frame's moving content). Returns (xyz, rgb, stats).
    """
    grey = {name: image.mean(axis=-1, dtype=np.float32) for name, image in images.items()}
    depths = {}
    for k, cam in enumerate(cameras):
        started = time.perf_counter()
        others = nearest_views(cam, cameras, settings.neighbours)
        depths[cam.name], _ = sweep_depths(cam, others, grey, depth_range[cam.name], settings,
                                           None if masks is None else masks[cam.name])
        log.debug("plane sweep: view %d/%d (%s) %.1f s, %d of %d pixels matched", k + 1, len(cameras), cam.name,
                  time.perf_counter() - started, int(np.isfinite(depths[cam.name]).sum()), depths[cam.name].size)
    xyz, rgb, per_view = [], [], {}
    for cam in cameras:
        d = depths[cam.name]
        v, u = np.nonzero(np.isfinite(d))
        points = unproject(cam, np.stack([u, v], axis=1) + 0.5, d[v, u])
        confirmed = np.zeros(len(points), dtype=bool)
        for other in cameras:
            if other.name != cam.name:
                confirmed |= _agrees(other, depths[other.name], points, settings.consistency)
        xyz.append(points[confirmed])
        rgb.append(images[cam.name][v[confirmed], u[confirmed]])
        per_view[cam.name] = {"matched": int(len(points)), "confirmed": int(confirmed.sum())}
    xyz_all = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    rgb_all = np.clip(np.concatenate(rgb) * 255.0, 0, 255).round().astype(np.uint8) if rgb else np.zeros((0, 3), np.uint8)
    return xyz_all, rgb_all, {"stereo_points": int(len(xyz_all)), "stereo_per_view": per_view}


def _bounding_box(mask: np.ndarray, window: int) -> tuple[slice, slice]:
    """Rows and columns around the mask's pixels, grown by the window's half-width (empty slices if none)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return slice(0, 0), slice(0, 0)
    pad = window // 2 + 1
    h, w = mask.shape
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)),
            slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)))


def nearest_views(reference: Camera, cameras: list[Camera], count: int) -> list[Camera]:
    """The ``count`` other cameras whose optical axes make the smallest angles with the reference's
    (a 20-camera rig would otherwise match every view against 19)."""
    others = [c for c in cameras if c.name != reference.name]
    return sorted(others, key=lambda c: -float(c.R[2] @ reference.R[2]))[:count]


def sweep_range(cam: Camera, lo: np.ndarray, hi: np.ndarray, margin: float = 0.2) -> tuple[float, float]:
    """(near, far) of the box ``lo``-``hi`` seen from ``cam``, widened by ``margin``, within the camera's own."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    depth = corners @ cam.R[2] + cam.t[2]
    near = max(cam.near, float(depth.min()) * (1.0 - margin))
    return near, max(min(cam.far, float(depth.max()) * (1.0 + margin)), 2.0 * near)


def _warp(cam: Camera, image: np.ndarray, x_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` [H, W] of ``cam`` sampled bilinearly where points at ``x_cam`` [3, N] (in its camera
    frame) project, and where they are inside it (what :meth:`Camera.project` computes, without the
    world step)."""
    depth = x_cam[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = x_cam[:2] / depth
    if cam.has_distortion:
        xy = distort_normalized(xy.T, cam.dist).T
    u = cam.K[0, 0] * xy[0] + cam.K[0, 1] * xy[1] + (cam.K[0, 2] - 0.5)  # pixel-centre coordinates
    v = cam.K[1, 1] * xy[1] + (cam.K[1, 2] - 0.5)
    h, w = image.shape
    valid = (depth > cam.near) & (u >= 0.0) & (u <= w - 1.0) & (v >= 0.0) & (v <= h - 1.0)
    u = np.where(valid, u, 0.0).astype(np.float32)
    v = np.where(valid, v, 0.0).astype(np.float32)
    col = np.minimum(u.astype(np.int64), w - 2) if w > 1 else np.zeros(len(u), np.int64)
    row = np.minimum(v.astype(np.int64), h - 2) if h > 1 else np.zeros(len(v), np.int64)
    fu, fv = u - col, v - row
    flat = image.ravel()
    top_left = row * w + col
    step_right = 1 if w > 1 else 0
    step_down = w if h > 1 else 0
    top = flat[top_left] * (1 - fu) + flat[top_left + step_right] * fu
    bottom = flat[top_left + step_down] * (1 - fu) + flat[top_left + step_down + step_right] * fu
    return top * (1 - fv) + bottom * fv, valid


def _window_stats(image: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    mean = ndimage.uniform_filter(image, window, mode="nearest")
    var = ndimage.uniform_filter(image * image, window, mode="nearest") - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def _zncc(ref: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray, other: np.ndarray, window: int) -> np.ndarray:
    other_mean, other_std = _window_stats(other, window)
    cov = ndimage.uniform_filter(ref * other, window, mode="nearest") - ref_mean * other_mean
    return cov / np.maximum(ref_std * other_std, 1e-6)


def _subsample(costs: np.ndarray, best: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Inverse depth at the cost minimum, refined by a parabola through it and its two neighbours."""
    n = np.arange(costs.shape[1])
    lo, hi = np.clip(best - 1, 0, len(inverse) - 1), np.clip(best + 1, 0, len(inverse) - 1)
    c0, c1, c2 = costs[lo, n], costs[best, n], costs[hi, n]
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = c0 - 2.0 * c1 + c2
        offset = np.where(np.isfinite(denom) & (denom > 1e-9), 0.5 * (c0 - c2) / denom, 0.0)
    step = inverse[1] - inverse[0] if len(inverse) > 1 else 0.0
    return inverse[best] + np.clip(offset, -0.5, 0.5) * step


def _agrees(cam: Camera, depth: np.ndarray, points: np.ndarray, tolerance: float) -> np.ndarray:
    """Points whose depth in ``cam`` is within ``tolerance`` (relative) of its depth map there."""
    uv, z = cam.project(points)
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
    out = np.zeros(len(points), dtype=bool)
    found = depth[row[inside], col[inside]]
    with np.errstate(invalid="ignore"):
        out[inside] = np.abs(found - z[inside]) <= tolerance * z[inside]
    return out
