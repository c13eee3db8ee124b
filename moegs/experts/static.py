"""A static 3DGS fit (no motion model): the baseline every dynamic family must beat."""

from __future__ import annotations

from moegs.experts.base import Expert


class StaticExpert(Expert):
    """Plain 3DGS (Kerbl et al. 2023): the canonical Gaussians at every time."""

    family = "static"
    paper = "3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023)"
