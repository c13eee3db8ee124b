"""Progress without a terminal: plain, periodic log lines (step, postfix, it/s, ETA) when stderr is a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from moegs import progress
from moegs.errors import InputError

LOOP = """
import time
from moegs.progress import progress_bar
with progress_bar("train demo", 6) as bar:
    for step in range(6):
        time.sleep(0.02)
        bar.set_postfix(f"loss={0.5 / (step + 1):.4f} N={1000 + step}")
        bar.advance()
"""


def test_log_lines_when_stderr_is_a_file(tmp_path) -> None:
    log = tmp_path / "stderr.log"
    env = {**os.environ, progress.LOG_INTERVAL_ENV: "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with log.open("w") as stderr:
        subprocess.run([sys.executable, "-c", LOOP], stderr=stderr, env=env, check=True, timeout=120)
    lines = log.read_text().splitlines()
    assert len(lines) == 6, lines  # one per step (interval 0), the final state not repeated
    assert "\x1b[" not in log.read_text()  # plain text, no terminal codes
    # the first step is not timed (it may compile kernels): no rate yet, then one from the second on
    assert re.fullmatch(r"train demo: 1/6 \(17%\) \| loss=0\.5000 N=1000 \| elapsed \d+s", lines[0]), lines[0]
    second = re.fullmatch(r"train demo: 2/6 \(33%\) \| loss=0\.2500 N=1001 \| ([\d.]+) it/s \| elapsed \d+s \| ETA \d+s",
                          lines[1])
    assert second and float(second.group(1)) > 0, lines[1]
    assert lines[-1].startswith("train demo: 6/6 (100%) | loss=0.0833 N=1005 |") and "ETA" not in lines[-1]


@pytest.fixture
def file_console(monkeypatch, tmp_path):
    path = tmp_path / "log.txt"
    handle = path.open("w")
    monkeypatch.setattr(progress, "console", Console(file=handle, width=200))
    yield path, handle
    handle.close()


def test_interval_limits_lines_and_resume_does_not_inflate_rate(file_console, monkeypatch) -> None:
    path, handle = file_console
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "10")
    with progress.progress_bar("train x", 100) as bar:
        bar.advance(50)  # resumed at step 50: not work done in this run
        for _ in range(50):
            bar.advance()
    handle.flush()
    lines = path.read_text().splitlines()
    # clock ticks once per advance (and per line): a line about every 10 advances, plus the final one
    assert 4 <= len(lines) <= 7, lines
    assert lines[-1].startswith("train x: 100/100 (100%)")
    rates = [float(re.search(r"([\d.]+) it/s", line).group(1)) for line in lines]
    assert all(r <= 1.0 for r in rates), rates  # ~1 step per tick, not inflated by the 50 resumed steps


def test_a_slow_first_step_does_not_set_the_rate(file_console, monkeypatch) -> None:
    """A first step of 100 s (kernels compiling) then 1 s per step: the rate reads 1 it/s and the ETA
    the steps left, not 100 s per step."""
    path, handle = file_console
    times = iter([0.0, 100.0, 100.0] + [100.0 + k for k in range(1, 30) for _ in (0, 1)])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(times))
    bar = progress.LogBar("train z", 20, interval=0.0)
    bar.advance()  # clock 100: the first step's end, a line without a rate
    for _ in range(9):
        bar.advance()
    handle.flush()
    lines = path.read_text().splitlines()
    assert "it/s" not in lines[0] and "ETA" not in lines[0], lines[0]
    assert lines[-1] == "train z: 10/20 (50%) | 1.00 it/s | elapsed 1m49s | ETA 10s", lines[-1]


def test_terminal_gets_a_bar_not_lines(monkeypatch, tmp_path) -> None:
    path = tmp_path / "tty.txt"
    with path.open("w") as handle:
        monkeypatch.setattr(progress, "console", Console(file=handle, force_terminal=True, width=120))
        with progress.progress_bar("train y", 3) as bar:
            assert not isinstance(bar, progress.LogBar)
            bar.advance(3)
    assert "train y" in path.read_text()


@pytest.mark.parametrize("value", ["soon", "-3", "nan"])
def test_bad_interval_is_refused(monkeypatch, value) -> None:
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, value)
    with pytest.raises(InputError, match=progress.LOG_INTERVAL_ENV):
        progress.log_interval()
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "")
    assert progress.log_interval() == progress.DEFAULT_LOG_INTERVAL
