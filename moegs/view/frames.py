"""What the viewer shows for one (camera, time, mode): a uint8 picture built from one model render.

All renders go through :func:`render_frame`, the viewer's single adapter to the model API
(:class:`moegs.renderable.Renderable`); besides it the viewer reads only ``model.families``. A model
with several components is a mixture: it offers its blend, each expert, the gate map and a grid.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from moegs.cameras import Camera
from moegs.context import CPU, RenderContext
from moegs.errors import InputError
from moegs.renderable import Frame, Renderable
from moegs.visuals import expert_colors, gate_map, label_tile, legend_image, tile_grid, to_uint8

BLEND = "blend"
GATES = "gates"
GRID = "grid"


def render_frame(model: Renderable, camera: Camera, t: float, ctx: RenderContext) -> Frame:
    """The model's image of ``camera`` at normalised time ``t`` (and, for a MoE, experts and gates)."""
    return model.render_frame(camera, t, ctx)


def view_modes(families: list[str]) -> list[str]:
    """The display modes of a model with these components: a mixture (several) has its blend, each expert,
    the gate map and a grid; a single expert its image and a grid (with the ground truth)."""
    experts = [expert_mode(k, family) for k, family in enumerate(families)]
    return [BLEND, *experts, GATES, GRID] if len(families) > 1 else [*experts, GRID]


def expert_mode(k: int, family: str) -> str:
    return f"expert {k}: {family}"


def render_view(model: Renderable, camera: Camera, t: float, mode: str, *, ctx: RenderContext = CPU,
                ground_truth: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] picture of ``mode`` (see :func:`view_modes`) for ``camera`` at time ``t``."""
    return compose(render_frame(model, camera, t, ctx), mode, model.families, ground_truth)


def compose(frame: Frame, mode: str, families: list[str], ground_truth: np.ndarray | None = None) -> np.ndarray:
    """Turn one model render into the picture of ``mode``; ``ground_truth`` (uint8, same size) joins the grid."""
    is_moe = frame.gates is not None
    if mode not in view_modes(families):
        raise InputError(f"unknown view mode {mode!r}; choose one of {', '.join(view_modes(families))}")
    if mode == BLEND:
        return to_uint8(frame.image)
    if mode.startswith("expert "):
        k = int(mode.split()[1].rstrip(":"))
        return to_uint8(frame.expert_images[k] if is_moe else frame.image)
    if mode == GATES:
        return gates_with_legend(frame, families)
    return expert_grid(frame, families, ground_truth)


def gates_with_legend(frame: Frame, families: list[str]) -> np.ndarray:
    """The gate map (each pixel in its experts' colours, mixed by gate) with the legend in the top-left corner."""
    image = gate_map(frame.gates, expert_colors(len(families)))
    legend = legend_image(families)
    h, w = image.shape[:2]
    scale = min(1.0, 0.5 * w / legend.shape[1], 0.5 * h / legend.shape[0])
    if scale < 1.0:
        size = (max(1, round(legend.shape[1] * scale)), max(1, round(legend.shape[0] * scale)))
        legend = np.asarray(Image.fromarray(legend).resize(size, Image.Resampling.BILINEAR))
    image[: legend.shape[0], : legend.shape[1]] = legend
    return image


def expert_grid(frame: Frame, families: list[str], ground_truth: np.ndarray | None = None) -> np.ndarray:
    """Labelled tiles: the ground truth when known, every expert, then the blend and the gate map (MoE)."""
    blend = to_uint8(frame.image)
    tiles = []
    if ground_truth is not None:
        if ground_truth.shape != blend.shape:
            raise InputError(f"ground truth is {ground_truth.shape}, the render {blend.shape}")
        tiles.append(label_tile(ground_truth, "ground truth"))
    if frame.gates is not None:
        tiles += [label_tile(to_uint8(img), family) for img, family in zip(frame.expert_images, families)]
        tiles += [label_tile(blend, "MoE"), label_tile(gate_map(frame.gates, expert_colors(len(families))), "gates")]
    else:
        tiles.append(label_tile(blend, families[0]))
    return tile_grid(tiles, columns=min(3, len(tiles)))


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 image resized (bilinear) to ``width x height``; returned unchanged when already that size."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
