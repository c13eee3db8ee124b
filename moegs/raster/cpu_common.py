"""What the `cpu` backend's numba parts (projection, binning, compositing; also the CPU SSIM)
share: the compute dtype, fastmath flags, tensor -> array conversion and thread control."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch
from torch import Tensor

# Multiply-adds may be fused; NaN/inf semantics stay exact. No reassociation: with it, LLVM
# vectorised the sums differently in the JIT and in numba's cached object code, so the kernels
# loaded from the cache computed other values than those just compiled (the first run on a machine
# trained other weights than later runs). Without it a loop with a running sum stays scalar, so the
# kernels' sums over pixels are vector code written out in a fixed order (`cpu_lanes`).
FASTMATH = {"contract", "nsz"}


def _target_has_avx512() -> bool:
    """Whether numba compiles for AVX-512 (host features, or NUMBA_CPU_FEATURES when set; an empty
    feature string, as in AVX2 emulation, counts as no)."""
    import llvmlite.binding as llvm

    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features


# A kernel constant (numba freezes globals at compile time, and caches per target CPU): masked
# stores are one cheap instruction with AVX-512's mask registers, but microcoded on AMD's AVX2
# (vmaskmovps) and scalarised on NEON, so the compositing kernels write conditional updates as
# selects only here and as exact 0/1-mask arithmetic elsewhere.
FAST_MASKED_STORES = _target_has_avx512()


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 input (gradcheck), float32 for anything else: numba compiles one
    specialisation per dtype and has no float16."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_numpy(x: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A contiguous CPU array of x in dtype, sharing memory when x already is one."""
    return x.detach().to(device="cpu", dtype=dtype).contiguous().numpy()


@contextmanager
def threads_for(work: int, min_parallel: int, chunksize: int = 0) -> Iterator[None]:
    """All numba threads when `work` reaches `min_parallel`, else one thread: waking the pool
    costs ~50 us per kernel launch, which on small inputs (or a loaded machine) exceeds the work
    itself; each kernel measures its own crossover. chunksize 1 schedules prange iterations one
    at a time (for a few costly, uneven iterations such as tiles); the default 0 splits the range
    statically, as cheap per-item loops need (one at a time costs ~0.1 us per iteration)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(previous if work >= min_parallel else 1)
    try:
        with numba.parallel_chunksize(chunksize):
            yield
    finally:
        numba.set_num_threads(previous)
