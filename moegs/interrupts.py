"""Remember that Ctrl-C arrived, even when a library swallowed the KeyboardInterrupt.

C++ extensions see SIGINT too: pycolmap stops its worker thread and may return normally (or
raise its own error), ffmpeg children die and their readers report a "corrupt" stream, and an
import cut short becomes an ImportError. Python runs our handler in every case, so the flag it
sets is the reliable record: the CLI reports such a run as interrupted (exit 130), and a commit
refuses to finish an artifact built after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_received = False


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Record SIGINT (still raising KeyboardInterrupt as usual) for the duration; main thread only."""
    global _received
    _received = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received = False


def received() -> bool:
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C arrived while :func:`watching`, whatever happened to the first one."""
    if _received:
        raise KeyboardInterrupt


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt
