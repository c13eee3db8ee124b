"""``moegs bench``: one table (JSON, CSV, Markdown) and plots comparing experts and mixtures side by side."""

from __future__ import annotations

import json
from pathlib import Path

from moegs.artifacts import ArtifactWriter, load_artifact, require_same
from moegs.benchmark import BenchConfig, bench_model, device_name, markdown_table, plot_psnr_fps, plot_regions, write_csv
from moegs.data.frame_range import require_same_frames
from moegs.errors import InputError
from moegs.evaluation import evaluation_frames
from moegs.metrics import lpips_available
from moegs.models import MODEL_KINDS, dataset_of, load_model, model_dataset
from stages.common import StageResult, artifact_config, run_stage, stage_context

__all__ = ["BenchConfig", "markdown_table", "run"]


def run(cfg: BenchConfig, model_refs: list[str], workspace: Path, *, force: bool = False, progress: bool = True) -> StageResult:
    if not model_refs:
        raise InputError("bench needs at least one model (expert or moe artifact)")
    artifacts = [load_artifact(ref, workspace) for ref in model_refs]
    for artifact in artifacts:
        if artifact.kind not in MODEL_KINDS:
            raise InputError(f"{artifact.path}: bench takes expert, moe or chunked artifacts, not {artifact.kind}")
    require_same(artifacts, "dataset_id", "models")
    frames = require_same_frames(artifacts, "models", "; bench compares models over the same frames (stitch chunks with moegs stitch)")
    lpips_ok, lpips_reason = lpips_available(cfg.lpips_weights)
    if cfg.lpips_weights is not None and not lpips_ok:
        raise InputError(f"--lpips-weights {cfg.lpips_weights}: {lpips_reason}")
    ctx = stage_context(cfg)
    dataset_artifact = dataset_of(artifacts[0])
    inputs = [("dataset", dataset_artifact)] + [(f"model{i}", a) for i, a in enumerate(artifacts)]
    writer = ArtifactWriter(workspace, artifacts[0].scene, "bench", stage="bench", config=artifact_config(cfg),
                            inputs=inputs, id_extra=ctx.describe())

    def build(directory: Path, w: ArtifactWriter) -> None:
        dataset = model_dataset(artifacts[0])
        rows = [bench_model(a, load_model(a, ctx), dataset, cfg, ctx, lpips_ok, progress) for a in artifacts]
        device = device_name(ctx)
        results = {"rows": rows, "device": device, "backend": ctx.backend,
                   "lpips": "LPIPS-AlexNet" if lpips_ok else lpips_reason,
                   "dataset": dataset_artifact.id, "test_cameras": [c.name for c in dataset.test_cameras],
                   "frames": dataset.n_frames, "frame_range": frames.as_list(),
                   "eval_frames": evaluation_frames(dataset.n_frames, cfg.eval_frames)}
        (directory / "results.json").write_text(json.dumps(results, indent=2))
        write_csv(rows, directory / "results.csv")
        (directory / "results.md").write_text(markdown_table(rows) + f"\nDevice: {device}; backend: {ctx.backend}.\n")
        plot_psnr_fps(rows, directory / "psnr_vs_fps.png", device)
        if any(r["region_psnr"] for r in rows):
            plot_regions(rows, directory / "region_psnr.png")
        best = max(rows, key=lambda r: r["psnr"])
        w.metrics.update({"models": len(rows), "best_model": best["model"], "best_psnr": best["psnr"]})
        w.compat.update({"dataset_id": dataset_artifact.id})

    return run_stage(writer, build, ctx=ctx, force=force)
