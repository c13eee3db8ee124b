"""One builder per artifact id: a lock file naming its owner so that a stale lock can be told apart.

A pid alone is not enough: after a crash or a reboot the pid can belong to another process, and a
lock trusting it would block the build forever. The lock records the pid, that process's start
time (from ``/proc``) and the boot id; a lock counts as held only while all three still match.
Where ``/proc`` is missing (not Linux) it falls back to "the pid is alive".
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from moegs.errors import MoegsError


@dataclass(frozen=True)
class LockOwner:
    """Who wrote a lock file: pid, process start time (clock ticks since boot), boot id and host."""

    pid: int
    start: int | None = None
    boot: str | None = None
    host: str | None = None

    def describe(self) -> str:
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"pid {self.pid}{where}"


def current_owner() -> LockOwner:
    pid = os.getpid()
    return LockOwner(pid=pid, start=process_start_time(pid), boot=boot_id(), host=socket.gethostname())


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in a lock file (JSON, or a bare pid from older versions); None if unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(data, int):
        return LockOwner(pid=data)
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    start = data.get("start")
    return LockOwner(pid=data["pid"], start=start if isinstance(start, int) else None,
                     boot=data.get("boot") if isinstance(data.get("boot"), str) else None,
                     host=data.get("host") if isinstance(data.get("host"), str) else None)


def is_held(owner: LockOwner) -> bool:
    """Whether the process that wrote the lock still runs (a reused pid or another boot does not count)."""
    if owner.host is not None and owner.host != socket.gethostname():
        return True  # cannot check another machine's processes: assume it is still building
    if owner.boot is not None and boot_id() not in (None, owner.boot):
        return False
    if not _pid_alive(owner.pid):
        return False
    if owner.start is not None:
        now = process_start_time(owner.pid)
        if now is not None and now != owner.start:
            return False
    return True


def lock_is_stale(path: Path) -> bool:
    """A lock file whose writer is gone (or that cannot be parsed) may be removed."""
    owner = read_owner(path)
    return owner is None or not is_held(owner)


def held_by_another(path: Path) -> bool:
    """A lock file exists and a live process other than this one wrote it."""
    owner = read_owner(path) if Path(path).exists() else None
    return owner is not None and owner.pid != os.getpid() and is_held(owner)


def acquire(path: Path, what: Path) -> None:
    """Create ``path`` exclusively for this process, replacing a stale lock; refuse a held one naming ``what``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = current_owner()
    tmp = path.with_name(f".{path.name}.{me.pid}.tmp")
    tmp.write_text(json.dumps({"pid": me.pid, "start": me.start, "boot": me.boot, "host": me.host}))
    try:
        for _ in range(3):
            try:
                _create_exclusively(tmp, path)
                return
            except FileExistsError:
                owner = read_owner(path)
                if owner is not None and owner.pid != me.pid and is_held(owner):
                    raise MoegsError(f"{what}: another moegs process ({owner.describe()}) is building this "
                                     f"artifact; if it is gone, remove {path}") from None
                path.unlink(missing_ok=True)  # stale: its owner is gone (or it is ours from an earlier attempt)
    finally:
        tmp.unlink(missing_ok=True)
    raise MoegsError(f"{path}: could not take the build lock")


def _create_exclusively(tmp: Path, path: Path) -> None:
    """Hard-link the filled-in ``tmp`` to ``path`` (atomic: the lock never exists without its owner in it);
    where the file system has no hard links, create ``path`` with O_EXCL and write it."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(tmp.read_text())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
