"""Maintenance commands: ``gc`` (clean what dead builds left behind, list damaged artifacts)."""

from __future__ import annotations

from typing import Annotated

import typer

from moegs.maintenance import collect_garbage
from moegs.progress import console
from moegs_cli.common import handle_errors, state


def register(app: typer.Typer) -> None:
    app.command("gc")(gc)


@handle_errors
def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    include_resumable: Annotated[bool, typer.Option("--include-resumable", help="Also remove unfinished builds that hold resumable checkpoints.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Do not hash finished artifacts (finds only damaged manifests).")] = False,
) -> None:
    """Remove stale .partial folders and .lock files of dead processes, and list damaged artifacts.

    A .partial that a running build owns, or that holds resumable checkpoints, is kept (the
    latter unless --include-resumable). Damaged artifacts are listed, not deleted: rebuild them
    with --force. Example: moegs gc --dry-run
    """
    workspace = state(ctx).workspace
    report = collect_garbage(workspace, dry_run=dry_run, include_resumable=include_resumable, verify=not quick)
    verb = "would remove" if dry_run else "removed"
    for path, size in report.removed:
        console.print(f"{verb} {path} ({size / 1e6:.1f} MB)", highlight=False, markup=False, soft_wrap=True)
    for path in report.finished:
        console.print(f"finished the interrupted commit of {path}", highlight=False, markup=False, soft_wrap=True)
    for path, why in report.kept:
        console.print(f"kept {path}: {why}", highlight=False, markup=False, soft_wrap=True)
    for path, why in report.damaged:
        console.print(f"damaged {path}: {why}", style="red", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{verb} {len(report.removed)} entries ({report.freed_bytes / 1e6:.1f} MB) in {workspace}; "
                  f"{len(report.damaged)} damaged artifact(s)", highlight=False, markup=False, soft_wrap=True)
