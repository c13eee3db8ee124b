"""Progress on stderr, shared by every long-running loop: a live bar on a terminal, plain lines elsewhere.

Progress goes to stderr so stdout stays clean for machine-readable output. On a terminal it is a
rich bar. When stderr is a file or a pipe (log files, cluster jobs, CI) a bar would show only its
final state, so instead a plain line (step, total, the loop's postfix such as loss and Gaussians,
it/s, elapsed, ETA) is written every ``MOEGS_PROGRESS_SECONDS`` seconds (default 30) and once at
the end. The rate (and so the ETA) leaves out the first step, which may compile kernels.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console

from moegs.errors import InputError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

LOG_INTERVAL_ENV = "MOEGS_PROGRESS_SECONDS"
DEFAULT_LOG_INTERVAL = 30.0


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


class LogBar(Bar):
    """The same interface, writing a plain line at most every ``interval`` seconds (and at the end)."""

    def __init__(self, description: str, total: int, interval: float) -> None:
        super().__init__(None, None)
        self.description, self.total, self.interval = description, max(int(total), 0), interval
        self.done, self.postfix = 0, ""
        self._started = self._last = self._timed_from = time.perf_counter()
        self._first = 0
        self._logged_at = -1

    def advance(self, n: int = 1) -> None:
        now = time.perf_counter()
        if self.done == 0:
            # The rate is timed from the end of the first advance: a resumed loop first jumps to its
            # start step, and a fresh one's first step pays one-off costs (numba compiling the CPU
            # kernels: 40+ s on a first run), which made the first line's ETA read hours.
            self._first, self._timed_from = n, now
        self.done += n
        if now - self._last >= self.interval:
            self._last = now
            self.write()

    def set_postfix(self, text: str) -> None:
        self.postfix = text

    def line(self) -> str:
        now = time.perf_counter()
        elapsed, timed = now - self._started, now - self._timed_from
        rate = (self.done - self._first) / timed if timed > 0 else 0.0
        parts = [f"{self.description}: {self.done}/{self.total}"]
        if self.total:
            parts[0] += f" ({100.0 * self.done / self.total:.0f}%)"
        if self.postfix:
            parts.append(self.postfix)
        if rate > 0:
            parts.append(f"{rate:.2f} it/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return " | ".join(parts)

    def write(self) -> None:
        if self._logged_at == self.done:
            return
        self._logged_at = self.done
        console.print(self.line(), markup=False, highlight=False, soft_wrap=True)


def log_interval() -> float:
    """Seconds between plain progress lines (``MOEGS_PROGRESS_SECONDS``; 0 = every step)."""
    raw = os.environ.get(LOG_INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_LOG_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise InputError(f"{LOG_INTERVAL_ENV}={raw!r}: expected seconds between progress lines (a number >= 0)")
    return seconds


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar` of ``total`` steps labelled ``description``."""
    if not enabled:
        yield Bar(None, None)
        return
    if not console.is_terminal:
        bar = LogBar(description, total, log_interval())
        yield bar
        bar.write()
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
