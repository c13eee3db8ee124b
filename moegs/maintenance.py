"""``moegs gc``'s work: remove what dead builds left behind, keep what can be resumed, list damage.

Left behind by crashes: ``.partial`` folders and ``.lock`` files of processes that are gone, and
the hidden copies a ``--force`` commit moves an old artifact to. A ``.partial`` holding training
checkpoints can still be resumed, so it stays unless asked. Damaged artifacts are listed, never
deleted: they may be the only copy of something expensive.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from moegs import build_lock
from moegs.artifacts import (CHECKPOINTS, COMPLETE, DAMAGED, LOCK, PARTIAL, SCRATCH, STRAY, Entry,
                             finish_interrupted_commit, scan_workspace)
from moegs.errors import MoegsError
from moegs.storage import tree_size

_OWNER_PID = re.compile(r"\.replaced-(\d+)$|\.lock\.(\d+)\.tmp$")


@dataclass
class GcReport:
    """What gc did (or, with ``dry_run``, would do): (path, bytes) removed, kept with a reason, damaged."""

    removed: list[tuple[Path, int]] = field(default_factory=list)
    finished: list[Path] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)
    damaged: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(size for _, size in self.removed)


def collect_garbage(workspace: Path, *, dry_run: bool = False, include_resumable: bool = False,
                    verify: bool = True) -> GcReport:
    """Clean ``workspace``; ``verify`` also hashes every finished artifact to find damaged payloads."""
    report = GcReport()
    for entry in scan_workspace(workspace):
        if entry.state == LOCK:
            _lock(entry, report, dry_run)
        elif entry.state == PARTIAL:
            _partial(entry, report, dry_run, include_resumable)
        elif entry.state == SCRATCH:
            _scratch(entry, report, dry_run)
        elif entry.state == DAMAGED:
            report.damaged.append((entry.path, entry.reason))
        elif entry.state == STRAY:
            report.kept.append((entry.path, "not a moegs name; left alone"))
        elif entry.state == COMPLETE and verify and entry.artifact is not None:
            try:
                entry.artifact.verify(full=True)
            except MoegsError as exc:
                report.damaged.append((entry.path, str(exc).split(": ", 1)[-1]))
    return report


def _lock(entry: Entry, report: GcReport, dry_run: bool) -> None:
    if not build_lock.lock_is_stale(entry.path):
        owner = build_lock.read_owner(entry.path)
        report.kept.append((entry.path, f"held by {owner.describe() if owner else 'a live process'}"))
        return
    _remove(entry.path, report, dry_run)


def _partial(entry: Entry, report: GcReport, dry_run: bool, include_resumable: bool) -> None:
    lock = entry.path.with_name(entry.path.name[: -len(".partial")] + ".lock")
    if lock.exists() and not build_lock.lock_is_stale(lock):
        report.kept.append((entry.path, "a live build is writing it"))
        return
    if not dry_run and finish_interrupted_commit(entry.path):
        report.finished.append(entry.path)
        return
    checkpoints = entry.path / CHECKPOINTS
    if checkpoints.is_dir() and any(checkpoints.iterdir()) and not include_resumable:
        size = tree_size(entry.path) / 1e6
        report.kept.append((entry.path, f"holds resumable checkpoints ({size:.1f} MB; --include-resumable removes it)"))
        return
    _remove(entry.path, report, dry_run)


def _scratch(entry: Entry, report: GcReport, dry_run: bool) -> None:
    match = _OWNER_PID.search(entry.path.name)
    if match is not None:
        pid = int(match.group(1) or match.group(2))
        if build_lock.is_held(build_lock.LockOwner(pid=pid)):
            report.kept.append((entry.path, f"pid {pid} is still running"))
            return
    _remove(entry.path, report, dry_run)


def _remove(path: Path, report: GcReport, dry_run: bool) -> None:
    size = tree_size(path) if path.is_dir() else path.lstat().st_size
    if not dry_run:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    report.removed.append((path, size))
