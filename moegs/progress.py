"""Rich progress bars on stderr, shared by every long-running loop.

Progress goes to stderr so stdout stays clean for machine-readable output. Rich turns animation
off by itself when stderr is not a terminal (CI logs get the final state only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class Bar:
    """One progress task: ``advance()`` and ``set_postfix(text)``."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task = task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def set_postfix(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, postfix=text)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar` of ``total`` steps labelled ``description``."""
    if not enabled:
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, postfix="")
        yield Bar(progress, task)
