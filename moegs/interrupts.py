"""Remember that Ctrl-C arrived, even when a library swallowed the KeyboardInterrupt.

C++ extensions see SIGINT too: pycolmap stops its worker thread and may return normally (or
raise its own error), ffmpeg children die and their readers report a "corrupt" stream, and an
import cut short becomes an ImportError. Python runs our handler in every case, so the flag it
sets is the reliable record: the CLI reports such a run as interrupted (exit 130), and a commit
refuses to finish an artifact built after Ctrl-C.

A scheduler's preemption signal has the same problem the other way round: submitit's handler
requeues the job and raises ``SystemExit`` wherever the signal lands, and inside a compiled
extension (a numba kernel's dispatcher) Python wraps that in ``SystemError``, or a library turns it
into its own error. :func:`relaying` records the handler's ``SystemExit``, so the job can end the
way the handler meant (:func:`raise_signal_exit`) instead of as a failure.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_received = False
_signal_exit: SystemExit | None = None


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


@contextlib.contextmanager
def relaying(signum: int) -> Iterator[None]:
    """Wrap the Python handler installed for ``signum`` so that a ``SystemExit`` it raises is recorded."""
    global _signal_exit
    _signal_exit = None
    original = signal.getsignal(signum)
    if not callable(original) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _recording(number: int, frame: FrameType | None) -> None:
        global _signal_exit
        try:
            original(number, frame)
        except SystemExit as exc:
            _signal_exit = exc
            raise

    signal.signal(signum, _recording)
    try:
        yield
    finally:
        signal.signal(signum, original)
        _signal_exit = None


def raise_signal_exit(cause: BaseException | None = None) -> None:
    """Re-raise the ``SystemExit`` a :func:`relaying` handler raised, if it did (whatever became of it
    on the way); any other error it raised (submitit's "not requeued") is a failure like the rest."""
    if _signal_exit is not None:
        raise _signal_exit from cause
