"""Shared CLI plumbing: global state, error-to-exit-code mapping, common options."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rich.logging import RichHandler
from rich.markup import escape

from moegs import interrupts
from moegs.errors import MoegsError
from moegs.progress import console
from moegs.storage import exhausted_reason
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
    """Turn known errors into one red line on stderr and their exit code (traceback with MOEGS_DEBUG=1).

    ``MoegsError`` carries its own code; an ``OSError`` (read-only or full disk, a file where a
    folder should be, no permission) becomes one line naming the path; Ctrl-C exits 130 and offers
    ``--resume`` only to commands that have it.
    """
    resumable = "resume" in inspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with interrupts.watching():
            try:
                result = func(*args, **kwargs)
                interrupts.check()  # a library that swallowed Ctrl-C must not turn it into success
                return result
            except KeyboardInterrupt:
                _interrupted(resumable)
            except MoegsError as exc:
                if interrupts.received():
                    _interrupted(resumable)  # e.g. ffmpeg killed by the same Ctrl-C reads as a corrupt video
                _fail(str(exc), exc.exit_code)
            except OSError as exc:
                if interrupts.received():
                    _interrupted(resumable)
                _fail(describe_os_error(exc), 2 if exc.errno in INPUT_ERRNOS else 1)
            except Exception as exc:
                if interrupts.received():
                    _interrupted(resumable)  # e.g. an extension import cut short by Ctrl-C
                reason = exhausted_reason(exc)
                if reason is None:
                    raise
                _fail(f"{reason} ({_first_line(exc)})", 1)

    return wrapper  # type: ignore[return-value]


INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
OS_ERROR_HINTS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (is the workspace read-only?)",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file-size limit is reached",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists and is in the way",
}


def describe_os_error(exc: OSError) -> str:
    """'<path>: <what went wrong>' for an OSError, naming both paths of a failed rename."""
    what = OS_ERROR_HINTS.get(exc.errno or -1) or exc.strerror or _first_line(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(str(os.fsdecode(p)) for p in paths) if paths else "(no path)"
    return f"{where}: {what}"


def _interrupted(resumable: bool) -> None:
    hint = ("unfinished work stays in .partial; rerun with --resume to continue from its last checkpoint"
            if resumable else "nothing unfinished was committed; rerun to start it again")
    console.print(f"[red]interrupted[/red]: {hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=130) from None


def _fail(message: str, code: int) -> None:
    if os.environ.get("MOEGS_DEBUG"):
        console.print(traceback.format_exc(), markup=False, highlight=False)
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
