"""moegs.allocator: with the thresholds raised, a loop that frees and re-allocates the same buffers
stops page-faulting them in again (counted by the kernel, so the test does not depend on timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_CHILD = """
import json, resource, sys
import torch
if sys.argv[1] == "retain":
    from moegs.allocator import retain_freed_memory
    assert retain_freed_memory()
def step():
    a = torch.rand(8000, 64)          # 2 MB, like one MLP activation at the demo size
    b = torch.relu(a) * 2.0
    return float(b.sum())
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; elsewhere nothing is changed")
def test_retained_blocks_are_not_faulted_in_again():
    default, retained = _faults("default"), _faults("retain")
    # 50 steps x 2 MB buffers: glibc gives the heap top back after a step and faults it in again on
    # the next (500-1000 faults of 4 kB here, depending on where the buffers land); none once retained
    assert default >= 200, default
    assert retained < default / 10, (default, retained)


def test_retain_freed_memory_is_idempotent():
    from moegs.allocator import retain_freed_memory

    first = retain_freed_memory()
    assert retain_freed_memory() is first
