"""How OpenMP worker threads wait between parallel regions, decided before torch loads libgomp.

torch and numba each load a libgomp (two thread pools in one process), and a training step opens
hundreds of parallel regions (every torch op over a few thousand elements, every numba kernel).
libgomp reads its waiting policy from the environment once, when it loads:

- Passive (sleep on a futex at once) is the library's default: a spinning worker of one pool takes a
  core from the threads of the other, and on a loaded machine from other processes (a 2-core test
  run once went from 6 s to 95 s under load with libgomp's default, 300,000 spins or ~3 ms). Its cost
  is a wake-up per region.
- The ``moegs`` command spins briefly instead (``GOMP_SPINCOUNT`` 3000, some tens of microseconds):
  the next region of the same step usually starts within that. 2-core AVX2 Zen 3, ``python -m
  moegs.bench_step`` against ``GOMP_SPINCOUNT=0``, alternated: hexplane 59 / 50 -> 46 / 41 ms per
  step, embedding 68 / 59 -> 45 / 43, polynomial 30 -> 25. With one other busy process on the two
  cores it costs instead (hexplane 65 -> 98 ms), so several moegs processes on one small machine
  (the local executor's parallel jobs, ``pytest -n``) wait passively, and so should a loaded machine.

A value the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is never overridden.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_VARIABLE = "GOMP_SPINCOUNT"
POLICY_VARIABLE = "OMP_WAIT_POLICY"
CLI_SPIN_COUNT = 3000
"""Spins before a libgomp worker sleeps in the ``moegs`` command (~100 spins per microsecond)."""

USER_SET = frozenset(name for name in (SPIN_VARIABLE, POLICY_VARIABLE) if name in os.environ)
"""The variables the environment held when moegs was first imported, before it set any."""


def wait_passively_by_default(environ: MutableMapping[str, str] = os.environ) -> None:
    """The library's default: passive waiting unless the environment says otherwise."""
    environ.setdefault(POLICY_VARIABLE, "PASSIVE")


def spin_briefly(environ: MutableMapping[str, str] = os.environ, user_set: frozenset[str] | None = None) -> bool:
    """The command's setting: a short spin, unless the user chose a policy or a spin count.

    Returns whether it was set. After torch's import it reaches only numba's pool (if not yet started)."""
    if _user_chose(user_set):
        return False
    environ[SPIN_VARIABLE] = str(CLI_SPIN_COUNT)
    return True


def wait_passively_in_children(environ: MutableMapping[str, str] = os.environ, user_set: frozenset[str] | None = None) -> None:
    """Before starting several moegs processes on this machine: they inherit passive waiting (see the
    module docstring), unless the user chose a policy or a spin count."""
    if not _user_chose(user_set):
        environ[SPIN_VARIABLE] = "0"


def _user_chose(user_set: frozenset[str] | None) -> bool:
    """Whether the user set either variable (None: as recorded at import; read at call time, so tests can replace it)."""
    return bool(USER_SET if user_set is None else user_set)


def describe(environ: MutableMapping[str, str] = os.environ) -> str:
    """This process's waiting setting as the benchmarks print it."""
    if SPIN_VARIABLE in environ:
        return f"{SPIN_VARIABLE}={environ[SPIN_VARIABLE]}"
    return f"{POLICY_VARIABLE}={environ.get(POLICY_VARIABLE, 'unset')}"
