"""A least-recently-used cache bounded by bytes, not by entry count.

Every cache in moegs (dataset frames, deformed Gaussians of frozen experts, distillation teacher
targets) holds values whose size depends on the capture (image size, Gaussian count), so a count
limit says nothing about memory. Here each entry is charged its real size and the oldest entries
are evicted until the total fits the budget. A budget of 0 turns the cache off; a value larger
than the whole budget is returned but not kept. Thread-safe: the frame prefetch thread and the
training loop share the dataset's cache.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from moegs.errors import InputError

V = TypeVar("V")

MB = 1 << 20


def budget_bytes(megabytes: float, knob: str) -> int:
    """A config budget in MB as bytes; a negative one is refused naming its knob."""
    if not megabytes >= 0:
        raise InputError(f"{knob} must be >= 0 MB (0 turns the cache off), got {megabytes}")
    return int(megabytes * MB)


def nbytes(value: Any) -> int:
    """Bytes held by a value: arrays and tensors by their storage, containers and dataclasses by their parts."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if value is None or isinstance(value, (int, float, bool, str)):
        return 0
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    raise TypeError(f"cannot size a cached value of type {type(value).__name__}")


class ByteLRUCache(Generic[V]):
    """``get``/``put``/``get_or_create`` with LRU eviction under ``budget_bytes``."""

    def __init__(self, budget_bytes: int, size_of: Callable[[Any], int] = nbytes) -> None:
        if budget_bytes < 0:
            raise InputError(f"cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used (the eviction order)."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V) -> V:
        """Store ``value`` (evicting the least recently used entries to fit) and return it."""
        size = self._size_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.budget_bytes:
                return value
            while self._bytes + size > self.budget_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
            self._entries[key] = (value, size)
            self._bytes += size
        return value

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        """The cached value of ``key``, or ``create()`` stored under it."""
        value = self.get(key)
        if value is None:
            value = self.put(key, create())
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
