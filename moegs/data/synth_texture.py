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
    [[0.85, 0.35, 0.25], [0.25, 0.6, 0.85], [0.9, 0.8, 0.3], [0.35, 0.75, 0.4], [0.7, 0.4, 0.8], [0.9, 0.6, 0.35]]
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
    rng: np.random.Generator, image: np.ndarray, count: int, radius: tuple[float, float], grey: bool
) -> None:
    """Paint ``count`` random discs and axis-aligned rectangles (corner features) into ``image``."""
    h, w = image.shape[:2]
    for _ in range(count):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        level = rng.uniform(0.05, 0.95)
        colour = np.full(3, level) if grey else np.clip(level + rng.uniform(-0.12, 0.12, 3), 0.0, 1.0)
        is_disc = rng.random() < 0.5
        ry = r if is_disc else r * rng.uniform(0.4, 1.6)
        y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        if y1 <= y0 or x1 <= x0:
            continue
        if is_disc:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            mask = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
            image[y0:y1, x0:x1][mask] = colour
        else:
            image[y0:y1, x0:x1] = colour


def _detail(rng: np.random.Generator, shape: tuple[int, int], scales: tuple[int, ...]) -> np.ndarray:
    return sum(_noise(rng, shape, s) for s in scales) / np.sqrt(len(scales))


def make_texture(primitive: Primitive, rng: np.random.Generator) -> Texture:
    """Build the texture named by ``primitive.texture`` at ``primitive.texel`` resolution."""
    u_extent, v_extent = primitive.uv_extent()
    shape = (int(np.ceil(v_extent / primitive.texel)) + 1, int(np.ceil(u_extent / primitive.texel)) + 1)
    style = primitive.texture
    texel_u, wrap_u = primitive.texel, False
    if style == "rich":
        colour = np.stack([0.5 + 0.07 * _noise(rng, shape, 64) for _ in range(3)], axis=-1)
        image = colour * (1.0 + 0.3 * _detail(rng, shape, (3, 8, 24)))[..., None]
        _stamp_shapes(rng, image, shape[0] * shape[1] // 4000, (3.0, 30.0), grey=False)
    elif style == "grey":
        image = np.repeat((0.55 + 0.15 * _detail(rng, shape, (3, 10)))[..., None], 3, axis=-1)
        _stamp_shapes(rng, image, shape[0] * shape[1] // 1500, (3.0, 14.0), grey=True)
    elif style == "faces":
        tile = shape[0] - 1
        face = np.minimum(np.arange(shape[1]) // tile, 5)
        image = _FACE_COLOURS[face][None, :, :] * (1.0 + 0.2 * _detail(rng, shape, (2, 6)))[..., None]
        _stamp_shapes(rng, image, 6 * 12, (2.0, 9.0), grey=True)
    elif style == "checker":
        # 8 x 4 squares in longitude x latitude: a whole number of periods around, so u wraps cleanly.
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
        parity = ((cols * 8 // (shape[1] - 1)) + (rows * 4 // (shape[0] - 1))) % 2
        image = np.where(parity[..., None] == 1, [0.95, 0.55, 0.15], [0.12, 0.2, 0.55])
        image = image[:, :-1]
        texel_u, wrap_u = u_extent / image.shape[1], True
    elif style == "flag":
        bands = np.array([[0.8, 0.15, 0.2], [0.92, 0.9, 0.85], [0.15, 0.3, 0.7]])
        band = np.minimum(np.arange(shape[0]) * 3 // shape[0], 2)
        image = np.repeat(bands[band][:, None, :], shape[1], axis=1)
        image = image * (1.0 + 0.2 * _detail(rng, shape, (2, 6)))[..., None]
        _stamp_shapes(rng, image, shape[0] * shape[1] // 1200, (2.0, 10.0), grey=False)
    else:
        raise InputError(f"synthetic scene: unknown texture style {style!r} on {primitive.name!r}")
    return Texture(np.clip(image, 0.03, 0.97), texel_u, primitive.texel, wrap_u)
