"""ByteLRUCache: eviction order, byte accounting, budget 0 = off."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from moegs.cache import ByteLRUCache, budget_bytes, nbytes
from moegs.errors import InputError


def block(n: int) -> np.ndarray:
    return np.zeros(n, np.uint8)


def test_evicts_least_recently_used_first() -> None:
    cache = ByteLRUCache(300)
    for key in "abc":
        cache.put(key, block(100))
    assert cache.get("a") is not None  # a becomes most recent: b is now the oldest
    cache.put("d", block(100))
    assert cache.keys() == ["c", "a", "d"] and "b" not in cache
    cache.put("e", block(150))  # needs two evictions
    assert cache.keys() == ["d", "e"] and cache.bytes_used == 250


def test_byte_accounting_and_replacement() -> None:
    cache = ByteLRUCache(1000)
    cache.put("x", block(400))
    cache.put("x", block(100))  # replacing a key frees the old value's bytes
    assert cache.bytes_used == 100 and len(cache) == 1
    cache.put("t", torch.zeros(10, dtype=torch.float64))
    assert cache.bytes_used == 180
    cache.clear()
    assert cache.bytes_used == 0 and len(cache) == 0


def test_value_larger_than_budget_is_returned_not_kept() -> None:
    cache = ByteLRUCache(100)
    cache.put("small", block(60))
    big = block(101)
    assert cache.put("big", big) is big
    assert cache.keys() == ["small"] and cache.bytes_used == 60


def test_budget_zero_is_off() -> None:
    cache = ByteLRUCache(0)
    calls = []
    for _ in range(3):
        cache.get_or_create("k", lambda: calls.append(1) or block(1))
    assert len(calls) == 3 and len(cache) == 0 and cache.bytes_used == 0 and cache.misses == 3


def test_get_or_create_computes_once_and_counts_hits() -> None:
    cache = ByteLRUCache(1 << 20)
    calls = []
    first = cache.get_or_create(("cam", 3), lambda: calls.append(1) or block(10))
    assert cache.get_or_create(("cam", 3), lambda: calls.append(1) or block(10)) is first
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_nbytes_of_structures() -> None:
    @dataclass
    class Pair:
        a: torch.Tensor
        b: torch.Tensor | None

    value = (Pair(torch.zeros(4, 3), None), {"m": np.zeros((2, 2), np.float64)})
    assert nbytes(value) == 4 * 3 * 4 + 2 * 2 * 8
    with pytest.raises(TypeError, match="cannot size"):
        nbytes(object())
    with pytest.raises(InputError, match=">= 0 bytes"):
        ByteLRUCache(-1)
    with pytest.raises(InputError, match="teacher_cache_mb must be >= 0 MB"):
        budget_bytes(-0.5, "teacher_cache_mb")
    assert budget_bytes(1.5, "x") == 3 << 19


def test_frozen_experts_keep_deformed_gaussians_within_their_budget() -> None:
    from moegs.cameras import Camera
    from moegs.experts import get_family
    from moegs.moe.render import FrozenExperts

    rng = np.random.default_rng(0)
    cls = get_family("polynomial")
    n = 40
    expert = cls.from_points(cls.config_class(), rng.normal(size=(n, 3)).astype(np.float32),
                             rng.random((n, 3)).astype(np.float32), rng.random(n).astype(np.float32), 8)
    camera = Camera("cam", 16, 12, np.array([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]]), np.eye(3), np.array([0, 0, 4.0]))
    one = nbytes(expert.deformed_at(0.0))  # geometry only: the polynomial family does not deform its SH
    assert one == n * (3 + 4 + 3 + 1) * 4
    frozen = FrozenExperts([expert], cache_mb=2.5 * one / 2**20)  # room for two times
    first = frozen.at(0, 0.0, camera)
    for t in (0.25, 0.5):
        frozen.at(0, t, camera)
    assert frozen._cache.keys() == [(0, 0.25), (0, 0.5)] and frozen._cache.bytes_used == 2 * one
    again = frozen.at(0, 0.0, camera)  # evicted: deformed again, same values
    assert torch.equal(again.means, first.means) and torch.equal(again.features, first.features)
    frozen.use_cache = False
    frozen.at(0, 0.75, camera)
    assert (0, 0.75) not in frozen._cache
    with pytest.raises(InputError, match="deformed_cache_mb must be >= 0"):
        FrozenExperts([expert], cache_mb=-1)
