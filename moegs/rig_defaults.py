"""Expert and mixture settings chosen by the rig's shape, applied under whatever the user's config says.

A surround rig (4-8 cameras 50-140 degrees apart around the scene) sees each surface from two or
three views at most, and a held-out or novel view sees parts of the scene that no training camera
explains. Gaussians leave gaps there (alpha 0.84-0.93 where one training camera or none sees,
against 0.99 where two or more do, on the tiny surround preset with random training backgrounds;
0.59 against 0.90 trained over the mean colour), and a gap shows the background colour.
``background: mean``: the training views' mean colour, the least-squares guess for such a pixel,
instead of black.

Measured on the tiny surround preset (500 steps; held-out view above a flat image of each frame's
mean colour, best expert / MoE, over expert seeds 0-5): ``random_background`` (a random colour each
training step, so every gap costs loss; the earlier default) rendered over black 0.71-2.02 /
0.66-1.78 dB, the same rendered over the mean colour 1.72-2.63 / 1.74-2.13 dB, trained and
rendered over the mean colour 1.95-2.40 / 1.83-2.26 dB, now the default (plain black, seed 0 only:
polynomial 1.33 dB). ``sh_degree: 0`` changed nothing (17.87 vs 17.84 dB at 500 and 1000 steps),
so it is not a default.

Forward-facing rigs keep the families' defaults, sparse ones too: on the real 4-camera capture
(three training cameras, forward-facing; polynomial, 320 px, 12 frames) the mean colour gave 7.51
-> 9.41 dB at 1500 steps but 8.58 -> 7.88 at 3000 (a flat image: 10.44), no consistent effect.

A mixture trains its gates at ``tau`` 0.01 and, by design, renders at the same temperature; on a
surround rig it renders at the official test-time temperature 1.0 instead. The router learns from
the training views alone, where every expert fits well, so its sharpest choices there carry over
to a new viewpoint only in part, while softer gates also average the experts' independent errors;
the farther new views are from the training ones, the softer the best temperature. On a
forward-facing rig the official 1.0 costs 1.5 dB (the design's reason to keep the training tau),
but a slightly softer one helps: the demo preset sets ``render_tau: 0.05``.

Surround rigs, held-out view, MoE minus its best expert at tau 0.01 / 1.0: tiny preset, expert
seeds 0-5, -0.03 / +0.17, -0.12 / +0.28, -0.26 / -0.07, +0.04 / +0.37, -0.27 / +0.21, +0.07 / +0.23
dB (0.3: 0.05-0.1 dB less than 1.0; 3.0 and a plain average of the experts within 0.03 dB of it);
demo-size surround preset, one run, +0.19 / +0.91.

Forward-facing rigs, the demo's test view at tau 0.01 / 0.05 / 0.1 / 0.2 / 1.0 (one dataset):
31.92 / 32.08 / 32.21 / 32.16 / 30.43 dB, the fast ball 18.98 / 19.00 / 18.87 / 18.27; another
dataset 31.79 / 31.94 / 32.04 at 0.01 / 0.05 / 0.1. 0.05 lifts every region on both (0.1 costs the
fast ball 0.1 dB); the tiny demo, router and expert seeds 1-3, MoE minus its best expert +0.47 /
+0.46 / +0.60 at 0.01, +0.53 / +0.52 / +0.65 at 0.05.
"""

from __future__ import annotations

from typing import Any

from moegs.camera_path import RigShape, rig_shape
from moegs.cameras import Camera
from moegs.experts.base import MEAN_BACKGROUND

RIG_EXPERT_DEFAULTS: dict[RigShape, dict[str, Any]] = {
    "forward": {},
    "surround": {"background": MEAN_BACKGROUND},
}


RIG_RENDER_TAU: dict[RigShape, float | None] = {
    "forward": None,  # the training temperature (DESIGN.md: the same tau in training and evaluation)
    "surround": 1.0,  # the official test-time temperature
}


def rig_render_tau(cameras: list[Camera], train_tau: float) -> tuple[RigShape, float]:
    """The training cameras' rig shape and the temperature a mixture trained at ``train_tau`` renders
    at: the rig's, or ``train_tau`` where that is softer already (never sharper than training)."""
    shape = rig_shape(cameras)
    chosen = RIG_RENDER_TAU[shape]
    return shape, train_tau if chosen is None else max(train_tau, chosen)


def rig_expert_defaults(cameras: list[Camera]) -> tuple[RigShape, dict[str, Any]]:
    """The training cameras' rig shape and the expert settings it implies (a copy: callers may change it)."""
    shape = rig_shape(cameras)
    return shape, dict(RIG_EXPERT_DEFAULTS[shape])


def applied_defaults(defaults: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The defaults a user's family ``section`` does not set itself (recorded in the manifest)."""
    return {k: v for k, v in defaults.items() if k not in section}
