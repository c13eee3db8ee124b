"""Expert settings chosen by the rig's shape, applied under whatever the user's config says.

A surround rig (4-8 cameras 50-140 degrees apart around the scene) sees each surface from two or
three views at most, and those far apart. ``random_background: true`` (as 3DGS's training script
offers): a closed room has no empty pixel, but a Gaussian set fitted against a fixed background
leaves gaps wherever few views constrain it, and they render as the background colour (black) in
a held-out view; a random colour each step makes every gap a loss. Measured on the tiny surround
preset (500 steps, polynomial): held-out view 17.54 -> 17.99 dB. ``sh_degree: 0`` was tried too and
changed nothing at 500 and 1000 steps (17.87 vs 17.84 dB), so it is not a default.

Forward-facing rigs keep the families' defaults.
"""

from __future__ import annotations

from typing import Any

from moegs.camera_path import RigShape, rig_shape
from moegs.cameras import Camera

RIG_EXPERT_DEFAULTS: dict[RigShape, dict[str, Any]] = {
    "forward": {},
    "surround": {"random_background": True},
}


def rig_expert_defaults(cameras: list[Camera]) -> tuple[RigShape, dict[str, Any]]:
    """The rig's shape and the expert settings it implies (a copy: callers may change it)."""
    shape = rig_shape(cameras)
    return shape, dict(RIG_EXPERT_DEFAULTS[shape])


def applied_defaults(defaults: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The defaults a user's family ``section`` does not set itself (recorded in the manifest)."""
    return {k: v for k, v in defaults.items() if k not in section}
