"""The AVX2 build of the cpu kernels, checked in a child process that starts when the suite is collected.

The child targets haswell without AVX-512 (``FAST_MASKED_STORES`` off: 0/1-mask arithmetic instead of
masked stores), as most machines run the kernels, and runs one comparison against torch. It compiles
every kernel again (about a minute on one core), so ``conftest`` starts it beside the rest of the
suite and ``test_raster`` waits for its result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TEST_NAME = "test_cpu_avx2_code_matches_torch"
COMPARISON = "tests/test_raster.py::test_cpu_matches_torch[800-77-43-3]"
ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Child:
    process: subprocess.Popen
    output: IO[str]

    def result(self) -> tuple[int, str]:
        """Wait for the child; its exit status and output."""
        code = self.process.wait()
        self.output.seek(0)
        return code, self.output.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.close()


def environment() -> dict[str, str]:
    return dict(os.environ, **ENV)


def start() -> Child:
    """Run the comparison under the AVX2 target (output to a file: a pipe nobody reads could fill)."""
    output = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", COMPARISON],
        env=environment(), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True,
    )
    return Child(process, output)
