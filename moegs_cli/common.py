"""Shared CLI plumbing: global state, error-to-exit-code mapping, common options."""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from moegs.errors import MoegsError
from rich.logging import RichHandler

from moegs.progress import console
from stages.common import StageResult

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalState:
    workspace: Path = Path("runs")


def state(ctx: typer.Context) -> GlobalState:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = GlobalState()
    return root.obj


def handle_errors(func: F) -> F:
    """Turn known errors into one red line on stderr and their exit code (traceback with MOEGS_DEBUG=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MoegsError as exc:
            if os.environ.get("MOEGS_DEBUG"):
                console.print(traceback.format_exc(), markup=False, highlight=False)
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]: unfinished work stays in .partial; rerun (with --resume) to continue")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str) -> None:
    """Log through the shared stderr console (resolved at write time, so redirected streams keep working)."""
    handler = RichHandler(console=console, show_time=False, show_path=False, show_level=False, markup=False)
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(message)s",
                        handlers=[handler], force=True)


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML file with one section per stage (see examples/).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key of this stage: --set key=value (dotted keys for sections).", show_default=False),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild even if an artifact with the same id exists.")]


def report(result: StageResult, label: str = "") -> None:
    """One status line on stderr (scalar metrics only) and the artifact path on stdout."""
    artifact = result.artifact
    verb = "up to date" if result.up_to_date else "wrote"
    scalars = {k: v for k, v in artifact.metrics.items() if isinstance(v, (int, float, str))}
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())
    console.print(f"{verb} {artifact.kind} {artifact.short_id}{' (' + label + ')' if label else ''}: {metrics}")
    typer.echo(str(artifact.path))
