"""Pictures people would rather look at than read: gate maps, labelled tiles, legends."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def expert_colors(k: int) -> np.ndarray:
    """K clearly different, saturated colours [K, 3] in [0, 1] (evenly spaced hues)."""
    return np.array([colorsys.hsv_to_rgb(i / k, 0.85, 0.95) for i in range(k)], dtype=np.float32)


def gate_map(gates: Tensor, colors: np.ndarray) -> np.ndarray:
    """Each pixel painted with the experts' colours blended by their gates: [K, H, W] -> uint8 [H, W, 3]."""
    blended = torch.einsum("khw,kc->hwc", gates.detach().cpu().float(), torch.as_tensor(colors))
    return to_uint8(blended)


def label_tile(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a uint8 image (on a dark box so it reads on any content)."""
    tile = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(tile)
    box = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(tile)


def legend_image(names: list[str], swatch: int = 18) -> np.ndarray:
    """A small legend: one colour swatch per expert with its family name."""
    colors = expert_colors(len(names))
    width = 16 + swatch + 8 * max(len(n) for n in names) + 16
    canvas = Image.new("RGB", (width, 8 + len(names) * (swatch + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(zip(names, colors)):
        y = 6 + i * (swatch + 6)
        draw.rectangle((8, y, 8 + swatch, y + swatch), fill=tuple(int(255 * c) for c in color))
        draw.text((16 + swatch, y + 3), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def tile_grid(tiles: list[np.ndarray], columns: int = 3) -> np.ndarray:
    """Equal-sized uint8 tiles laid out row by row, ``columns`` wide (empty cells black)."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return canvas
