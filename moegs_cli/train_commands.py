"""Training commands: ``train-experts`` (and the MoE stages that build on experts)."""

from __future__ import annotations

from typing import Annotated

import typer

from moegs.config import resolve_config
from moegs.progress import console
from moegs_cli.common import ConfigOpt, ForceOpt, SetOpt, handle_errors, report, state


def register(app: typer.Typer) -> None:
    app.command("train-experts")(train_experts)


ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="Rasteriser: auto, cpu, torch, gsplat or inria (default auto).", show_default=False),
]


@handle_errors
def train_experts(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset artifact: path, scene/dataset/latest or scene/dataset/<id prefix>.")],
    experts: Annotated[
        str | None,
        typer.Option("--experts", "-e", help="Comma-separated families: hexplane, embedding, polynomial, keyframe (also: static).", show_default=False),
    ] = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Train one independent expert per family on a dataset; each becomes its own expert artifact.

    A family that fails does not stop the others; the command then lists the failures and exits 1.
    Per-family settings: --set hexplane.iterations=2000 or a train_experts: section in --config.
    Each expert is evaluated on the test cameras at the end (PSNR/SSIM per frame, preview.mp4).
    Example: moegs train-experts --dataset synth/dataset/latest --experts hexplane,polynomial
    """
    from stages import train_experts as train_experts_stage

    cfg = resolve_config(
        train_experts_stage.TrainExpertsConfig,
        config,
        "train_experts",
        overrides,
        explicit={"families": experts, "backend": backend},
    )
    outcomes = train_experts_stage.run(cfg, dataset, state(ctx).workspace, force=force, resume=resume)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in outcomes:
        if outcome.result is not None:
            report(outcome.result, label=outcome.family)
        else:
            console.print(f"[red]failed[/red] {outcome.family}: {outcome.error}")
    if failed:
        raise typer.Exit(code=1)
