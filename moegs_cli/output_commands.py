"""Output commands: ``render``, ``bench`` and the end-to-end ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moegs.config import resolve_config
from moegs.progress import console
from moegs_cli.common import ConfigOpt, ForceOpt, SetOpt, handle_errors, report, state
from moegs_cli.train_commands import BackendOpt, DeviceOpt


def register(app: typer.Typer) -> None:
    app.command("render")(render)
    app.command("bench")(bench)
    app.command("stitch")(stitch)
    app.command("demo")(demo)


@handle_errors
def render(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Expert, moe or chunked artifact.")],
    cameras: Annotated[str | None, typer.Option(help="test (default), train, or path (a novel camera path).", show_default=False)] = None,
    path: Annotated[str | None, typer.Option("--path", help="Shape of the novel path: auto (default: spiral for forward-facing rigs, orbit for surround rigs), spiral, interp or orbit; implies --cameras path.", show_default=False)] = None,
    frame_start: Annotated[int | None, typer.Option(help="First frame.", show_default=False)] = None,
    frame_stop: Annotated[int | None, typer.Option(help="Stop before this frame.", show_default=False)] = None,
    export_ply: Annotated[bool | None, typer.Option("--export-ply", help="Also write the first frame's Gaussians as standard 3DGS PLY.", show_default=False)] = None,
    tau: Annotated[float | None, typer.Option(help="Test-time temperature of a MoE (default: the one it renders at, its train-router render_tau).", show_default=False)] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Render an expert or a MoE to MP4 + PNG frames; a MoE also gets gate-map and expert-grid videos and a legend.

    A chunked model (moegs stitch) renders one continuous video over the whole sequence.
    Example: moegs render --model synth/moe/latest --path spiral
    """
    from stages import render as stage

    cfg = resolve_config(stage.RenderConfig, config, "render", overrides,
                         explicit={"cameras": "path" if path is not None and cameras is None else cameras, "path": path,
                                   "frame_start": frame_start, "frame_stop": frame_stop, "export_ply": export_ply,
                                   "tau": tau, "device": device, "backend": backend})
    report(stage.run(cfg, model, state(ctx).workspace, force=force))


@handle_errors
def bench(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(help="Expert, moe and chunked artifacts of one dataset (and one frame range).")],
    lpips_weights: Annotated[Path | None, typer.Option(help="Folder with local AlexNet + LPIPS weights (LPIPS is 'unavailable' without).", show_default=False)] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Compare models side by side: PSNR, SSIM, D-SSIM, LPIPS, FLIP, FPS, Gaussians, MB, training time,
    per-region PSNR; writes results.json/.csv/.md and a PSNR-vs-FPS bubble plot, and prints the table.

    Example: moegs bench synth/expert/ab12 synth/moe/latest
    """
    from stages import bench as stage

    cfg = resolve_config(stage.BenchConfig, config, "bench", overrides,
                         explicit={"lpips_weights": None if lpips_weights is None else str(lpips_weights),
                                   "device": device, "backend": backend})
    result = stage.run(cfg, models, state(ctx).workspace, force=force)
    console.print(result.artifact.file("results.md").read_text(), markup=False)
    report(result)


@handle_errors
def stitch(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(help="The expert or moe artifact of every chunk (any order).")],
    force: ForceOpt = False,
) -> None:
    """Join the per-chunk models of a long sequence (train-experts --frames) into one chunked artifact.

    The chunks must be models of one kind and families on one dataset whose frame ranges cover its
    frames exactly once. render and bench take the result like any model: one video and one table
    row over all frames. Nothing is copied; the artifact references its chunks.
    Example: moegs stitch synth/moe/ab12 synth/moe/cd34
    """
    from stages import stitch as stage

    report(stage.run(models, state(ctx).workspace, force=force))


@handle_errors
def demo(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option("--preset", "-p", help="tiny (about a minute), demo (make demo) or large.")] = "demo",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic scene.")] = 0,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run the whole pipeline on the built-in synthetic scene and print the results table.

    synth -> preprocess -> train-experts (hexplane, embedding, polynomial, keyframe) -> train-router
    -> prune -> distill -> render -> bench. Every step is an ordinary artifact in the workspace, so
    a second run is instant. Override any stage setting with --set SECTION.KEY=VALUE
    (e.g. --set train_experts.hexplane.iterations=500).
    """
    from moegs_cli import demo as pipeline

    result = pipeline.run(preset, state(ctx).workspace, seed=seed, force=force, overrides=overrides,
                          device=device, backend=backend)
    for name, step in result.steps.items():
        console.print(f"{name:>20}: {step.artifact.path}")
    for r in result.renders:
        console.print(f"{'videos':>20}: {r.artifact.path} ({', '.join(r.artifact.metrics['videos'])})")
    console.print(f"{'bench plots':>20}: {result.bench.artifact.path}/psnr_vs_fps.png, region_psnr.png")
    typer.echo(result.table)
