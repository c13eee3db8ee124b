"""The shared Gaussian core: parameters as a plain dict, activations, colour, PLY in/out, schedules.

Like gsplat, there is no ``GaussianModel`` class: a scene is ``dict[str, nn.Parameter]`` with the
raw (pre-activation) values below, and everything else (densification, experts, the router) is a
function of that dict. That keeps tensor surgery in one place (``moegs.densify``) and lets every
expert family share the same core.

Keys (N Gaussians, K = (sh_degree+1)^2 SH coefficients per channel):

- ``means``          [N, 3]     world positions
- ``log_scales``     [N, 3]     scale = exp(log_scales)
- ``quats``          [N, 4]     rotation, (w, x, y, z), raw (normalised on use)
- ``opacity_logits`` [N]        opacity = sigmoid(opacity_logits)
- ``sh0``            [N, 1, 3]  DC SH coefficient
- ``shN``            [N, K-1, 3] higher-order SH coefficients (K-1 may be 0)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from scipy.spatial import cKDTree
from torch import Tensor, nn

from moegs.errors import InputError
from moegs.sh import MAX_SH_DEGREE, eval_sh, num_sh_coeffs, rgb_to_sh0

PARAM_KEYS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")

Params = dict[str, nn.Parameter]


def init_from_points(
    xyz: Tensor | np.ndarray,
    rgb: Tensor | np.ndarray,
    sh_degree: int,
    init_opacity: float = 0.1,
    scale_factor: float = 1.0,
) -> Params:
    """Gaussians at the points ``xyz`` [M, 3] with colours ``rgb`` [M, 3] (float in [0, 1] or uint8).

    The isotropic initial scale is 3DGS's: sqrt of the mean squared distance to the 3 nearest
    neighbours (squared distances clamped >= 1e-7), so Gaussians roughly cover the gaps between
    points; ``scale_factor`` multiplies it. Rotation is the identity and higher SH are zero.
    """
    xyz_np = _as_numpy(xyz).astype(np.float64)
    rgb_np = _as_numpy(rgb)
    if xyz_np.ndim != 2 or xyz_np.shape[1] != 3:
        raise InputError(f"xyz must have shape [M, 3], got {xyz_np.shape}")
    if rgb_np.shape != xyz_np.shape:
        raise InputError(f"rgb must have the same shape as xyz {xyz_np.shape}, got {rgb_np.shape}")
    if xyz_np.shape[0] < 2:
        raise InputError(f"need at least 2 points to set initial scales, got {xyz_np.shape[0]}")
    if not 0.0 < init_opacity < 1.0:
        raise InputError(f"init_opacity must be in (0, 1), got {init_opacity}")
    if scale_factor <= 0.0:
        raise InputError(f"scale_factor must be > 0, got {scale_factor}")
    rgb_f = rgb_np.astype(np.float64) / 255.0 if rgb_np.dtype == np.uint8 else rgb_np.astype(np.float64)

    n = xyz_np.shape[0]
    k = min(4, n)
    dist, _ = cKDTree(xyz_np).query(xyz_np, k=k)
    sq = np.maximum(dist[:, 1:] ** 2, 1e-7)  # column 0 is the point itself
    scale = np.sqrt(sq.mean(axis=1)) * scale_factor

    f32 = torch.float32
    means = torch.from_numpy(xyz_np).to(f32)
    log_scales = torch.from_numpy(np.log(scale)).to(f32)[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4, dtype=f32)
    quats[:, 0] = 1.0
    opacity_logits = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)), dtype=f32)
    sh0 = rgb_to_sh0(torch.from_numpy(rgb_f).to(f32))[:, None, :]
    shN = torch.zeros(n, num_sh_coeffs(sh_degree) - 1, 3, dtype=f32)
    tensors = {"means": means, "log_scales": log_scales, "quats": quats, "opacity_logits": opacity_logits}
    return _as_params({**tensors, "sh0": sh0, "shN": shN})


def normalize_quats(q: Tensor) -> Tensor:
    """Unit quaternions (any leading shape, last dim 4); zero quaternions stay finite."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def activated(params: Params) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(means [N,3], unit quats [N,4] wxyz, scales [N,3], opacities [N]): what the rasteriser takes."""
    return (
        params["means"],
        normalize_quats(params["quats"]),
        torch.exp(params["log_scales"]),
        torch.sigmoid(params["opacity_logits"]),
    )


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (w, x, y, z; normalised here)."""
    w, x, y, z = normalize_quats(quats).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def sh_coeffs(params: Params) -> Tensor:
    """All SH coefficients [N, K, 3] (DC first), the layout ``eval_sh`` expects."""
    return torch.cat([params["sh0"], params["shN"]], dim=1)


def sh_degree_of(params: Params) -> int:
    """SH degree stored in ``params`` (from the number of coefficients)."""
    return _degree_from_coeffs(1 + params["shN"].shape[1])


def colors(params: Params, sh_degree_active: int, cam_center: Tensor, means: Tensor | None = None) -> Tensor:
    """View-dependent RGB [N, 3] seen from ``cam_center`` [3] using SH up to ``sh_degree_active``.

    ``means`` overrides ``params["means"]`` for dynamic experts whose Gaussians have been moved to
    time t: the viewing direction must come from where the Gaussian is drawn.
    """
    pos = params["means"] if means is None else means
    if sh_degree_active > sh_degree_of(params):
        raise InputError(f"active SH degree {sh_degree_active} exceeds the stored degree {sh_degree_of(params)}")
    dirs = pos - cam_center.to(pos).reshape(1, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return eval_sh(sh_degree_active, sh_coeffs(params), dirs)


def expon_lr(
    step: int,
    lr_init: float,
    lr_final: float,
    max_steps: int,
) -> float:
    """3DGS's log-linear learning-rate schedule from ``lr_init`` to ``lr_final`` over ``max_steps``."""
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if lr_init <= 0.0 or lr_final <= 0.0 or max_steps <= 0:
        raise InputError(f"need lr_init, lr_final, max_steps > 0, got {lr_init}, {lr_final}, {max_steps}")
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of a 3DGS PLY for ``sh_degree``, in the order viewers expect."""
    n_rest = 3 * (num_sh_coeffs(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def save_ply(path: str | Path, params: Params) -> None:
    """Write ``params`` as a binary 3DGS PLY (raw values, float32) that SuperSplat & co. open.

    ``f_rest`` is stored channel-major (all R coefficients, then G, then B) as 3DGS does; normals are
    zero. Raw values are stored, so float32 parameters round-trip bit-exactly.
    """
    _check_params(params)
    n = params["means"].shape[0]
    names = ply_property_names(sh_degree_of(params))
    with torch.no_grad():
        cols = torch.cat(
            [
                params["means"].reshape(n, 3),
                torch.zeros(n, 3, device=params["means"].device),
                params["sh0"].transpose(1, 2).reshape(n, -1),
                params["shN"].transpose(1, 2).reshape(n, -1),
                params["opacity_logits"].reshape(n, 1),
                params["log_scales"].reshape(n, 3),
                params["quats"].reshape(n, 4),
            ],
            dim=1,
        )
    data = cols.detach().to("cpu", torch.float32).numpy()
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(path))


def load_ply(path: str | Path, device: str | torch.device = "cpu") -> Params:
    """Read a 3DGS PLY written by us, INRIA 3DGS or compatible tools back into a params dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several unrelated types for a malformed file
        raise InputError(f"cannot read PLY {path}: {exc}") from exc
    if "vertex" not in ply:
        raise InputError(f"PLY {path} has no 'vertex' element")
    vert = ply["vertex"].data
    present = set(vert.dtype.names or ())
    n_rest = sum(1 for name in present if name.startswith("f_rest_"))
    if n_rest % 3:
        raise InputError(f"PLY {path}: {n_rest} f_rest properties is not a multiple of 3")
    degree = _degree_from_coeffs(1 + n_rest // 3, source=str(path))
    missing = [name for name in ply_property_names(degree) if name not in present and name not in ("nx", "ny", "nz")]
    if missing:
        raise InputError(f"PLY {path} is not a 3DGS file: missing properties {missing[:5]}")

    def cols(names: list[str]) -> Tensor:
        arr = np.zeros((len(vert), len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            arr[:, i] = vert[name]
        return torch.from_numpy(arr)

    n = len(vert)
    k = num_sh_coeffs(degree)
    tensors = {
        "means": cols(["x", "y", "z"]),
        "log_scales": cols([f"scale_{i}" for i in range(3)]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "opacity_logits": cols(["opacity"])[:, 0],
        "sh0": cols([f"f_dc_{i}" for i in range(3)]).reshape(n, 3, 1).transpose(1, 2),
        "shN": cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(1, 2),
    }
    return _as_params({key: t.contiguous().to(device) for key, t in tensors.items()})


def _as_params(tensors: dict[str, Tensor]) -> Params:
    return {key: nn.Parameter(tensors[key].contiguous()) for key in PARAM_KEYS}


def _check_params(params: Params) -> None:
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise InputError(f"Gaussian params lack keys {missing}")
    n = params["means"].shape[0]
    for key in PARAM_KEYS:
        if params[key].shape[0] != n:
            raise InputError(f"params[{key!r}] has {params[key].shape[0]} rows, means has {n}")


def _degree_from_coeffs(k: int, source: str = "params") -> int:
    degree = math.isqrt(k) - 1
    if (degree + 1) ** 2 != k or degree > MAX_SH_DEGREE:
        raise InputError(f"{source}: {k} SH coefficients per channel is not (d+1)^2 for d in 0..{MAX_SH_DEGREE}")
    return degree


def _as_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)

