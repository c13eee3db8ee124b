"""``moegs stitch``: per-chunk models of one long sequence -> one ``chunked`` artifact over all frames.

The payload is only ``chunks.json`` (which model covers which frames); the manifest references the
chunk models, so nothing is copied. Render, bench and the viewer take it like any model.
"""

from __future__ import annotations

import json
from pathlib import Path

from moegs.artifacts import Artifact, ArtifactWriter, load_artifact, require_same
from moegs.chunked import check_tiling
from moegs.data.frame_range import frames_of
from moegs.errors import IncompatibleArtifactError, InputError
from moegs.models import dataset_of
from stages.common import StageResult, run_stage

__all__ = ["run"]


def run(model_refs: list[str], workspace: Path, *, force: bool = False) -> StageResult:
    """Check the chunks tile the dataset's frames with models of one kind and families, and record them."""
    if len(model_refs) < 2:
        raise InputError(f"stitch needs the models of at least 2 chunks, got {len(model_refs)}")
    parts = [load_artifact(ref, workspace) for ref in model_refs]
    for part in parts:
        if part.kind not in ("expert", "moe"):
            raise InputError(f"{part.path}: stitch takes the expert or moe artifacts of each chunk, not a {part.kind}")
    for other in parts[1:]:
        if other.kind != parts[0].kind:
            raise IncompatibleArtifactError(f"chunks mix kinds: {parts[0].kind} ({parts[0].path}) vs {other.kind} ({other.path})")
    for key in ("dataset_id", "family", "families"):
        require_same(parts, key, "chunks")
    parts.sort(key=lambda p: frames_of(p).start)
    dataset_artifact = dataset_of(parts[0])
    n_frames = int(dataset_artifact.compat["n_frames"])
    check_tiling([frames_of(p) for p in parts], n_frames, [str(p.path) for p in parts])
    inputs = [("dataset", dataset_artifact)] + [(f"chunk{i}", p) for i, p in enumerate(parts)]
    chunks = [frames_of(p).as_list() for p in parts]
    writer = ArtifactWriter(workspace, parts[0].scene, "chunked", stage="stitch", config={"chunks": chunks}, inputs=inputs)

    def build(directory: Path, w: ArtifactWriter) -> None:
        (directory / "chunks.json").write_text(json.dumps(
            [{"frames": f, "kind": p.kind, "id": p.id} for f, p in zip(chunks, parts)], indent=1))
        w.metrics.update(_metrics(parts))
        families = parts[0].compat.get("families") or [parts[0].compat.get("family")]
        w.compat.update({"dataset_id": dataset_artifact.id, "n_frames": n_frames, "frames": [0, n_frames],
                         "chunks": chunks, "n_chunks": len(parts), "chunk_kind": parts[0].kind, "families": families})

    return run_stage(writer, build)


def _metrics(parts: list[Artifact]) -> dict:
    """The chunks' own test scores weighted by their frame counts, and their total size."""
    lengths = [len(frames_of(p)) for p in parts]
    out: dict = {"chunks": len(parts), "gaussians": sum(int(p.metrics.get("gaussians", 0)) for p in parts),
                 "megabytes": sum(float(p.metrics.get("megabytes", 0.0)) for p in parts)}
    for key in ("psnr", "ssim"):
        values = [p.metrics.get(key) for p in parts]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = sum(v * n for v, n in zip(values, lengths)) / sum(lengths)
    return out
