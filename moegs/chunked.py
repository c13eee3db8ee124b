"""A long sequence as per-chunk models: one :class:`Renderable` over all frames of the dataset.

Each chunk model was trained on its own frames with local time ``i / len(chunk)``; this model takes
the whole sequence's time ``t = f / n_frames``, finds the chunk holding frame ``f`` and asks that
chunk's model for its local time, so render, bench and the viewer see one continuous model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from moegs.cameras import Camera
from moegs.context import RenderContext
from moegs.data.frame_range import FrameRange
from moegs.errors import IncompatibleArtifactError
from moegs.renderable import Frame, Renderable

FRAME_SNAP = 1e-3
"""A time within this many frames of a frame index is that frame (float32 times are not exact)."""


def check_tiling(ranges: Sequence[FrameRange], n_frames: int, names: Sequence[str]) -> None:
    """The ranges (sorted by start) must cover frames 0 .. n_frames - 1 once each, in order."""
    expected = 0
    for frames, name in zip(ranges, names):
        if frames.start > expected:
            raise IncompatibleArtifactError(
                f"chunks leave frames {expected}:{frames.start} uncovered (next chunk {frames} is {name})")
        if frames.start < expected:
            raise IncompatibleArtifactError(f"chunks overlap on frames {frames.start}:{expected} ({name} covers {frames})")
        expected = frames.stop
    if expected != n_frames:
        raise IncompatibleArtifactError(
            f"chunks leave frames {expected}:{n_frames} uncovered (the dataset has {n_frames} frames)")


class ChunkedModel:
    """Per-chunk models that tile the sequence; all of them stay loaded (a frame switch costs nothing)."""

    def __init__(self, parts: Sequence[tuple[FrameRange, Renderable]], n_frames: int) -> None:
        ranges = [frames for frames, _ in parts]
        check_tiling(ranges, n_frames, [str(r) for r in ranges])
        self.parts = list(parts)
        self.n_frames = n_frames

    @property
    def families(self) -> list[str]:
        return self.parts[0][1].families

    @property
    def num_gaussians(self) -> int:
        """Gaussians of every chunk (what is stored; one frame renders only its chunk's)."""
        return sum(model.num_gaussians for _, model in self.parts)

    def megabytes(self) -> float:
        return sum(model.megabytes() for _, model in self.parts)

    def locate(self, t: float) -> tuple[Renderable, float]:
        """The chunk model drawing sequence time ``t`` and the local time it knows that moment by."""
        position = min(max(t * self.n_frames, 0.0), self.n_frames - 1.0)
        frame = int(round(position))
        for frames, model in self.parts:
            if frames.start <= frame < frames.stop:
                if abs(position - frame) < FRAME_SNAP:  # exactly the time the chunk was trained with
                    return model, float(np.float32((frame - frames.start) / len(frames)))
                return model, (position - frames.start) / len(frames)
        raise AssertionError("unreachable: the chunks tile the sequence")

    def render_frame(self, camera: Camera, t: float, ctx: RenderContext, *,
                     rays: tuple[Tensor, Tensor] | None = None, cache: bool = True) -> Frame:
        model, local = self.locate(t)
        return model.render_frame(camera, local, ctx, rays=rays, cache=cache)

    def export_at(self, t: float) -> list[tuple[str, dict[str, Tensor]]]:
        model, local = self.locate(t)
        return model.export_at(local)
