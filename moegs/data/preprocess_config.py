"""``PreprocessConfig``: every choice of ``moegs preprocess``, typed and validated in one place.

The CLI options, the config file's ``preprocess`` section, the stage and :func:`build_dataset` all
take this one object, so a bound is stated once (numeric limits beside their field with
:func:`moegs.config.bounded`, choices and cross-field rules in :meth:`PreprocessConfig.validate`,
both run on creation) instead of once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moegs.config import bounded, check_config
from moegs.errors import InputError

Format = Literal["n3v", "technicolor", "multiview"]
InitMethod = Literal["auto", "colmap", "carve", "random"]
INIT_METHODS: tuple[str, ...] = ("auto", "colmap", "carve", "random")
SIZE_MISMATCH: tuple[str, ...] = ("refuse", "keep", "scale", "crop")


@dataclass
class PreprocessConfig:
    """How to turn a capture into a dataset (the ``preprocess`` section of a config file)."""

    format: Format = "n3v"
    frame_start: int = bounded(0, ge=0)
    frame_stop: int | None = bounded(None, ge=1)
    downscale: float = bounded(1.0, ge=1.0)
    """Divide every image size by this (2 = half resolution, as usual for N3V); intrinsics follow."""
    max_width: int | None = bounded(None, ge=16)
    """Also cap each camera's width at this many pixels."""
    truncate: bool = False
    size_mismatch: Literal["refuse", "keep", "scale", "crop"] = "refuse"
    init: InitMethod = "auto"
    """Initial points: ``auto`` tries COLMAP, then carving, then points in the frusta' intersection."""
    colmap_frames: int = bounded(4, ge=1)
    """Frames, spread evenly over the clip, on which points are triangulated (each keeps its frame's time)."""
    colmap_new_content: bool = False
    """Of a later COLMAP frame keep only the points away from those kept before (mostly moving
    content, :func:`moegs.data.init_points.new_content`); False keeps every frame's points, the
    static background once per frame. Worth it with many frames (the demo: 12); with a few and a
    short schedule the repeated points are capacity the time-blind families use (tiny: -0.6 dB)."""
    foreground_seeds: int = bounded(0, ge=0)
    """Seeds wanted on each moving patch of a COLMAP frame (:mod:`moegs.data.foreground_seeds`): its
    triangulated depths spread over the frame's moving pixels; 0: only the triangulated points."""
    colmap_max_features: int = bounded(8000, ge=1)
    carve_frames: int = bounded(8, ge=1)
    """Frames, spread over the clip, whose foreground is carved into time-stamped points."""
    min_points: int = bounded(100, ge=1)
    """Fewer points than this and an init method counts as failed."""
    init_points: int = bounded(20_000, ge=1)
    """Most points any init writes (COLMAP and carving are subsampled, random init samples this many)."""
    test_cameras: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> PreprocessConfig:
        """Raise :class:`InputError` naming the first bad field; return ``self`` (also for configs changed after creation)."""
        check_config(self)
        if self.format not in ("n3v", "technicolor", "multiview"):
            raise InputError(f"unknown input format {self.format!r}; expected n3v, technicolor or multiview")
        if self.init not in INIT_METHODS:
            raise InputError(f"unknown init {self.init!r}; expected one of {', '.join(INIT_METHODS)}")
        if self.size_mismatch not in SIZE_MISMATCH:
            raise InputError(f"unknown size_mismatch {self.size_mismatch!r}; expected one of {', '.join(SIZE_MISMATCH)}")
        if self.frame_stop is not None and self.frame_stop <= self.frame_start:
            raise InputError(f"frame_stop ({self.frame_stop}) must be greater than frame_start ({self.frame_start})")
        if self.init_points < self.min_points:
            raise InputError(f"init_points ({self.init_points}) must be at least min_points ({self.min_points})")
        return self
