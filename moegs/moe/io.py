"""A MoE artifact on disk: frozen experts + router.

Payload: ``router.safetensors`` (gate tables per expert + decoder) and, for a pruned MoE,
``experts/<k>.safetensors`` holding expert k's remaining Gaussians (an unpruned MoE reads the
weights from the expert artifacts it references, so nothing is copied).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moegs.artifacts import Artifact, require_same
from moegs.context import RenderContext
from moegs.data.frame_range import require_same_frames
from moegs.errors import IncompatibleArtifactError, InputError
from moegs.experts import get_family
from moegs.experts.base import Expert, config_from_dict
from moegs.experts.io import WEIGHTS, load_expert
from moegs.moe.model import MoEModel
from moegs.moe.render import DEFORMED_CACHE_MB, FrozenExperts
from moegs.moe.router import PixelRouter

ROUTER = "router.safetensors"


def check_mixable(experts: list[Artifact]) -> str:
    """Experts can be mixed only when trained on the same frames of the same dataset; returns that dataset id."""
    if len(experts) < 2:
        raise InputError(f"a mixture needs at least 2 experts, got {len(experts)}")
    for artifact in experts:
        if artifact.kind != "expert":
            raise IncompatibleArtifactError(f"{artifact.path}: expected an expert artifact, found {artifact.kind}")
    require_same(experts, "dataset_id", "experts")
    require_same_frames(experts, "experts", "; a router mixes the experts of one frame range (train one router per chunk)")
    require_same(experts, "n_frames", "experts")
    return experts[0].compat["dataset_id"]


def router_tensors(router: PixelRouter) -> dict[str, torch.Tensor]:
    """The router as flat host tensors (safetensors-ready)."""
    out = {}
    for k in range(router.num_experts):
        out[f"gates.{k}"] = router.gates[k].detach().cpu().contiguous()
        out[f"time_coefs.{k}"] = router.time_coefs[k].detach().cpu().contiguous()
    out.update({f"decoder.{k}": v.detach().cpu().contiguous() for k, v in router.decoder.state_dict().items()})
    out["gate_background"] = router.gate_background.detach().cpu().contiguous()
    return out


def save_router(router: PixelRouter, directory: Path) -> None:
    save_file(router_tensors(router), str(Path(directory) / ROUTER))


def save_pruned_experts(experts: list[Expert], directory: Path) -> None:
    target = Path(directory) / "experts"
    target.mkdir(parents=True, exist_ok=True)
    for k, expert in enumerate(experts):
        save_file(expert.state_tensors(), str(target / f"{k}.safetensors"))


def load_router(path: Path, num_experts: int) -> PixelRouter:
    tensors = load_file(str(path))
    counts = [tensors[f"gates.{k}"].shape[0] for k in range(num_experts)]
    router = PixelRouter(counts)
    for k in range(num_experts):
        router.gates[k].data.copy_(tensors[f"gates.{k}"])
        router.time_coefs[k].data.copy_(tensors[f"time_coefs.{k}"])
    router.decoder.load_state_dict({k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")})
    if "gate_background" in tensors:  # routers written before 0.3.0 have the paper's background of 1
        background = tensors["gate_background"]
        if background.shape != router.gate_background.shape:
            raise IncompatibleArtifactError(f"{path}: gate_background has shape {list(background.shape)}, "
                                            f"expected {list(router.gate_background.shape)} (one row per expert)")
        router.gate_background.copy_(background)
    return router


def load_moe(artifact: Artifact, ctx: RenderContext, tau: float | None = None,
             cache_mb: float = DEFORMED_CACHE_MB) -> MoEModel:
    """Rebuild experts (pruned weights if the MoE carries them) and router on the context's device;
    ``tau`` overrides the stored temperature; ``cache_mb`` bounds the deformed-Gaussian cache."""
    if artifact.kind != "moe":
        raise IncompatibleArtifactError(f"{artifact.path}: expected a moe artifact, found {artifact.kind}")
    expert_artifacts = [artifact.resolve_input(entry) for entry in artifact.input_refs("expert")]
    experts = []
    for k, expert_artifact in enumerate(expert_artifacts):
        embedded = artifact.file(f"experts/{k}.safetensors")
        if embedded.is_file():
            config = dict(expert_artifact.config)
            cls = get_family(config.pop("family"))
            expert = cls.from_state(config_from_dict(cls, config), load_file(str(embedded)), expert_artifact.compat["n_frames"])
            experts.append(expert.placed(ctx.device))
        else:
            experts.append(load_expert(expert_artifact, ctx))
    router = load_router(artifact.file(ROUTER), len(experts))
    for k, expert in enumerate(experts):
        if router.gates[k].shape[0] != expert.num_gaussians:
            raise IncompatibleArtifactError(
                f"{artifact.path}: router has {router.gates[k].shape[0]} gate rows for expert {k}, "
                f"which has {expert.num_gaussians} Gaussians ({WEIGHTS} changed?)"
            )
    tau = float(artifact.compat["tau"] if tau is None else tau)
    return MoEModel(FrozenExperts(experts, cache_mb=cache_mb), router.to(ctx.device), tau, expert_artifacts)
