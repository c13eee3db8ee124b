"""Comparing models side by side: per-model scores and speed, and the table (JSON, CSV, Markdown)
and plots that ``moegs bench`` writes."""

from __future__ import annotations

import csv
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from moegs.artifacts import Artifact
from moegs.config import bounded, check_config
from moegs.context import RenderContext
from moegs.data.dataset import Dataset
from moegs.evaluation import EVAL_FRAMES, evaluate_renderer, evaluation_frames, measure_fps
from moegs.models import chunks_of
from moegs.renderable import Renderable

COLUMNS = ["model", "kind", "id", "psnr", "ssim", "dssim", "lpips", "flip", "fps", "gaussians", "megabytes", "train_seconds",
           "eval_frames"]


@dataclass
class BenchConfig:
    """The ``bench`` section."""

    flip: bool = True
    lpips_weights: str | None = None
    """Folder with AlexNet + LPIPS head weights; LPIPS is reported as unavailable without it."""
    fps_repeats: int = bounded(2, ge=1)
    eval_frames: int = bounded(EVAL_FRAMES, ge=0)
    """Frames of the test cameras scored, spread evenly (0 = every frame)."""
    fps_frames: int = bounded(0, ge=0)
    """Time rendering on this many of those frames, spread evenly (0 = all of them): a few
    seconds of rendering per model already give a steady figure."""
    device: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_config(self)


def model_label(artifact: Artifact) -> str:
    """A short readable name: family (+ how it was made) or the mixture's families (+ its chunk count)."""
    if artifact.kind == "chunked":
        chunks = chunks_of(artifact)
        return f"{model_label(chunks[0])} x{len(chunks)} chunks"
    if artifact.kind == "expert":
        label = artifact.compat.get("family", "expert")
        finetune = artifact.metrics.get("finetune")
        return f"{label}+{finetune}" if finetune else label
    families = artifact.compat.get("families") or []
    label = "MoE(" + ",".join(f[:4] for f in families) + ")"
    return label + " pruned" if artifact.compat.get("pruned") else label


def device_name(ctx: RenderContext) -> str:
    """The GPU's name, or the CPU and its thread count (what speed figures were measured on)."""
    if ctx.device.type == "cuda":
        return torch.cuda.get_device_name(ctx.device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_model(artifact: Artifact, model: Renderable, dataset: Dataset, cfg: BenchConfig, ctx: RenderContext,
                lpips_ok: bool, progress: bool) -> dict:
    """Quality on ``cfg.eval_frames`` spread test frames plus render speed on ``cfg.fps_frames`` of them
    (warm-up excluded, blend included, no caches)."""
    label = model_label(artifact)
    frames = evaluation_frames(dataset.n_frames, cfg.eval_frames)
    scores = evaluate_renderer(
        lambda camera, t: model.render_frame(camera, t, ctx).image, dataset, frames=frames,
        with_flip=cfg.flip, lpips_weights=cfg.lpips_weights if lpips_ok else None, progress=progress,
        label=f"bench {label}",
    )
    camera = dataset.test_cameras[0]
    rays = camera.rays(ctx.device)
    timed = [frames[i] for i in evaluation_frames(len(frames), cfg.fps_frames)]
    fps = measure_fps(lambda cam, t: model.render_frame(cam, t, ctx, rays=rays, cache=False).image, camera,
                      [float(dataset.times[f]) for f in timed], repeats=cfg.fps_repeats)
    return {
        "model": label,
        "kind": artifact.kind,
        "id": artifact.short_id,
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "dssim": (1.0 - scores["ssim"]) / 2.0,
        "lpips": scores.get("lpips"),
        "flip": scores.get("flip"),
        "fps": fps,
        "gaussians": model.num_gaussians,
        "megabytes": model.megabytes(),
        "train_seconds": _train_seconds(artifact),
        "eval_frames": len(frames),
        "region_psnr": scores["region_psnr"],
    }


def _train_seconds(artifact: Artifact) -> float:
    """Training time including what it was built from (a MoE counts its experts and the router, a
    chunked model all its chunks)."""
    if artifact.kind == "chunked":
        return sum(_train_seconds(chunk) for chunk in chunks_of(artifact))
    own = float(artifact.metrics.get("train_seconds", 0.0))
    if artifact.kind == "moe":
        own += sum(float(artifact.resolve_input(e).metrics.get("train_seconds", 0.0)) for e in artifact.input_refs("expert"))
    return own


def write_csv(rows: list[dict], path: Path) -> None:
    regions = sorted({r for row in rows for r in row["region_psnr"]})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS + [f"psnr_{r}" for r in regions])
        for row in rows:
            writer.writerow([row[c] for c in COLUMNS] + [row["region_psnr"].get(r) for r in regions])


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table (also what the CLI prints)."""
    regions = sorted({r for row in rows for r in row["region_psnr"]})
    head = (["model", "PSNR", "SSIM", "D-SSIM", "LPIPS", "FLIP", "FPS", "Gaussians", "MB", "train s", "frames"]
            + [f"PSNR {r}" for r in regions])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], f"{row['psnr']:.2f}", f"{row['ssim']:.4f}", f"{row['dssim']:.4f}",
                 "n/a" if row["lpips"] is None else f"{row['lpips']:.4f}",
                 "n/a" if row["flip"] is None else f"{row['flip']:.4f}",
                 f"{row['fps']:.1f}", str(row["gaussians"]), f"{row['megabytes']:.2f}", f"{row['train_seconds']:.0f}",
                 str(row["eval_frames"])]
        cells += [f"{row['region_psnr'][r]:.2f}" if r in row["region_psnr"] else "" for r in regions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_psnr_fps(rows: list[dict], path: Path, device: str) -> None:
    """PSNR against FPS, bubble area proportional to model size (the paper's teaser figure)."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    largest = max(r["megabytes"] for r in rows) or 1.0
    for row in rows:
        is_moe = row["kind"] == "moe"
        ax.scatter(row["fps"], row["psnr"], s=80 + 1500 * row["megabytes"] / largest, alpha=0.55,
                   color="tab:red" if is_moe else "tab:blue", edgecolors="black")
        ax.annotate(row["model"], (row["fps"], row["psnr"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(f"frames per second ({device})")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("quality vs speed (bubble area = size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_regions(rows: list[dict], path: Path) -> None:
    """Per-region PSNR of every model as grouped bars: which model wins where."""
    regions = sorted({r for row in rows for r in row["region_psnr"]})
    fig = Figure(figsize=(max(6, 1.4 * len(regions) * len(rows) / 3), 4), dpi=120)
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(regions))]
        ax.bar(xs, [row["region_psnr"].get(r, 0.0) for r in regions], width, label=row["model"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(regions))], regions)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per scene region (test camera)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
