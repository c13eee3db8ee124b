"""The ``moegs`` command: one subcommand per pipeline stage, plus ``ls``, ``info`` and ``gc``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from moegs import __version__
from moegs.artifacts import COMPLETE, DAMAGED, load_artifact, scan_workspace
from moegs.errors import MoegsError
from moegs.progress import console
from moegs_cli import cluster_commands, data_commands, maintenance_commands, output_commands, train_commands, view_commands
from moegs_cli.common import handle_errors, setup_logging, state

app = typer.Typer(
    name="moegs",
    help=(
        "Reconstruct dynamic scenes from multi-view video with a Mixture of Experts of dynamic 3D "
        "Gaussian Splatting models. Every stage reads and writes versioned artifacts under the "
        "workspace (<workspace>/<scene>/<kind>/<id>/manifest.json); a stage whose output already "
        "exists does nothing unless --force. Its OpenMP threads spin briefly between operations, faster on "
        "cores it has to itself: on a busy or shared machine run it with GOMP_SPINCOUNT=0."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"moegs {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Where artifacts live.", envvar="MOEGS_WORKSPACE")] = Path("runs"),
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Global options; see each command's --help."""
    setup_logging(log_level)
    state(ctx).workspace = workspace


data_commands.register(app)
train_commands.register(app)
output_commands.register(app)
cluster_commands.register(app)
maintenance_commands.register(app)
view_commands.register(app)


@app.command("ls")
@handle_errors
def ls(
    ctx: typer.Context,
    verify: Annotated[bool, typer.Option("--verify", help="Also hash every file (finds modified payloads).")] = False,
) -> None:
    """List the artifacts of the workspace: kind, id, scene, creation time, key metrics; damaged ones are marked."""
    workspace = state(ctx).workspace
    rows, damage = [], []
    for entry in scan_workspace(workspace):
        if entry.state == COMPLETE and entry.artifact is not None:
            artifact = entry.artifact
            status = "ok"
            if verify:
                try:
                    artifact.verify(full=True)
                except MoegsError as exc:
                    status = "DAMAGED"
                    damage.append(str(exc))
            scalars = [(k, v) for k, v in artifact.metrics.items() if isinstance(v, (int, float))][:4]
            metrics = ", ".join(f"{k}={_short(v)}" for k, v in scalars)
            rows.append((artifact.manifest.get("created_at", ""), artifact.scene, artifact.kind, artifact.short_id,
                         metrics, status))
        elif entry.state == DAMAGED:
            rows.append(("", entry.path.parent.parent.name, entry.path.parent.name, entry.path.name, "", "DAMAGED"))
            damage.append(f"{entry.path}: {entry.reason}")
    if not rows:
        console.print(f"no artifacts in {workspace}")
        return
    table = Table(title=f"artifacts in {workspace}")
    for column in ("scene", "kind", "id", "created") + (("status",) if damage else ()):
        table.add_column(column, no_wrap=True)
    table.add_column("metrics", overflow="fold")
    for created, scene, kind, short_id, metrics, status in sorted(rows, key=lambda r: (r[0] == "", r[0])):
        cells = [escape(scene), kind, escape(short_id), created[:19]]
        if damage:
            cells.append("[red]DAMAGED[/red]" if status != "ok" else status)
        table.add_row(*cells, metrics)
    console.print(table)
    for line in damage:
        console.print(f"[red]damaged[/red] {escape(line)}", highlight=False, soft_wrap=True)


@app.command("info")
@handle_errors
def info(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Artifact path, scene/kind/latest or scene/kind/<id prefix>.")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every file's sha256.")] = False,
) -> None:
    """Print one artifact's manifest (JSON on stdout)."""
    artifact = load_artifact(ref, state(ctx).workspace, verify=False)
    if verify:
        artifact.verify(full=True)
    typer.echo(json.dumps(artifact.manifest, indent=2))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    app(prog_name="moegs")
