"""One way to load any model artifact, a single expert or a mixture, as a :class:`Renderable`."""

from __future__ import annotations

from moegs.artifacts import Artifact
from moegs.context import RenderContext
from moegs.errors import IncompatibleArtifactError
from moegs.experts.io import load_expert
from moegs.moe.io import load_moe
from moegs.renderable import Renderable


def load_model(artifact: Artifact, ctx: RenderContext, tau: float | None = None) -> Renderable:
    """Load an ``expert`` or ``moe`` artifact onto the context's device (``tau`` overrides a mixture's temperature)."""
    if artifact.kind == "expert":
        return load_expert(artifact, ctx)
    if artifact.kind == "moe":
        return load_moe(artifact, ctx, tau=tau)
    raise IncompatibleArtifactError(f"{artifact.path}: expected an expert or moe artifact, found {artifact.kind}")


def dataset_of(artifact: Artifact) -> Artifact:
    """The dataset an expert or MoE was trained on (recorded in its manifest inputs)."""
    refs = artifact.input_refs("dataset")
    if not refs:
        raise IncompatibleArtifactError(f"{artifact.path}: manifest names no dataset input")
    return artifact.resolve_input(refs[0])
