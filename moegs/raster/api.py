"""The one entry point of the rasteriser: argument checks, backend choice, dispatch."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from moegs.errors import InputError, MissingDependencyError
from moegs.raster.pipeline import render_sets
from moegs.raster.structs import GaussianSet, MultiRasterOutput, RasterOutput
from moegs.raster.torch_backend import composite_torch

BACKENDS = ("torch", "cpu", "gsplat", "inria")
_CUDA_PACKAGES = {
    "gsplat": ("gsplat", "install it with: pip install 'moegs[cuda]' (gsplat==1.5.3, built on first use)"),
    "inria": (
        "diff_gaussian_rasterization",
        "install it with: pip install ./submodules/diff-gaussian-rasterization "
        "from a recursive clone of github.com/graphdeco-inria/gaussian-splatting",
    ),
}


@functools.cache
def _unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None when it can."""
    if name not in _CUDA_PACKAGES:
        return None
    module, hint = _CUDA_PACKAGES[name]
    if not torch.cuda.is_available():
        return f"backend '{name}' needs a CUDA device and torch sees none; use 'cpu' or 'torch' ({hint} on a GPU machine)"
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"backend '{name}' needs the package '{module}', which does not import ({exc}); {hint}"
    return None


def available_backends() -> list[str]:
    """The backends that can run on this machine."""
    return [b for b in BACKENDS if _unavailable_reason(b) is None]


def resolve_backend(name: str) -> str:
    """'auto' -> 'gsplat' with CUDA and gsplat, else 'cpu'; a named backend must be available."""
    if name == "auto":
        return "gsplat" if _unavailable_reason("gsplat") is None else "cpu"
    if name not in BACKENDS:
        raise InputError(f"unknown rasteriser backend '{name}'; choose one of auto, {', '.join(BACKENDS)}")
    reason = _unavailable_reason(name)
    if reason is not None:
        raise MissingDependencyError(reason)
    return name


def _renderer(name: str) -> Callable[..., MultiRasterOutput]:
    """The backend's render function, imported only when used (numba, CUDA packages)."""
    if name == "torch":
        return functools.partial(render_sets, composite=composite_torch)
    if name == "cpu":
        from moegs.raster.cpu_backend import composite_cpu
        from moegs.raster.cpu_binning import bin_tiles_cpu
        from moegs.raster.cpu_projection import project_gaussians_cpu

        return functools.partial(
            render_sets, composite=composite_cpu, project=project_gaussians_cpu, binner=bin_tiles_cpu
        )
    if name == "gsplat":
        from moegs.raster.gsplat_backend import render_gsplat

        return render_gsplat
    from moegs.raster.inria_backend import render_inria

    return render_inria


def _check_shape(name: str, x: object, shape: tuple[int | None, ...]) -> Tensor:
    """x must be a floating tensor of the given shape (None = any size)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise InputError(f"{name} must have shape {want}, got {list(x.shape)}")
    return x


def _check_sets(sets: Sequence[GaussianSet]) -> None:
    if len(sets) == 0:
        raise InputError("rasterize_multi needs at least one GaussianSet")
    ref = sets[0].means
    channels = None
    for k, s in enumerate(sets):
        if not isinstance(s, GaussianSet):
            raise InputError(f"sets[{k}] must be a GaussianSet, got {type(s).__name__}")
        n = _check_shape(f"sets[{k}].means", s.means, (None, 3)).shape[0]
        _check_shape(f"sets[{k}].quats", s.quats, (n, 4))
        _check_shape(f"sets[{k}].scales", s.scales, (n, 3))
        _check_shape(f"sets[{k}].opacities", s.opacities, (n,))
        feats = _check_shape(f"sets[{k}].features", s.features, (n, None))
        if feats.shape[1] < 1 or (channels is not None and feats.shape[1] != channels):
            raise InputError(f"sets[{k}].features has {feats.shape[1]} channels; all sets need the same C >= 1")
        channels = feats.shape[1]
        for field in ("means", "quats", "scales", "opacities", "features"):
            x = getattr(s, field)
            if x.dtype != ref.dtype or x.device != ref.device:
                raise InputError(
                    f"sets[{k}].{field} is {x.dtype} on {x.device}; expected {ref.dtype} on {ref.device} like sets[0].means"
                )


def rasterize_multi(
    sets: Sequence[GaussianSet],
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None = None,
    *,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    return_contrib: bool = False,
    contrib_weight: Tensor | None = None,
    retain_means2d_grad: bool = False,
) -> MultiRasterOutput:
    """Render K Gaussian sets in one pass over tiles, each composited with its own transmittance.

    viewmat [4, 4] world->camera (OpenCV), K [3, 3]; backgrounds [K, C], [C] or None (= 0);
    contrib_weight [K, H, W] (default 1) weights the per-Gaussian contribution when
    return_contrib is set. Equal to K separate ``rasterize`` calls (to float rounding).
    """
    _check_sets(sets)
    name = resolve_backend(backend)
    for what, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise InputError(f"{what} must be a positive int, got {v!r}")
    if not 0 < near < far:
        raise InputError(f"need 0 < near < far, got near={near}, far={far}")
    ref = sets[0].means
    n_sets, channels = len(sets), sets[0].features.shape[1]
    viewmat = _check_shape("viewmat", viewmat, (4, 4)).to(ref)
    K = _check_shape("K", K, (3, 3)).to(ref)
    if backgrounds is None:
        backgrounds = ref.new_zeros((n_sets, channels))
    elif isinstance(backgrounds, Tensor) and backgrounds.dim() == 1:
        backgrounds = _check_shape("backgrounds", backgrounds, (channels,)).to(ref).expand(n_sets, channels)
    else:
        backgrounds = _check_shape("backgrounds", backgrounds, (n_sets, channels)).to(ref)
    if not return_contrib:
        contrib_weight = None
    elif contrib_weight is None:
        contrib_weight = ref.new_ones((n_sets, height, width))
    else:
        contrib_weight = _check_shape("contrib_weight", contrib_weight, (n_sets, height, width)).to(ref)
    if name in ("gsplat", "inria") and (ref.device.type != "cuda" or ref.dtype != torch.float32):
        raise InputError(f"backend '{name}' needs float32 CUDA tensors, got {ref.dtype} on {ref.device}")

    return _renderer(name)(
        sets=sets,
        viewmat=viewmat,
        K=K,
        width=width,
        height=height,
        backgrounds=backgrounds,
        near=near,
        far=far,
        contrib_weight=contrib_weight,
        retain_means2d_grad=retain_means2d_grad,
    )


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    *,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    return_contrib: bool = False,
    contrib_weight: Tensor | None = None,
    retain_means2d_grad: bool = False,
) -> RasterOutput:
    """Render one set of activated Gaussians (3DGS semantics, gsplat conventions).

    means [N, 3], quats [N, 4] wxyz, scales [N, 3] > 0, opacities [N] in (0, 1), features [N, C];
    viewmat [4, 4] world->camera (OpenCV), K [3, 3]; background [C] or None (= 0);
    contrib_weight [H, W] (default 1).
    """
    if contrib_weight is not None:
        contrib_weight = _check_shape("contrib_weight", contrib_weight, (height, width))[None]
    if background is not None:
        background = _check_shape("background", background, (None,))
    out = rasterize_multi(
        [GaussianSet(means, quats, scales, opacities, features)],
        viewmat,
        K,
        width,
        height,
        background,
        near=near,
        far=far,
        backend=backend,
        return_contrib=return_contrib,
        contrib_weight=contrib_weight,
        retain_means2d_grad=retain_means2d_grad,
    )
    return RasterOutput(
        image=out.image[0],
        alpha=out.alpha[0],
        depth=out.depth[0],
        means2d=out.means2d[0],
        radii=out.radii[0],
        contrib=out.contrib[0] if out.contrib is not None else None,
    )
