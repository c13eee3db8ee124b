"""Remember that Ctrl-C arrived, even when a library swallowed the KeyboardInterrupt.

C++ extensions see SIGINT too: pycolmap stops its worker thread and may return normally (or
raise its own error), ffmpeg children die and their readers report a "corrupt" stream, and an
import cut short becomes an ImportError. Python runs our handler in every case, so the flag it
sets is the reliable record: the CLI reports such a run as interrupted (exit 130), and a commit
refuses to finish an artifact built after Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_received = False


def install() -> None:
    """Record SIGINT and raise KeyboardInterrupt as usual (main thread only; elsewhere a no-op)."""
    global _received
    _received = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def received() -> bool:
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C arrived since :func:`install`, whatever happened to the first one."""
    if _received:
        raise KeyboardInterrupt


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt
