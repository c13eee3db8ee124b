"""What render, bench, evaluation, prune and the viewer need from a model, expert or mixture alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from moegs.cameras import Camera
    from moegs.context import RenderContext


@dataclass
class Frame:
    """One rendered view: the image, and for a mixture each expert's image and the per-pixel gates."""

    image: Tensor  # [H, W, 3]
    expert_images: Tensor | None = None  # [K, H, W, 3]
    gates: Tensor | None = None  # [K, H, W]


@runtime_checkable
class Renderable(Protocol):
    """A trained model that draws any camera at any normalised time ``t`` in a context."""

    @property
    def families(self) -> list[str]:
        """The expert family of every component (one for a single expert)."""
        ...

    @property
    def num_gaussians(self) -> int:
        """All Gaussians the model renders."""
        ...

    def megabytes(self) -> float:
        """Stored size of the weights (float32)."""
        ...

    def render_frame(
        self, camera: Camera, t: float, ctx: RenderContext, *, rays: tuple[Tensor, Tensor] | None = None, cache: bool = True
    ) -> Frame:
        """The view of ``camera`` at ``t``; ``rays`` may be passed precomputed, ``cache=False`` times honestly."""
        ...

    def export_at(self, t: float) -> list[tuple[str, dict[str, Tensor]]]:
        """Standard 3DGS parameters at ``t``, one named set per component (for PLY export)."""
        ...
