"""Differentiable 3D Gaussian Splatting rasteriser: one entry point, several backends.

``rasterize`` renders one Gaussian set, ``rasterize_multi`` renders K sets (experts) in one pass,
each with its own transmittance. Backends: ``torch`` (reference), ``cpu`` (numba, default without
CUDA), ``gsplat`` (CUDA, default with it), ``inria`` (diff_gaussian_rasterization).
"""

from moegs.raster.api import available_backends, rasterize, rasterize_multi, resolve_backend
from moegs.raster.structs import GaussianSet, MultiRasterOutput, RasterOutput

__all__ = [
    "GaussianSet",
    "MultiRasterOutput",
    "RasterOutput",
    "available_backends",
    "rasterize",
    "rasterize_multi",
    "resolve_backend",
]
