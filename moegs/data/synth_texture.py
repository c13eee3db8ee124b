"""Procedural textures for the synthetic scene, and bilinear lookup.

Textures are what COLMAP's SIFT and the photometric losses see, so they mix noise at several
scales (gradients everywhere) with sharp discs and rectangles (corners that triangulate well).
Colour varies slowly and luminance quickly: H.264's 4:2:0 chroma subsampling then costs little
PSNR, as with natural footage.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from moegs.data.synth_scene import Primitive
from moegs.errors import InputError

# Distinct hues for the six box faces (rigid motion must be visible from every side).
_FACE_COLOURS = np.array(
    [[0.7, 0.4, 0.35], [0.35, 0.5, 0.7], [0.7, 0.65, 0.35], [0.4, 0.65, 0.45], [0.6, 0.4, 0.65], [0.7, 0.55, 0.4]]
)


class Texture:
    """An RGB image laid over a primitive's uv range; ``sample`` maps world-unit uv to colour.

    ``wrap_u`` makes u periodic (the longitude of a sphere); otherwise lookups clamp to the edge.
    """

    def __init__(self, image: np.ndarray, texel_u: float, texel_v: float, wrap_u: bool) -> None:
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self.texel_u = texel_u
        self.texel_v = texel_v
        self.wrap_u = wrap_u

    def sample(self, uv: np.ndarray) -> np.ndarray:
        """Bilinear colour [N, 3] at uv [N, 2] (world units)."""
        h, w = self.image.shape[:2]
        col = uv[:, 0] / self.texel_u
        row = np.clip(uv[:, 1] / self.texel_v, 0.0, h - 1.0)
        if not self.wrap_u:
            col = np.clip(col, 0.0, w - 1.0)
        c0, r0 = np.floor(col), np.floor(row)
        fc, fr = (col - c0)[:, None], (row - r0)[:, None]
        c0, r0 = c0.astype(np.int64), r0.astype(np.int64)
        if self.wrap_u:
            c0, c1 = c0 % w, (c0 + 1) % w
        else:
            c1 = np.minimum(c0 + 1, w - 1)
        r1 = np.minimum(r0 + 1, h - 1)
        img = self.image
        top = img[r0, c0] * (1 - fc) + img[r0, c1] * fc
        bottom = img[r1, c0] * (1 - fc) + img[r1, c1] * fc
        return top * (1 - fr) + bottom * fr


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features about ``scale`` texels wide (cubic upsampling
    of coarse white noise: linear cost, unlike a wide Gaussian filter)."""
    coarse = rng.standard_normal((shape[0] // scale + 4, shape[1] // scale + 4))
    fine = zoom(coarse, scale, order=3)[: shape[0], : shape[1]]
    return (fine - fine.mean()) / fine.std()


def _stamp_shapes(
    rng: np.random.Generator, lum: np.ndarray, count: int, radius: tuple[float, float], levels: tuple[float, float]
) -> None:
    """Paint ``count`` random grey discs and axis-aligned rectangles (corner features) into ``lum``."""
    h, w = lum.shape
    for _ in range(count):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        level = rng.uniform(*levels)
        is_disc = rng.random() < 0.5
        ry = r if is_disc else r * rng.uniform(0.4, 1.6)
        y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        if y1 <= y0 or x1 <= x0:
            continue
        if is_disc:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            mask = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
            lum[y0:y1, x0:x1][mask] = level
        else:
            lum[y0:y1, x0:x1] = level


def _detail(rng: np.random.Generator, shape: tuple[int, int], scales: tuple[int, ...]) -> np.ndarray:
    return sum(_noise(rng, shape, s) for s in scales) / np.sqrt(len(scales))


def _hue(colours: np.ndarray) -> np.ndarray:
    """The chroma part of RGB colours: each minus its grey level, so adding it keeps luminance."""
    return colours - colours.mean(axis=-1, keepdims=True)


def make_texture(primitive: Primitive, rng: np.random.Generator) -> Texture:
    """Build the texture named by ``primitive.texture`` at ``primitive.texel`` resolution.

    Every style is a grey luminance layer (noise and shapes) plus a chroma layer that only changes
    at a few large edges.
    """
    u_extent, v_extent = primitive.uv_extent()
    shape = (int(np.ceil(v_extent / primitive.texel)) + 1, int(np.ceil(u_extent / primitive.texel)) + 1)
    area = shape[0] * shape[1]
    style = primitive.texture
    texel_u, wrap_u = primitive.texel, False
    if style == "rich":
        lum = 0.5 + 0.15 * _detail(rng, shape, (3, 8, 24))
        _stamp_shapes(rng, lum, area // 2500, (3.0, 30.0), (0.1, 0.9))
        chroma = _hue(np.stack([0.08 * _noise(rng, shape, 96) for _ in range(3)], axis=-1))
    elif style == "grey":
        lum = 0.55 + 0.15 * _detail(rng, shape, (3, 10))
        _stamp_shapes(rng, lum, area // 1500, (3.0, 14.0), (0.15, 0.9))
        chroma = np.zeros(shape + (3,))
    elif style == "faces":
        tile = shape[0] - 1
        face_colours = _FACE_COLOURS[np.minimum(np.arange(shape[1]) // tile, 5)]
        lum = face_colours.mean(axis=-1)[None, :] + 0.1 * _detail(rng, shape, (2, 6))
        _stamp_shapes(rng, lum, 6 * 12, (2.0, 9.0), (0.3, 0.75))
        chroma = np.broadcast_to(_hue(face_colours)[None], shape + (3,))
    elif style == "checker":
        # 8 x 4 squares in longitude x latitude: a whole number of periods around, so u wraps cleanly.
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1] - 1]
        parity = ((cols * 8 // (shape[1] - 1)) + (rows * 4 // (shape[0] - 1))) % 2
        lum = np.where(parity == 1, 0.8, 0.3)
        chroma = np.broadcast_to(_hue(np.array([0.75, 0.55, 0.3])), lum.shape + (3,))
        texel_u, wrap_u = u_extent / lum.shape[1], True
    elif style == "flag":
        bands = np.array([[0.7, 0.3, 0.3], [0.75, 0.75, 0.7], [0.3, 0.4, 0.65]])
        band = bands[np.minimum(np.arange(shape[0]) * 3 // shape[0], 2)]
        lum = band.mean(axis=-1)[:, None] + 0.1 * _detail(rng, shape, (2, 6))
        _stamp_shapes(rng, lum, area // 1200, (2.0, 10.0), (0.3, 0.75))
        chroma = np.broadcast_to(_hue(band)[:, None, :], shape + (3,))
    else:
        raise InputError(f"synthetic scene: unknown texture style {style!r} on {primitive.name!r}")
    return Texture(np.clip(lum[..., None] + chroma, 0.03, 0.97), texel_u, primitive.texel, wrap_u)
