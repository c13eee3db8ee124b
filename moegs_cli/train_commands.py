"""Training commands: ``train-experts`` (and the MoE stages that build on experts)."""

from __future__ import annotations

from typing import Annotated

import typer

from moegs.config import resolve_config
from moegs.progress import console
from moegs_cli import cluster_commands as cluster
from moegs_cli.common import ConfigOpt, ForceOpt, SetOpt, handle_errors, report, state


def register(app: typer.Typer) -> None:
    app.command("train-experts")(train_experts)
    app.command("train-router")(train_router)
    app.command("prune")(prune)
    app.command("distill")(distill)


ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="Rasteriser: auto, cpu, torch, gsplat or inria (default auto).", show_default=False),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Where tensors live: auto (CUDA + gsplat when both exist, else CPU), cpu, cuda or cuda:N.",
                 show_default=False),
]


@handle_errors
def train_experts(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset artifact: path, scene/dataset/latest or scene/dataset/<id prefix>.")],
    experts: Annotated[
        str | None,
        typer.Option("--experts", "-e", help="Comma-separated families: hexplane, embedding, polynomial, keyframe (also: static).", show_default=False),
    ] = None,
    frames: Annotated[
        str | None,
        typer.Option("--frames", help="Train on dataset frames START:STOP only (one chunk of a long sequence, e.g. 0:150; default all).",
                     show_default=False),
    ] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    executor: cluster.ExecutorOpt = None,
    timeout_min: cluster.TimeoutOpt = None,
    partition: cluster.PartitionOpt = None,
    account: cluster.AccountOpt = None,
    mem_gb: cluster.MemOpt = None,
    cpus: cluster.CpusOpt = None,
) -> None:
    """Train one independent expert per family on a dataset; each becomes its own expert artifact.

    A family that fails does not stop the others; the command then lists the failures and exits 1.
    Per-family settings: --set hexplane.iterations=2000 or a train_experts: section in --config.
    Each expert is evaluated on the test cameras at the end (PSNR/SSIM per frame, preview.mp4).
    With --executor local|slurm|debug each family is its own job (one SLURM job array); resources
    come from the options or the config's executor: section; logs go to <workspace>/_jobs/.
    With --frames START:STOP the experts see only those frames (local time 0..1 over them): train each
    chunk of a long sequence, one router per chunk, then join them with moegs stitch.
    Example: moegs train-experts --dataset synth/dataset/latest --experts hexplane,polynomial
    """
    from stages import train_experts as train_experts_stage

    cfg = resolve_config(
        train_experts_stage.TrainExpertsConfig,
        config,
        "train_experts",
        overrides,
        explicit={"families": experts, "device": device, "backend": backend, "frames": frames},
    )
    ex = cluster.executor_config(config, None, cluster=executor, timeout_min=timeout_min, partition=partition,
                                 account=account, mem_gb=mem_gb, cpus=cpus)
    if ex.cluster != "none":
        return cluster.train_experts_on_executor(state(ctx).workspace, dataset, cfg.families, config=config, overrides=overrides,
                                                 force=force, resume=resume, backend=backend, cfg=ex, device=device,
                                                 frames=frames)
    outcomes = train_experts_stage.run(cfg, dataset, state(ctx).workspace, force=force, resume=resume)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in outcomes:
        if outcome.result is not None:
            report(outcome.result, label=outcome.family)
        else:
            console.print(f"[red]failed[/red] {outcome.family}: {outcome.error}")
    if failed:
        raise typer.Exit(code=1)


@handle_errors
def train_router(
    ctx: typer.Context,
    experts: Annotated[list[str], typer.Option("--experts", "-e", help="Expert artifacts (repeat, or comma-separate): two or more, any families, one dataset.")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset artifact (default: the experts' own).", show_default=False)] = None,
    iterations: Annotated[int | None, typer.Option(help="Router training steps (default 5000).", show_default=False)] = None,
    tau: Annotated[float | None, typer.Option(help="Softmax temperature in training and rendering (default 0.01); surround rigs render at 1.0; --set render_tau=X renders at X.", show_default=False)] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Render with 2K separate passes instead of the single multi-expert pass.")] = False,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Train the Volume-aware Pixel Router over frozen experts -> a moe artifact.

    Per Gaussian: gates (init 0.9) and a time coefficient, splatted with the expert's own geometry;
    a shared 69-weight pixel MLP turns them into per-pixel softmax gates that blend the experts.
    Reports the blend's PSNR, each expert's, the per-region winners, the router's preferred expert
    per region and the PSNR at the official test-time temperature (tau = 1). On surround rigs (and
    with --set render_tau=X) the mixture renders softer than it trains (tau 1: softer gates carry
    over to far-away viewpoints better), and the summary gives the PSNR at the training tau beside it.
    Example: moegs train-router -e synth/expert/ab12 -e synth/expert/cd34
    """
    from stages import train_router as stage

    refs = [r for item in experts for r in item.split(",") if r]
    cfg = resolve_config(stage.TrainRouterConfig, config, "train_router", overrides,
                         explicit={"iterations": iterations, "tau": tau, "device": device, "backend": backend,
                                   "single_pass": False if naive else None})
    result = stage.run(cfg, refs, state(ctx).workspace, dataset, force=force, resume=resume)
    report(result)
    console.print(_moe_summary(result.artifact.metrics), highlight=False)


@handle_errors
def prune(
    ctx: typer.Context,
    moe: Annotated[str, typer.Option("--moe", "-m", help="MoE artifact to prune.")],
    keep_fraction: Annotated[float | None, typer.Option(help="Keep this share of all Gaussians (default 0.5).", show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(help="Instead: drop Gaussians contributing fewer pixels than this per view.", show_default=False)] = None,
    finetune_steps: Annotated[int | None, typer.Option(help="Router fine-tuning steps afterwards (default 0).", show_default=False)] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Gate-aware pruning: drop the Gaussians that add least to the blended image -> a new moe artifact.

    Score r = sum over training views of w(p) * gate(p) * alpha * T, where w weighs moving content up
    as the router's loss did (its motion_weight; --set motion_weight=W to choose); the pruned MoE
    carries its own smaller experts and gate tables and plugs in wherever the original did. Its gate
    maps read 0 where an expert has no Gaussians left, so the router does not move onto the holes
    (--set gate_background=1 for the paper's background). Reports Gaussians, storage, FPS and PSNR
    before and after.
    Example: moegs prune --moe synth/moe/latest --keep-fraction 0.5
    """
    from stages import prune as stage

    explicit = {"keep_fraction": keep_fraction, "threshold": threshold, "finetune_steps": finetune_steps, "device": device, "backend": backend}
    cfg = resolve_config(stage.PruneConfig, config, "prune", overrides, explicit=explicit)
    report(stage.run(cfg, moe, state(ctx).workspace, force=force, resume=resume))


@handle_errors
def distill(
    ctx: typer.Context,
    moe: Annotated[str, typer.Option("--moe", "-m", help="MoE artifact used as teacher.")],
    student: Annotated[str, typer.Option("--student", help="A family of the MoE (e.g. keyframe) or an expert artifact.")],
    steps: Annotated[int | None, typer.Option(help="Fine-tuning steps (default 1000).", show_default=False)] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of the MoE (pseudo ground truth) term (default 1).", show_default=False)] = None,
    gate_weighting: Annotated[bool | None, typer.Option("--gate-weighting", help="Weight the teacher term per pixel by 1 - the student's gate.", show_default=False)] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Distil the MoE into one expert -> an ordinary expert artifact (same format and speed, better quality).

    Also fine-tunes the same student for the same steps on ground truth only (the fair baseline)
    and reports both PSNRs.
    Example: moegs distill --moe synth/moe/latest --student keyframe
    """
    from stages import distill as stage

    cfg = resolve_config(stage.DistillConfig, config, "distill", overrides,
                         explicit={"steps": steps, "beta": beta, "gate_weighting": gate_weighting, "device": device, "backend": backend})
    distilled, baseline = stage.run(cfg, moe, student, state(ctx).workspace, force=force, resume=resume)
    if baseline is not None:
        report(baseline, label="GT-only baseline")
    report(distilled, label="distilled")


def _moe_summary(metrics: dict) -> str:
    """One line: the blend's PSNR beside each expert's and the gain over the best one."""
    experts = [(f, p) for f, p in zip(metrics.get("families", []), metrics.get("expert_psnr", [])) if p is not None]
    line = f"MoE {metrics['psnr']:.2f} dB"
    if experts:
        best = max(p for _, p in experts)
        line += " | " + ", ".join(f"{f} {p:.2f}" for f, p in experts) + f" | {metrics['psnr'] - best:+.2f} dB over the best expert"
    if "psnr_train_tau" in metrics:
        line += f" | rendered at tau {metrics['render_tau']:g}; at the training tau {metrics['psnr_train_tau']:.2f} dB"
    return line
