"""Expert settings chosen by the rig's shape, applied under whatever the user's config says.

A surround rig (4-8 cameras 50-140 degrees apart around the scene) sees each surface from two or
three views at most, and those far apart. Two defaults of dense forward-facing captures fail there:

- ``sh_degree: 0``: view-dependent colour fitted to three views explains each view's own
  appearance with SH terms, which come out as wrong colours in between (sparse-view 3DGS work such
  as FSGS and DNGaussian trains low SH degrees for this reason);
- ``random_background: true``: a closed room has no empty pixel, but a Gaussian set fitted
  against a fixed background leaves gaps wherever few views constrain it; they render as the
  background colour in a held-out view. A random colour each step makes every gap a loss.

Forward-facing rigs keep the families' defaults.
"""

from __future__ import annotations

from typing import Any

from moegs.camera_path import RigShape, rig_shape
from moegs.cameras import Camera

RIG_EXPERT_DEFAULTS: dict[RigShape, dict[str, Any]] = {
    "forward": {},
    "surround": {"sh_degree": 0, "random_background": True},
}


def rig_expert_defaults(cameras: list[Camera]) -> tuple[RigShape, dict[str, Any]]:
    """The rig's shape and the expert settings it implies (a copy: callers may change it)."""
    shape = rig_shape(cameras)
    return shape, dict(RIG_EXPERT_DEFAULTS[shape])


def applied_defaults(defaults: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The defaults a user's family ``section`` does not set itself (recorded in the manifest)."""
    return {k: v for k, v in defaults.items() if k not in section}
