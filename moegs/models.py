"""One way to load any model artifact, a single expert, a mixture or a chunked model, as a :class:`Renderable`."""

from __future__ import annotations

from moegs.artifacts import Artifact
from moegs.chunked import ChunkedModel
from moegs.context import RenderContext
from moegs.data.dataset import FRAME_CACHE_MB, Dataset
from moegs.data.frame_range import frames_of, parse_frames, select_frames
from moegs.errors import IncompatibleArtifactError
from moegs.experts.io import load_expert
from moegs.moe.io import load_moe
from moegs.moe.render import DEFORMED_CACHE_MB
from moegs.renderable import Renderable

MODEL_KINDS = ("expert", "moe", "chunked")


def load_model(artifact: Artifact, ctx: RenderContext, tau: float | None = None) -> Renderable:
    """Load an ``expert``, ``moe`` or ``chunked`` artifact onto the context's device
    (``tau`` overrides a mixture's temperature, also in every chunk)."""
    if artifact.kind == "expert":
        return load_expert(artifact, ctx)
    if artifact.kind == "moe":
        return load_moe(artifact, ctx, tau=tau)
    if artifact.kind == "chunked":
        chunks = chunks_of(artifact)
        share = DEFORMED_CACHE_MB / len(chunks)  # one budget for all chunks: a render or bench is in one chunk at a time
        parts = [(frames_of(c), load_moe(c, ctx, tau=tau, cache_mb=share) if c.kind == "moe" else load_expert(c, ctx))
                 for c in chunks]
        return ChunkedModel(parts, int(artifact.compat["n_frames"]))
    raise IncompatibleArtifactError(f"{artifact.path}: expected an expert, moe or chunked artifact, found {artifact.kind}")


def chunks_of(artifact: Artifact) -> list[Artifact]:
    """The per-chunk models of a ``chunked`` artifact, in frame order."""
    entries = [e for e in artifact.input_refs() if e.get("role", "").startswith("chunk")]
    return [artifact.resolve_input(e) for e in sorted(entries, key=lambda e: int(e["role"][len("chunk"):]))]


def dataset_of(artifact: Artifact) -> Artifact:
    """The dataset an expert or MoE was trained on (recorded in its manifest inputs)."""
    refs = artifact.input_refs("dataset")
    if not refs:
        raise IncompatibleArtifactError(f"{artifact.path}: manifest names no dataset input")
    return artifact.resolve_input(refs[0])


def model_dataset(artifact: Artifact, cache_mb: float = FRAME_CACHE_MB) -> Dataset:
    """The dataset a model was trained on, cut to the frames it covers (a chunk's model gets its chunk)."""
    dataset = Dataset.load(dataset_of(artifact).path, cache_mb)
    return select_frames(dataset, parse_frames(frames_of(artifact).as_list(), dataset.n_frames, f"{artifact.path}: frames"))
