"""Expert artifacts on disk: ``expert.safetensors`` + the manifest's config, loaded back into an Expert."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from moegs.artifacts import Artifact
from moegs.context import RenderContext
from moegs.errors import IncompatibleArtifactError
from moegs.experts import get_family
from moegs.experts.base import Expert, config_from_dict

WEIGHTS = "expert.safetensors"


def save_expert(expert: Expert, directory: Path) -> Path:
    path = Path(directory) / WEIGHTS
    save_file(expert.state_tensors(), str(path))
    return path


def expert_compat(expert: Expert, dataset_id: str, frames: list[int]) -> dict:
    """Keys a consumer checks before mixing this expert with others (``frames``: the dataset frames
    [start, stop) it was trained on; ``n_frames`` is their count, the expert's own time base)."""
    return {"dataset_id": dataset_id, "family": expert.family, "n_frames": expert.n_frames, "frames": frames,
            "sh_degree": expert.config.sh_degree}


def load_expert(artifact: Artifact, ctx: RenderContext) -> Expert:
    """Rebuild the expert of an ``expert`` artifact (family and config from its manifest) on the context's device."""
    if artifact.kind != "expert":
        raise IncompatibleArtifactError(f"{artifact.path}: expected an expert artifact, found {artifact.kind}")
    config = dict(artifact.config)
    family = config.pop("family", None) or artifact.compat.get("family")
    cls = get_family(family)
    weights = artifact.file(WEIGHTS)
    if not weights.is_file():
        raise IncompatibleArtifactError(f"{artifact.path}: {WEIGHTS} is missing")
    expert = cls.from_state(config_from_dict(cls, config), load_file(str(weights)), artifact.compat["n_frames"])
    expert.eval()
    return expert.placed(ctx.device)
