"""``PreprocessConfig``: every choice of ``moegs preprocess``, typed and validated in one place.

The CLI options, the config file's ``preprocess`` section, the stage and :func:`build_dataset` all
take this one object, so a bound is stated once (in :meth:`PreprocessConfig.validate`) instead of
once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moegs.errors import InputError

Format = Literal["n3v", "technicolor", "multiview"]
InitMethod = Literal["auto", "colmap", "carve", "random"]
INIT_METHODS: tuple[str, ...] = ("auto", "colmap", "carve", "random")


@dataclass
class PreprocessConfig:
    """How to turn a capture into a dataset (the ``preprocess`` section of a config file)."""

    format: Format = "n3v"
    frame_start: int = 0
    frame_stop: int | None = None
    downscale: float = 1.0
    """Divide every image size by this (2 = half resolution, as usual for N3V); intrinsics follow."""
    max_width: int | None = None
    """Also cap each camera's width at this many pixels."""
    truncate: bool = False
    size_mismatch: Literal["refuse", "scale", "crop"] = "refuse"
    init: InitMethod = "auto"
    """Initial points: ``auto`` tries COLMAP, then carving, then points in the frusta' intersection."""
    colmap_frames: int = 4
    """Frames, spread evenly over the clip, on which points are triangulated (each keeps its frame's time)."""
    colmap_max_features: int = 8000
    carve_frames: int = 8
    """Frames, spread over the clip, whose foreground is carved into time-stamped points."""
    min_points: int = 100
    """Fewer points than this and an init method counts as failed."""
    init_points: int = 20_000
    """Most points any init writes (COLMAP and carving are subsampled, random init samples this many)."""
    test_cameras: list[str] | None = None

    def validate(self) -> PreprocessConfig:
        """Raise :class:`InputError` naming the first bad field; return ``self`` for chaining."""
        if self.format not in ("n3v", "technicolor", "multiview"):
            raise InputError(f"unknown input format {self.format!r}; expected n3v, technicolor or multiview")
        if self.init not in INIT_METHODS:
            raise InputError(f"unknown init {self.init!r}; expected one of {', '.join(INIT_METHODS)}")
        if self.size_mismatch not in ("refuse", "scale", "crop"):
            raise InputError(f"unknown size_mismatch {self.size_mismatch!r}; expected refuse, scale or crop")
        if self.frame_start < 0:
            raise InputError(f"frame_start must be >= 0, got {self.frame_start}")
        if self.frame_stop is not None and self.frame_stop <= self.frame_start:
            raise InputError(f"frame_stop ({self.frame_stop}) must be greater than frame_start ({self.frame_start})")
        if not self.downscale >= 1.0:
            raise InputError(f"downscale is a divisor and must be >= 1 (2 = half resolution), got {self.downscale}")
        if self.max_width is not None and self.max_width < 16:
            raise InputError(f"max_width must be at least 16 pixels, got {self.max_width}")
        for name in ("colmap_frames", "carve_frames", "colmap_max_features", "min_points", "init_points"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_points < self.min_points:
            raise InputError(f"init_points ({self.init_points}) must be at least min_points ({self.min_points})")
        return self
