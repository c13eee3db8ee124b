"""Cluster commands: ``run`` (a config's whole pipeline on an executor) and ``jobs`` (what was submitted).

Every job is an ordinary moegs command line run in the job's process (:func:`run_command_line`),
so a job accepts exactly what the CLI accepts. ``train-experts --executor`` goes through
:func:`train_experts_on_executor`.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer._click.exceptions import ClickException  # typer 0.29 bundles click; usage errors are raised as these

from moegs.config import resolve_config
from moegs.data.frame_range import FrameRange, chunk_ranges
from moegs.errors import InputError
from moegs.launch import EXECUTORS, CommandOutcome, ExecutorConfig, Group, JobStore, Output, Step, Submission, submit
from moegs.progress import console
from moegs_cli.common import ForceOpt, handle_errors, state


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("jobs")(jobs)


ExecutorOpt = Annotated[
    str | None,
    typer.Option("--executor", help=f"Where jobs run: {', '.join(EXECUTORS)} (default: the config's executor.cluster, else none = in process).",
                 show_default=False),
]
TimeoutOpt = Annotated[int | None, typer.Option("--timeout-min", help="Wall-clock minutes per job (default 240).", show_default=False)]
PartitionOpt = Annotated[str | None, typer.Option("--partition", help="SLURM partition.", show_default=False)]
AccountOpt = Annotated[str | None, typer.Option("--account", help="SLURM account.", show_default=False)]
MemOpt = Annotated[int | None, typer.Option("--mem-gb", help="Memory per job in GB.", show_default=False)]
CpusOpt = Annotated[int | None, typer.Option("--cpus", help="CPUs per job.", show_default=False)]

STAGE_SECTIONS = ("preprocess", "train_experts", "train_router", "prune", "distill", "render", "bench")


def executor_config(config: Path | None, overrides: list[str] | None, *, cluster: str | None, timeout_min: int | None,
                    partition: str | None, account: str | None, mem_gb: int | None, cpus: int | None) -> ExecutorConfig:
    """Defaults < the config's ``executor:`` section < ``--set executor.KEY=VALUE`` < explicit options."""
    return resolve_config(ExecutorConfig, config, "executor", _section_sets(overrides, "executor"),
                          explicit={"cluster": cluster, "timeout_min": timeout_min, "partition": partition,
                                    "account": account, "mem_gb": mem_gb, "cpus_per_task": cpus})


class _Tee(io.TextIOBase):
    """Write to the job's own stream (its log) and keep a copy to read the command's output back."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def run_command_line(argv: list[str]) -> CommandOutcome:
    """Run ``moegs ARGV`` in this process: its exit code, the artifact directories it printed on stdout
    (every command prints the path of what it wrote), and its error line from stderr.

    Signals that submitit turns into ``SystemExit`` (requeue after preemption) pass through.
    """
    from moegs_cli.app import app

    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = app(args=argv, prog_name="moegs", standalone_mode=False)
            code = code if isinstance(code, int) else 0
        except ClickException as exc:
            exc.show()
            code = exc.exit_code
        except typer.Abort:
            code = 1
    artifacts = [line.strip() for line in out.copy.getvalue().splitlines()
                 if line.strip() and (Path(line.strip()) / "manifest.json").is_file()]
    return CommandOutcome(code, artifacts, _last_message(err.copy.getvalue()) if code else None)


def _last_message(stderr: str) -> str | None:
    """The command's last error message, its lines joined again (the console wraps long messages)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(("error:", "failed ", "Error:", "interrupted"))]
    if not lines:
        return None
    return " ".join(lines[starts[-1]:]) if starts else lines[-1]


def _section_sets(overrides: list[str] | None, section: str) -> list[str]:
    """The ``--set SECTION.KEY=VALUE`` items of one section, as that stage's own ``KEY=VALUE``."""
    prefix = section + "."
    return [item[len(prefix):] for item in overrides or [] if item.startswith(prefix)]


def _stage_argv(command: list[str | Output], config: Path | None, sets: list[str], force: bool) -> tuple[str | Output, ...]:
    tail = ["--config", str(config)] if config is not None else []
    for item in sets:
        tail += ["--set", item]
    return tuple(command + tail + (["--force"] if force else []))


def expert_steps(workspace: Path, dataset: str | Output, families: list[str], config: Path | None, sets: list[str],
                 force: bool, extra: list[str] | None = None, suffix: str = "") -> tuple[Step, ...]:
    """One resumable ``train-experts`` job per family (``sets``: overrides of the train_experts section),
    run in the job's own process whatever the config's executor says; ``suffix`` ends each step name."""
    return tuple(
        Step(f"expert:{family}{suffix}", ("-w", str(workspace)) + _stage_argv(
            ["train-experts", "--dataset", dataset, "--experts", family, "--executor", "none", *(extra or [])], config, sets, force),
            resumable=True)
        for family in families
    )


def pipeline_groups(*, workspace: Path, config: Path, source: Path | None, dataset: str | None, fmt: str | None,
                    scene: str | None, families: list[str], student: str, overrides: list[str] | None,
                    force: bool) -> list[Group]:
    """preprocess (if from a capture) -> experts (one array) -> train-router -> prune, distill, render -> bench."""
    ws = ["-w", str(workspace)]

    def step(name: str, command: list[str | Output], section: str) -> Step:
        return Step(name, tuple(ws) + _stage_argv(command, config, _section_sets(overrides, section), force))

    groups = []
    if source is not None:
        command = ["preprocess", str(source)] + (["--format", fmt] if fmt else []) + (["--scene", scene] if scene else [])
        groups.append(Group("dataset", (step("preprocess", command, "preprocess"),)))
    data: str | Output = Output(("dataset",)) if source is not None else str(dataset)
    experts = expert_steps(workspace, data, families, config, _section_sets(overrides, "train_experts"), force)
    groups.append(Group("experts", experts, ("dataset",) if source is not None else ()))
    router = Output(("router",))
    groups.append(Group("router", (step("train-router", ["train-router", "-e", Output(("experts",), sep=",")], "train_router"),), ("experts",)))
    groups.append(Group("prune", (step("prune", ["prune", "--moe", router], "prune"),), ("router",)))
    groups.append(Group("distill", (step("distill", ["distill", "--moe", router, "--student", student], "distill"),), ("router",)))
    groups.append(Group("render", (step("render", ["render", "--model", router], "render"),), ("router",)))
    models = Output(("experts", "router", "prune", "distill"))
    groups.append(Group("bench", (step("bench", ["bench", models], "bench"),), ("prune", "distill", "render")))
    return groups


def chunked_pipeline_groups(*, workspace: Path, config: Path, dataset: str, chunks: list[FrameRange],
                            families: list[str], student: str, overrides: list[str] | None, force: bool) -> list[Group]:
    """Per chunk: experts (one array, ``--frames``) -> train-router -> prune, distill; then one ``stitch``
    per model (each family's experts, the router, the pruned and the distilled MoE) -> render -> bench."""
    ws = ("-w", str(workspace))

    def job(name: str, command: list[str | Output], section: str | None, after: tuple[str, ...]) -> Group:
        """A group of one step; ``section`` names the config section its ``--config``/``--set`` come from."""
        if section is None:
            argv = ws + tuple(command) + (("--force",) if force else ())
        else:
            argv = ws + _stage_argv(command, config, _section_sets(overrides, section), force)
        return Group(name, (Step(name, argv),), after)

    groups, tags = [], [f"@{c.start}-{c.stop}" for c in chunks]
    for frames, tag in zip(chunks, tags):
        experts = expert_steps(workspace, dataset, families, config, _section_sets(overrides, "train_experts"), force,
                               extra=["--frames", str(frames)], suffix=tag)
        groups.append(Group("experts" + tag, experts))
        router = Output(("train-router" + tag,))
        groups.append(job("train-router" + tag, ["train-router", "-e", Output(("experts" + tag,), sep=",")], "train_router",
                          ("experts" + tag,)))
        groups.append(job("prune" + tag, ["prune", "--moe", router], "prune", ("train-router" + tag,)))
        groups.append(job("distill" + tag, ["distill", "--moe", router, "--student", student], "distill", ("train-router" + tag,)))
    stitched = {f"stitch:{family}": Output(tuple("experts" + t for t in tags), steps=tuple(f"expert:{family}{t}" for t in tags))
                for family in families}
    for stage in ("train-router", "prune", "distill"):
        stitched[f"stitch:{stage}"] = Output(tuple(stage + t for t in tags), last=stage == "distill")
    groups += [job(name, ["stitch", parts], None, parts.groups) for name, parts in stitched.items()]
    groups.append(job("render", ["render", "--model", Output(("stitch:train-router",))], "render", ("stitch:train-router",)))
    groups.append(job("bench", ["bench", Output(tuple(stitched))], "bench", tuple(stitched) + ("render",)))
    return groups


def check_stage_sections(config: Path, overrides: list[str] | None, experts: str | None) -> list[str]:
    """Resolve every stage section now, so a bad key fails here and not in a job hours later; the families to train."""
    from stages import bench, distill, preprocess, prune, render, train_experts, train_router

    classes = {"preprocess": preprocess.PreprocessConfig, "train_experts": train_experts.TrainExpertsConfig,
               "train_router": train_router.TrainRouterConfig, "prune": prune.PruneConfig,
               "distill": distill.DistillConfig, "render": render.RenderConfig, "bench": bench.BenchConfig}
    for section, cls in classes.items():
        explicit = {"families": experts} if section == "train_experts" else None
        try:
            cfg = resolve_config(cls, config, section, _section_sets(overrides, section), explicit=explicit)
        except InputError as exc:
            raise InputError(f"{config}: section {section}: {exc}") from None
        if section == "train_experts":
            families = list(cfg.families)
            for family in families:
                train_experts.family_config(cfg, family)
    return families


def report_submission(done: Submission, cfg: ExecutorConfig, workspace: Path) -> None:
    """Per step: its job id and, when finished here, its artifact; failures in red. Exit 1 if any step failed."""
    store = JobStore(workspace)
    for step, job_id in done.job_ids.items():
        st = store.read_state(done.run, step)
        where = ", ".join(st.get("artifacts", [])) or st.get("state", "pending")
        if step not in done.failed:
            console.print(f"{step}: job {job_id} -> {where}", highlight=False)
    for step, detail in done.failed.items():
        console.print(f"[red]failed[/red] {step} {detail}", highlight=False)
    for group in done.skipped:
        console.print(f"[yellow]skipped[/yellow] {group}: an input failed", highlight=False)
    console.print(f"run {done.run} ({cfg.cluster}); see: moegs -w {workspace} jobs --run {done.run}", highlight=False)
    typer.echo(done.run)
    if done.failed:
        raise typer.Exit(code=1)


def train_experts_on_executor(workspace: Path, dataset: str, families: list[str], *, config: Path | None,
                              overrides: list[str] | None, force: bool, resume: bool, backend: str | None,
                              cfg: ExecutorConfig, device: str | None = None, frames: str | None = None) -> None:
    """``train-experts --executor local|slurm|debug``: one job per family (a SLURM array), reported like in process.

    ``overrides`` are the command's own ``--set`` items (keys of the train_experts section).
    """
    from moegs.artifacts import load_artifact

    workspace = Path(workspace).resolve()
    dataset_path = str(load_artifact(dataset, workspace, expected_kind="dataset").path)
    extra = (["--device", device] if device else []) + (["--backend", backend] if backend else [])
    extra += ["--resume"] if resume else []
    extra += ["--frames", frames] if frames else []
    steps = expert_steps(workspace, dataset_path, families, _absolute(config), overrides or [], force, extra)
    done = submit([Group("experts", steps)], cfg, workspace, run_command_line, label="experts")
    report_submission(done, cfg, workspace)


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).resolve()


@handle_errors
def run(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="YAML config with one section per stage (see examples/), plus an optional executor: section.")],
    source: Annotated[Path | None, typer.Option("--source", help="Capture folder to preprocess first.", show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Instead: an existing dataset artifact.", show_default=False)] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Format of --source (default: the config's).", show_default=False)] = None,
    scene: Annotated[str | None, typer.Option(help="Scene name for --source (default: the folder name).", show_default=False)] = None,
    experts: Annotated[str | None, typer.Option("--experts", "-e", help="Comma-separated families (default: the config's train_experts.families).", show_default=False)] = None,
    student: Annotated[str | None, typer.Option("--student", help="Family to distil the MoE into (default: the first family).", show_default=False)] = None,
    chunk_frames: Annotated[
        int | None,
        typer.Option("--chunk-frames", help="Train the sequence in chunks of this many frames (e.g. 150 for N3V's 300), "
                     "stitched into one model for render and bench; needs --dataset.", show_default=False),
    ] = None,
    executor: ExecutorOpt = None,
    timeout_min: TimeoutOpt = None,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    mem_gb: MemOpt = None,
    cpus: CpusOpt = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of one section: --set train_experts.hexplane.iterations=500, --set executor.qos=high.",
                     show_default=False),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Run a config's whole pipeline as jobs: experts as one job array, then train-router, then prune, distill
    and render, then bench, each waiting for its inputs (afterok on SLURM).

    Every job is a moegs command line writing into the shared workspace, so the artifacts (and ids)
    are those of running the commands by hand. With --executor slurm the command returns once
    everything is queued; with none, local or debug it returns when the pipeline is done. A requeued
    expert job resumes from its checkpoint. Follow the jobs with: moegs jobs
    With --chunk-frames N each chunk of N frames gets its own experts, router, pruned and distilled MoE;
    moegs stitch joins each model's chunks, and render and bench see one model over all frames.
    Example: moegs run examples/n3v.yaml --source data/n3v/coffee_martini --executor slurm --partition gpu
    """
    if (source is None) == (dataset is None):
        raise InputError("moegs run: give exactly one of --source (a capture to preprocess) or --dataset (an artifact)")
    if chunk_frames is not None and dataset is None:
        raise InputError("--chunk-frames needs --dataset (the frame count is known once preprocess has run)")
    if not Path(config).is_file():
        raise InputError(f"{config}: config file not found")
    unknown = sorted({o.split(".")[0] for o in overrides or []} - set(STAGE_SECTIONS) - {"executor"})
    if unknown or any("." not in o.partition("=")[0] for o in overrides or []):
        raise InputError(f"--set needs SECTION.KEY=VALUE with a section of {', '.join(STAGE_SECTIONS + ('executor',))}"
                         + (f" (got {', '.join(unknown)})" if unknown else ""))
    workspace = Path(state(ctx).workspace).resolve()
    config = Path(config).resolve()
    cfg = executor_config(config, overrides, cluster=executor, timeout_min=timeout_min, partition=partition,
                          account=account, mem_gb=mem_gb, cpus=cpus)
    families = check_stage_sections(config, overrides, experts)
    if not families:
        raise InputError(f"{config}: no expert families (train_experts.families or --experts)")
    if student is not None and student not in families:
        raise InputError(f"--student {student}: not one of the families this run trains ({', '.join(families)})")
    if source is not None and not Path(source).exists():
        raise InputError(f"{source}: capture folder not found")
    chunks: list[FrameRange] = []
    if dataset is not None:
        from moegs.artifacts import load_artifact

        dataset_artifact = load_artifact(dataset, workspace, expected_kind="dataset")
        dataset = str(dataset_artifact.path)
        if chunk_frames is not None:
            chunks = chunk_ranges(int(dataset_artifact.compat["n_frames"]), chunk_frames)
    if len(chunks) > 1:
        groups = chunked_pipeline_groups(workspace=workspace, config=config, dataset=str(dataset), chunks=chunks,
                                         families=families, student=student or families[0], overrides=overrides, force=force)
    else:
        groups = pipeline_groups(workspace=workspace, config=config, source=_absolute(source), dataset=dataset, fmt=fmt,
                                 scene=scene, families=families, student=student or families[0], overrides=overrides,
                                 force=force)
    done = submit(groups, cfg, workspace, run_command_line, label="run")
    report_submission(done, cfg, workspace)


@handle_errors
def jobs(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run (a run id, or 'latest').", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per job on stdout instead of a table.")] = False,
) -> None:
    """List the jobs submitted from this workspace: run, step, job id, executor, state and artifact.

    States: pending (not started), running, requeued (preempted or timed out; it resumes), done,
    failed (with the error), skipped (an input failed), died (a local job whose process is gone).
    SLURM jobs also show the scheduler's state (sacct) when it can be asked.
    """
    workspace = Path(state(ctx).workspace)
    store = JobStore(workspace)
    rows = store.rows()
    if run_id == "latest" and rows:
        run_id = rows[-1]["run"]
    if run_id is not None:
        rows = [r for r in rows if r["run"] == run_id]
        if not rows:
            raise InputError(f"{store.root / 'index.jsonl'}: no jobs of run {run_id}")
    for row in rows:
        row["scheduler"] = _scheduler_state(row) if row["executor"] == "slurm" else ""
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    if not rows:
        console.print(f"no jobs in {workspace}")
        return
    table = Table(title=f"jobs in {workspace}")
    for column in ("run", "step", "job", "executor", "state", "artifact"):
        table.add_column(column)
    for row in rows:
        state_text = row["state"] + (f" ({row['scheduler']})" if row["scheduler"] else "")
        if row.get("error") and row["state"] in ("failed", "skipped"):
            state_text += f": {row['error']}"
        artifact = ", ".join(_short_path(p, workspace) for p in row.get("artifacts", []))
        table.add_row(row["run"], row["step"], row["job_id"], row["executor"], state_text, artifact)
    console.print(table)


def _short_path(path: str, workspace: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(workspace.resolve()))
    except ValueError:
        return path


def _scheduler_state(row: dict) -> str:
    """SLURM's own view of an unfinished job (PENDING, RUNNING, PREEMPTED, ...); '' when sacct cannot tell."""
    if row["state"] in ("done", "failed", "skipped"):
        return ""
    try:
        import submitit
    except ImportError:
        return ""
    state = submitit.SlurmJob(folder=Path(row["logs"]) / "%j", job_id=row["job_id"]).state
    return "" if state == "UNKNOWN" else state
