"""Expert settings chosen by the rig's shape, applied under whatever the user's config says.

A surround rig (4-8 cameras 50-140 degrees apart around the scene) sees each surface from two or
three views at most, and those far apart. ``random_background: true`` (as 3DGS's training script
offers): a closed room has no empty pixel, but a Gaussian set fitted against a fixed background
leaves gaps wherever few views constrain it, and they render as the background colour (black) in
a held-out view; a random colour each step makes every gap a loss. Measured on the tiny surround
preset (500 steps, polynomial): held-out view 17.54 -> 17.99 dB. ``sh_degree: 0`` was tried too and
changed nothing at 500 and 1000 steps (17.87 vs 17.84 dB), so it is not a default.

``background``: the training views' mean colour. Random backgrounds leave training unaffected by
it, but a held-out view still has pixels no training camera explains (alpha 0.84-0.93 where one
camera or none sees, against 0.99 where two or more do), and the scene's mean colour is a far
better guess there than black: on the tiny surround preset, the same experts' held-out view
rose by 0.6-1.0 dB (polynomial seed 4: 16.92 -> 17.94 dB, seed 1: 18.22 -> 18.83).

Forward-facing rigs keep the families' defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moegs.camera_path import RigShape, rig_shape
from moegs.cameras import Camera

RIG_EXPERT_DEFAULTS: dict[RigShape, dict[str, Any]] = {
    "forward": {},
    "surround": {"random_background": True},
}


def rig_expert_defaults(
    cameras: list[Camera], mean_colour: Callable[[], list[float]]
) -> tuple[RigShape, dict[str, Any]]:
    """The rig's shape and the expert settings it implies (a new dict: callers may change it).
    ``mean_colour`` (the training views' mean RGB) is called only for a rig that needs it."""
    shape = rig_shape(cameras)
    defaults = dict(RIG_EXPERT_DEFAULTS[shape])
    if shape == "surround":
        defaults["background"] = [round(float(c), 3) for c in mean_colour()]
    return shape, defaults


def applied_defaults(defaults: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The defaults a user's family ``section`` does not set itself (recorded in the manifest)."""
    return {k: v for k, v in defaults.items() if k not in section}
