"""SIGINT and SIGTERM during a command: `Interrupted` where the signal lands, and again before anything commits.

Python runs a signal handler on the main thread between two bytecodes, wherever the thread is. When that is
inside a gc callback or a `__del__` (distributed registers a gc callback for its diagnostics), the exception the
handler raises is printed as "Exception ignored in ..." and lost, and the command would run on. So the signal is
also remembered: `check()` raises it again, and the driver calls it while it waits for tasks, and the catalog
before every commit and before it makes a table (table/catalog.py). An interrupted command therefore never
commits, even when the first raise was swallowed; only what runs `recording()` still does: the load history,
which says the load was interrupted.
"""
from __future__ import annotations

import contextlib
import signal
from contextvars import ContextVar

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals this process got while `handled` was active (signal state is per process)
_recording: ContextVar[bool] = ContextVar("recording", default=False)


@contextlib.contextmanager
def handled():
    """Turn SIGINT and SIGTERM into `Interrupted` for the duration (the CLI's whole command)."""
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _received.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()


def check() -> None:
    """Raise `Interrupted` if a signal came, even one whose first raise was swallowed."""
    if _received:
        raise Interrupted(_received[0])


def check_commit() -> None:
    """`check()`, unless inside `recording()`: what the catalog runs before it commits."""
    if not _recording.get():
        check()


@contextlib.contextmanager
def recording():
    """Commits that record what happened (the load history) go through even after a signal."""
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


def _handler(signum, frame):
    _received.append(signum)
    # back to the defaults at once: a second Ctrl-C or SIGTERM while shutting down is not caught again
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
    raise Interrupted(signum)
