"""The ``train_experts`` section: which families to train, and one settings mapping per registered
family (``hexplane: {iterations: 2000, densify: {stop: 1500}}``), checked by that family's config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moegs.config import bounded, build_config, check_config
from moegs.data.dataset import FRAME_CACHE_MB
from moegs.data.frame_range import check_frames_syntax
from moegs.evaluation import EVAL_FRAMES
from moegs.errors import InputError
from moegs.experts import DYNAMIC_FAMILIES, family_names, get_family
from moegs.experts.base import ExpertConfig


@dataclass
class _TrainExpertsSettings:
    families: list[str] = field(default_factory=lambda: list(DYNAMIC_FAMILIES))
    device: str = "auto"
    backend: str = "auto"
    checkpoint_every: int = bounded(500, ge=1)
    export_ply: bool = False
    frame_cache_mb: float = bounded(FRAME_CACHE_MB, ge=0.0)
    """Budget of the dataset's decoded frames (LRU; 0 turns it off)."""
    eval_frames: int = bounded(EVAL_FRAMES, ge=0)
    """Test frames scored after training, spread evenly (0 = every frame); the manifest lists them."""
    frames: list[int] | str | None = None
    """Train on dataset frames [START, STOP) only ("0:150" or [0, 150]; default all): one chunk of a long
    sequence, with its own local time. The range is part of each expert's id and manifest."""

    def __post_init__(self) -> None:
        check_config(self)
        check_frames_syntax(self.frames)
        if not self.families:
            raise InputError("no expert families requested (--experts)")
        for family in [*self.families, *family_names()]:
            family_config(self, family)  # every section is checked, requested or not


def family_config(cfg: Any, family: str, defaults: dict[str, Any] | None = None) -> ExpertConfig:
    """The typed config of ``family`` from its section of ``cfg`` over ``defaults`` (e.g. the rig's,
    :mod:`moegs.rig_defaults`); unknown family or key: InputError."""
    cls = get_family(family)
    return build_config(cls.config_class, {**(defaults or {}), **getattr(cfg, family)}, prefix=f"{family}.")


TrainExpertsConfig = dataclasses.make_dataclass(
    "TrainExpertsConfig",
    [(name, dict[str, Any], field(default_factory=dict)) for name in family_names()],
    bases=(_TrainExpertsSettings,),
    namespace={"__doc__": __doc__, "__module__": __name__},
)
