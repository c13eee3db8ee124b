"""Telling "the disk is full / the file-size limit is hit / the folder cannot be written" from other failures.

Writers report these differently: Python raises ``OSError`` with an errno, safetensors raises its
own error whose text carries "os error 28", torch.save raises a bare ``RuntimeError``. The
artifact layer needs one answer (remove the half-written ``.partial`` and print one line), so the
classification lives here, in one place.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
from pathlib import Path

FULL_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file-size limit is reached",
               errno.EDQUOT: "the disk quota is exceeded"}
_OS_ERROR_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
LOW_SPACE_BYTES = 1 << 20


def exhausted_reason(exc: BaseException, directory: Path | None = None) -> str | None:
    """'the disk is full' (or the file-size limit / quota) when ``exc`` comes from running out of room, else None."""
    for err in _chain(exc):
        number = err.errno if isinstance(err, OSError) else _errno_in_text(str(err))
        if number in FULL_ERRNOS:
            return FULL_ERRNOS[number]
    if directory is not None and not isinstance(exc, OSError):
        return _room_left_reason(Path(directory))
    return None


def _room_left_reason(directory: Path) -> str | None:
    """For writers that hide the errno: judge by the free space and by files at the RLIMIT_FSIZE limit."""
    try:
        if shutil.disk_usage(directory).free < LOW_SPACE_BYTES:
            return FULL_ERRNOS[errno.ENOSPC]
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            for root, _, names in os.walk(directory):
                if any(os.path.getsize(os.path.join(root, n)) >= limit - 4096 for n in names):
                    return FULL_ERRNOS[errno.EFBIG]
    except OSError:
        return None
    return None


def _errno_in_text(text: str) -> int | None:
    match = _OS_ERROR_TEXT.search(text)
    return int(match.group(1) or match.group(2)) if match else None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen


def tree_size(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
