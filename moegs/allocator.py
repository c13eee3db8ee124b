"""glibc malloc settings for training loops: keep freed blocks mapped for the next step to reuse.

Why: a training step allocates and frees the same few megabytes every step (the deformation MLPs'
activations and their gradients, the rasteriser's image buffers). By default glibc serves a block
above its mmap threshold (128 kB at start, raised on the fly) with a fresh ``mmap`` and gives the
top of its heap back to the kernel once 128 kB of it is free, so every step page-faults its buffers
in again and the kernel zeroes each page. Measured at the demo preset: ~1,900 minor faults per
HexPlane step, against ~200 with the thresholds below (``python -m moegs.bench_step`` runs with
and without them). Peak memory is unchanged; the process only keeps what it already had.

Other C libraries (macOS, musl) have no ``mallopt``: nothing is changed there, and
:func:`retain_freed_memory` says so by returning False.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("moegs")

# mallopt parameter numbers (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
"""Blocks below this come from the heap and are reused (glibc's largest allowed threshold on 64-bit);
larger ones are mapped and unmapped as before, since their page faults are small beside the work on them."""
TRIM_THRESHOLD_BYTES = 1 * 2**30
"""Free memory at the heap top kept for reuse before glibc gives it back to the kernel."""

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module docstring).

    Returns whether the settings are in force: False where the C library has no ``mallopt``."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    try:  # the C library is already loaded into the process: look the symbol up there
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("malloc: no mallopt in this C library; allocator settings unchanged")
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.debug("malloc: mmap threshold %d MB, trim threshold %d MB (%s)", MMAP_THRESHOLD_BYTES >> 20,
              TRIM_THRESHOLD_BYTES >> 20, "set" if ok else "refused")
    return ok
