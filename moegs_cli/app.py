"""The ``moegs`` command: one subcommand per pipeline stage, plus ``ls`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moegs import __version__
from moegs.artifacts import list_artifacts, load_artifact
from moegs.progress import console
from moegs_cli import data_commands, output_commands, train_commands, view_commands
from moegs_cli.common import handle_errors, setup_logging, state

app = typer.Typer(
    name="moegs",
    help=(
        "Reconstruct dynamic scenes from multi-view video with a Mixture of Experts of dynamic 3D "
        "Gaussian Splatting models. Every stage reads and writes versioned artifacts under the "
        "workspace (<workspace>/<scene>/<kind>/<id>/manifest.json); a stage whose output already "
        "exists does nothing unless --force."
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
view_commands.register(app)


@app.command("ls")
@handle_errors
def ls(ctx: typer.Context) -> None:
    """List the finished artifacts of the workspace: kind, id, scene, creation time, key metrics."""
    artifacts = list_artifacts(state(ctx).workspace)
    table = Table(title=f"artifacts in {state(ctx).workspace}")
    for column in ("scene", "kind", "id", "created", "metrics"):
        table.add_column(column)
    for artifact in artifacts:
        scalars = [(k, v) for k, v in artifact.metrics.items() if isinstance(v, (int, float))][:4]
        metrics = ", ".join(f"{k}={_short(v)}" for k, v in scalars)
        table.add_row(artifact.scene, artifact.kind, artifact.short_id, artifact.manifest.get("created_at", "")[:19], metrics)
    console.print(table) if artifacts else console.print(f"no artifacts in {state(ctx).workspace}")


@app.command("info")
@handle_errors
def info(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Artifact path, scene/kind/latest or scene/kind/<id prefix>.")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every file's sha256.")] = False,
) -> None:
    """Print one artifact's manifest (JSON on stdout)."""
    artifact = load_artifact(ref, state(ctx).workspace, verify=verify)
    typer.echo(json.dumps(artifact.manifest, indent=2))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    app(prog_name="moegs")
