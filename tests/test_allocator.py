"""moegs.allocator: with the thresholds raised, a loop that frees and re-allocates the same buffers
stops page-faulting them in again (counted by the kernel, so the test does not depend on timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = """
import json, resource, sys
import torch
if sys.argv[1] == "retain":
    from moegs.allocator import retain_freed_memory
    assert retain_freed_memory()
def step(i):
    # one step's activations; the Gaussian count grows with densification, so sizes creep up
    a = torch.rand(8000 + 16 * i, 64)
    b = torch.relu(a) * 2.0
    return float(b.sum())
for i in range(5):
    step(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(5, 55):
    step(i)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; elsewhere nothing is changed")
def test_retained_blocks_are_not_faulted_in_again():
    default, retained = _faults("default"), _faults("retain")
    # 50 steps of ~2 MB buffers a little larger each step: by default each one is a fresh mmap above
    # glibc's (dynamic) threshold, ~500 faults of 4 kB per buffer; retained, only the heap's growth faults
    assert default >= 20000, default
    assert retained < default / 10, (default, retained)


def test_retain_freed_memory_is_idempotent():
    from moegs.allocator import retain_freed_memory

    first = retain_freed_memory()
    assert retain_freed_memory() is first
