"""How many threads a pool of independent jobs gets: one rule for every stage that runs them."""

from __future__ import annotations

import os


def pool_size(jobs: int, requested: int | None = None, cap: int | None = None) -> int:
    """``requested`` threads, or one per core (at most ``cap``, where each job holds a lot of memory);
    never more than there are ``jobs``, and at least one."""
    cores = os.cpu_count() or 1
    return max(1, min(jobs, requested or (cores if cap is None else min(cores, cap))))
