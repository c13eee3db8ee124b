"""Frame ranges of a dataset: the chunks a long sequence is trained in.

MoE-GS and STG train N3V's 300 frames as two 150-frame models for GPU memory. A chunk here is a
view of the dataset: frame ``i`` of the chunk is dataset frame ``start + i``, and its time is
local, ``t_i = i / (stop - start)``, so every expert family sees an ordinary sequence (its time
resolution, keyframes and progressive schedule all span the chunk) and never a frame outside it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moegs.artifacts import Artifact
from moegs.data.colmap_init import PointCloud
from moegs.data.dataset import Dataset, normalised_times
from moegs.errors import IncompatibleArtifactError, InputError


@dataclass(frozen=True)
class FrameRange:
    """Dataset frames ``start`` .. ``stop - 1``."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"{self.start}:{self.stop}"

    def as_list(self) -> list[int]:
        """The JSON form kept in configs and manifests."""
        return [self.start, self.stop]


def parse_frames(value: str | list[int] | tuple[int, ...] | None, n_frames: int, what: str = "frames") -> FrameRange:
    """``"START:STOP"`` (either side may be left out), ``[START, STOP]`` or None (all frames),
    checked against a dataset of ``n_frames`` frames."""
    if value is None:
        return FrameRange(0, n_frames)
    if isinstance(value, str):
        start_text, sep, stop_text = value.partition(":")
        try:
            if not sep:
                raise ValueError
            start = int(start_text) if start_text.strip() else 0
            stop = int(stop_text) if stop_text.strip() else n_frames
        except ValueError:
            raise InputError(f"{what} {value!r}: expected START:STOP, e.g. 0:150") from None
    elif len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        start, stop = value
    else:
        raise InputError(f"{what} {value!r}: expected [START, STOP], e.g. [0, 150]")
    if not 0 <= start < stop <= n_frames:
        raise InputError(f"{what} {start}:{stop}: not a non-empty range of the dataset's {n_frames} frames (0:{n_frames})")
    return FrameRange(start, stop)


def check_frames_syntax(value: Any, what: str = "frames") -> None:
    """Fail early (at config time, before the dataset is known) on a malformed range."""
    if value is not None:
        parse_frames(value, n_frames=2**62, what=what)


def chunk_ranges(n_frames: int, chunk_frames: int) -> list[FrameRange]:
    """Consecutive chunks of ``chunk_frames`` covering ``n_frames`` (the last one may be shorter)."""
    if chunk_frames < 1:
        raise InputError(f"--chunk-frames {chunk_frames}: must be at least 1")
    return [FrameRange(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def frames_of(artifact: Artifact) -> FrameRange:
    """The dataset frames a model covers (artifacts from before chunking cover all of them)."""
    frames = artifact.compat.get("frames")
    if frames is None:
        return FrameRange(0, int(artifact.compat["n_frames"]))
    return FrameRange(int(frames[0]), int(frames[1]))


def dataset_frames(dataset: Dataset) -> FrameRange:
    """Which frames of the stored sequence ``dataset`` holds (all of them unless it is a chunk)."""
    return FrameRange(dataset.frame_offset, dataset.frame_offset + dataset.n_frames)


def select_frames(dataset: Dataset, frames: FrameRange) -> Dataset:
    """The chunk ``frames`` of a whole dataset: local frame indices and local times; frame stores and
    the frame cache are shared. Initial points keep their geometry, their times move into the chunk."""
    if dataset.frame_offset != 0:
        raise ValueError("select_frames takes a whole dataset, not a chunk")
    if frames == FrameRange(0, dataset.n_frames):
        return dataset
    chunk = copy.copy(dataset)
    chunk.frame_offset = frames.start
    chunk.n_frames = len(frames)
    chunk.times = normalised_times(len(frames))
    chunk.source_frames = dataset.source_frames[frames.start:frames.stop]
    chunk._points = chunk_points(dataset.points, frames, dataset.n_frames)
    return chunk


def chunk_points(points: PointCloud, frames: FrameRange, n_frames: int) -> PointCloud:
    """Point times ``f / n_frames`` of the whole sequence as local chunk times, clamped into the chunk
    (points seen before it start at its first frame, points seen after it at its last)."""
    local = (points.time * n_frames - frames.start) / len(frames)
    local = np.clip(local, 0.0, (len(frames) - 1) / len(frames)).astype(np.float32)
    return PointCloud(points.xyz, points.rgb, points.error, points.track_len, local)



def require_same_frames(artifacts: Sequence[Artifact], what: str, hint: str = "") -> FrameRange:
    """All artifacts must cover the same dataset frames; the refusal names both ranges and both paths."""
    first = frames_of(artifacts[0])
    for other in artifacts[1:]:
        frames = frames_of(other)
        if frames != first:
            raise IncompatibleArtifactError(f"{what} cover different frames: {first} ({artifacts[0].path}) vs {frames} "
                                            f"({other.path}){hint}")
    return first
