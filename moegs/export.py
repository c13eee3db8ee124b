"""``moegs export``: an expert or MoE in formats that other viewers play.

- ``ply-sequence``: one standard 3DGS PLY per frame (INRIA layout, ``frame_00000.ply`` ...), the
  motion applied at that frame's time. SuperSplat plays such a folder as a sequence (it sorts by the
  trailing number). For a MoE, every frame holds all experts' Gaussians, each expert's opacities
  multiplied by its mean gate at that frame (the mean of the router's softmax weight over the test
  cameras' pixels): a static viewer has no per-pixel router, so this is the closest one set of
  Gaussians gets to the blend, not the blend itself.
- ``splatv``: the splaTV format (antimatter15): ``uint32 0x674b``, ``uint32`` JSON length, the JSON
  ``[{"type": "splat", "size", "texwidth", "texheight", "cameras"}]``, then an RGBA32UI texture of 64
  bytes per Gaussian. Its motion model is STG's (cubic position, linear rotation, temporal RBF
  opacity), so only the ``polynomial`` expert maps onto it, and it does so exactly (up to half floats);
  everything else is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moegs.artifacts import Artifact
from moegs.cameras import Camera
from moegs.chunked import ChunkedModel
from moegs.context import CPU, RenderContext
from moegs.data.dataset import Dataset
from moegs.errors import IncompatibleArtifactError, InputError
from moegs.experts.base import Expert
from moegs.gaussians import save_ply
from moegs.renderable import Renderable
from moegs.sh import sh0_to_rgb

log = logging.getLogger("moegs")

FORMATS = ("ply-sequence", "splatv")
SPLATV_MAGIC = 0x674B
SPLATV_TEXWIDTH = 4096
"""Texels per texture row: 1024 Gaussians of 4 RGBA32UI texels (the viewer indexes ``index >> 10``)."""
GATE_MAX_HEIGHT = 256
"""Mean gates are measured on the test cameras scaled to at most this height (a mean needs few pixels)."""
HALF_MAX = 65504.0


def export_model(model: Renderable, artifact: Artifact, dataset: Dataset, fmt: str, out: Path, *, force: bool = False,
                 ctx: RenderContext = CPU, on_frame: Callable[[int, int], None] | None = None) -> Path:
    """Write ``model`` (loaded from ``artifact``) as ``fmt`` to ``out`` (a folder for ply-sequence, a file for
    splatv), atomically: into ``<out>.partial`` first, renamed when complete."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to replace it")
    partial = out.with_name(out.name + ".partial")
    _remove(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "ply-sequence":
            write_ply_sequence(model, dataset, partial, ctx=ctx, on_frame=on_frame)
        else:
            write_splatv(splatv_expert(model, artifact), dataset.cameras, partial)
    except BaseException:
        _remove(partial)
        raise
    _remove(out)
    os.replace(partial, out)
    return out


# ---- ply-sequence ---------------------------------------------------------------------------------

def write_ply_sequence(model: Renderable, dataset: Dataset, directory: Path, *, ctx: RenderContext = CPU,
                       on_frame: Callable[[int, int], None] | None = None) -> list[Path]:
    """``frame_00000.ply`` ... one per frame of the dataset the model was trained on."""
    directory.mkdir(parents=True, exist_ok=True)
    times = dataset.times
    paths = []
    for i, t in enumerate(times):
        path = directory / f"frame_{i:05d}.ply"
        save_ply(path, frame_params(model, dataset, float(t), ctx=ctx))
        paths.append(path)
        if on_frame is not None:
            on_frame(i + 1, len(times))
    return paths


def frame_params(model: Renderable, dataset: Dataset, t: float, *, ctx: RenderContext = CPU) -> dict[str, Tensor]:
    """Standard 3DGS parameters of the model at time ``t`` (a MoE: all experts, opacity times mean gate)."""
    components = [params for _name, params in model.export_at(t)]
    if len(components) == 1:
        return components[0]
    weights = mean_gates(model, dataset, t, ctx=ctx)
    parts = [weighted_opacity(params, float(w)) for params, w in zip(components, weights)]
    rest = max(p["shN"].shape[1] for p in parts)
    for p in parts:  # experts of lower SH degree get zero higher bands: the same colours
        p["shN"] = torch.nn.functional.pad(p["shN"], (0, 0, 0, rest - p["shN"].shape[1]))
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def mean_gates(model: Renderable, dataset: Dataset, t: float, *, ctx: RenderContext = CPU) -> np.ndarray:
    """Each expert's router weight [K] at time ``t``, averaged over the test cameras' pixels."""
    cameras = dataset.test_cameras or dataset.cameras
    total = None
    for camera in cameras:
        small = camera.scaled(min(1.0, GATE_MAX_HEIGHT / camera.height))
        gates = model.render_frame(small, t, ctx, cache=False).gates  # [K, H, W]; each time is visited once
        means = gates.double().mean(dim=(1, 2)).cpu().numpy()
        total = means if total is None else total + means
    return total / len(cameras)


def weighted_opacity(params: dict[str, Tensor], weight: float) -> dict[str, Tensor]:
    """``params`` with every opacity multiplied by ``weight`` (in logit space, as the PLY stores it)."""
    opacity = (torch.sigmoid(params["opacity_logits"]) * weight).clamp(1e-7, 1 - 1e-7)
    return {**params, "opacity_logits": torch.log(opacity / (1 - opacity))}


# ---- splatv ---------------------------------------------------------------------------------------

def splatv_expert(model: Renderable, artifact: Artifact) -> Expert:
    """The expert a splatv file can hold, or the reason it cannot."""
    where = artifact.path
    if isinstance(model, ChunkedModel):
        chunks = ", ".join(str(artifact.resolve_input(e).path) for e in artifact.input_refs() if e["role"].startswith("chunk"))
        raise IncompatibleArtifactError(f"{where}: splatv holds one model over one time span, not a chunked one; export "
                                        f"each chunk ({chunks}) or use --format ply-sequence")
    if len(model.families) > 1:
        experts = [artifact.resolve_input(ref) for ref in artifact.input_refs("expert")]
        poly = [str(e.path) for e in experts if e.compat.get("family") == "polynomial"]
        hint = f"export its polynomial expert ({', '.join(poly)})" if poly else "export one expert"
        raise IncompatibleArtifactError(
            f"{where}: splatv holds one set of Gaussians with fixed opacities, so a MoE's per-pixel router "
            f"(or its per-frame gate weights) cannot be expressed; {hint} or use --format ply-sequence")
    (family,) = model.families
    if family != "polynomial":
        raise IncompatibleArtifactError(
            f"{where}: splatv stores STG's polynomial motion (cubic position, linear rotation, temporal RBF "
            f"opacity); a {family} expert moves its Gaussians differently, which splatv cannot express; "
            "use --format ply-sequence")
    return model  # a polynomial expert: its own per-Gaussian tensors are what splatv stores


def splatv_records(expert: Expert) -> np.ndarray:
    """[N, 16] uint32: one 64-byte texture record per Gaussian, as splaTV's shader reads it.

    Words 0-2 position (f32); 3-4 quaternion w, x, y, z (f16 pairs); 5-6 scales (exp, f16) and 0;
    7 RGBA8 (DC colour and opacity); 8-12 motion b1 xyz, b2 xyz, b3 xyz (f16) and 0; 13-14 omega
    (f16); 15 temporal centre and temporal scale exp(s_tau) (f16).
    """
    p = {key: value.detach().cpu().double() for key, value in expert.params.items()}
    n = p["means"].shape[0]
    if expert.config.sh_degree > 0:
        log.warning("splatv colour is RGB8 without view dependence: SH degree %d reduced to its DC term",
                    expert.config.sh_degree)
    rgba = np.empty((n, 4), dtype=np.float64)
    rgba[:, :3] = sh0_to_rgb(p["sh0"][:, 0, :]).numpy()
    rgba[:, 3] = torch.sigmoid(p["opacity_logits"]).numpy()
    rgba8 = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    halves = {
        "quats": p["quats"].numpy(),
        "scales": np.concatenate([np.exp(p["log_scales"].numpy()), np.zeros((n, 1))], axis=1),
        "motion": np.concatenate([p["motion"].reshape(n, 9).numpy(), np.zeros((n, 1))], axis=1),
        "omega": p["omega"].numpy(),
        "temporal": np.stack([p["t_center"].numpy(), np.exp(p["t_log_scale"].numpy())], axis=1),
    }
    for name, values in halves.items():
        worst = float(np.abs(values).max(initial=0.0))
        if not np.isfinite(worst) or worst > HALF_MAX:
            raise InputError(f"{name} of the polynomial expert reach {worst:.4g}, beyond splatv's half floats (65504)")
    records = np.zeros((n, 16), dtype=np.uint32)
    records[:, 0:3] = p["means"].numpy().astype(np.float32).view(np.uint32)
    records[:, 3:5] = _pack_halves(halves["quats"])
    records[:, 5:7] = _pack_halves(halves["scales"])
    records[:, 7] = rgba8.view(np.uint32)[:, 0]
    records[:, 8:13] = _pack_halves(halves["motion"])
    records[:, 13:15] = _pack_halves(halves["omega"])
    records[:, 15:16] = _pack_halves(halves["temporal"])
    return records


def splatv_cameras(cameras: list[Camera]) -> list[dict]:
    """splaTV's camera list (INRIA cameras.json style: camera-to-world rotation rows, centre, focals)."""
    return [{"id": i, "img_name": cam.name, "width": cam.width, "height": cam.height,
             "position": cam.center.tolist(), "rotation": cam.R.T.tolist(),
             "fx": float(cam.K[0, 0]), "fy": float(cam.K[1, 1])} for i, cam in enumerate(cameras)]


def write_splatv(expert: Expert, cameras: list[Camera], path: Path) -> None:
    """The whole file: magic, JSON length, JSON chunk list, then the texture (rows of 1024 Gaussians)."""
    records = splatv_records(expert)
    n = records.shape[0]
    per_row = SPLATV_TEXWIDTH // 4
    texheight = max(1, -(-n // per_row))
    texture = np.zeros((texheight * per_row, 16), dtype="<u4")
    texture[:n] = records
    header = [{"type": "splat", "size": int(texture.nbytes), "texwidth": SPLATV_TEXWIDTH, "texheight": texheight,
               "cameras": splatv_cameras(cameras)}]
    blob = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<II", SPLATV_MAGIC, len(blob)))
        f.write(blob)
        f.write(texture.tobytes())


def _pack_halves(values: np.ndarray) -> np.ndarray:
    """[N, 2M] floats -> [N, M] uint32, each word two IEEE halves (first in the low 16 bits, as packHalf2x16)."""
    h = np.ascontiguousarray(values, dtype=np.float64).astype(np.float16).view(np.uint16).astype(np.uint32)
    return h[:, 0::2] | (h[:, 1::2] << 16)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
