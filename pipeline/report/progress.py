"""Progress on stderr: a rich progress bar on a terminal, a quiet line every ~10 % otherwise.

stdout is reserved for JSON lines, so the bar never touches it: rich's stdout redirection is switched off (a
status line printed while the bar runs still goes to stdout), and stderr writes during the bar are printed above
it. Two units:

- ``Progress(n_tasks, "read")`` + ``.step(nbytes=0)`` once per finished task (``nbytes``: uncompressed bytes
  that task read, shown as GB and MB/s when counted);
- ``Progress(total_bytes, "index", unit="bytes")`` + ``.advance(n)`` for byte-based work such as the gzip
  index pass (``n`` bytes more done).

Use it as a context manager or call ``.close()``; closing twice is harmless. ``listener`` (optional) gets a
plain dict ``{label, done, total, unit, bytes, seconds}`` at the start, at most every ``every`` seconds while
counting, and at close -- e.g. ``lambda p: live.publish(client, {"load_id": ..., **p})`` for the Dask page,
throttled because each ``Client.log_event`` is a round trip to the scheduler. A failing listener is ignored.
"""
from __future__ import annotations

import sys
import time

UNITS = ("tasks", "bytes")


def _to_sinks(p: dict) -> None:
    from .loads import notify

    notify({"event": "progress", **p})


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


class Progress:
    """Progress of `total` tasks (or bytes with ``unit="bytes"``), drawn on stderr."""

    def __init__(self, total: int, label: str, unit: str = "tasks", stream=None, listener=None,
                 every: float = 0.5):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.total, self.label, self.unit = max(0, int(total)), label, unit
        self.done = 0       # tasks finished (unit "tasks") or bytes done (unit "bytes")
        self.bytes = 0      # bytes counted by step(nbytes) or advance(n)
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream)
        self.t0 = time.monotonic()
        self.last_decile = -1
        self.closed = False
        self._bar = self._task = None
        # by default the reporting sinks hear of it (the live Dask page follows every stage that way)
        self.listener = listener if listener is not None else _to_sinks
        self.every, self._notified = every, float("-inf")
        if self.tty:
            self._start_bar()
        self._notify(force=True)

    # ---------------------------------------------------------------------------------------- counting
    def step(self, nbytes: int = 0) -> None:
        """One task finished (it read `nbytes`, if the stage counts bytes)."""
        self.bytes += nbytes
        self._moved(1)

    def advance(self, n: int) -> None:
        """`n` more units done: bytes for ``unit="bytes"``, tasks otherwise."""
        if self.unit == "bytes":
            self.bytes += n
        self._moved(n)

    def _moved(self, n: int) -> None:
        self.done += n
        if self.closed:
            return
        self._notify()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, extra=self._extra())
            return
        decile = min(10, 10 * self.done // max(1, self.total))  # 10 only when all is done
        if decile != self.last_decile:
            self._write(self.line())
            self.last_decile = decile

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, extra=self._extra())
            self._bar.stop()
        self._notify(force=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def snapshot(self) -> dict:
        """The state as plain data (what the listener gets)."""
        return {"label": self.label, "done": self.done, "total": self.total, "unit": self.unit,
                "bytes": self.bytes, "seconds": round(time.monotonic() - self.t0, 3)}

    def _notify(self, force: bool = False) -> None:
        if self.listener is None:
            return
        now = time.monotonic()
        if force or now - self._notified >= self.every:
            self._notified = now
            try:
                self.listener(self.snapshot())
            except Exception:  # noqa: BLE001 - progress reporting never fails a load
                pass

    # ---------------------------------------------------------------------------------------- drawing
    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.bytes / max(1e-9, time.monotonic() - self.t0)

    def line(self) -> str:
        """The plain progress line (what a non-terminal sees every ~10 %)."""
        pct = int(100 * self.done / max(1, self.total)) if self.total else 100
        if self.unit == "bytes":
            return (f"{self.label}: {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB ({pct}%), "
                    f"{self.rate() / 1e6:.0f} MB/s")
        line = f"{self.label}: {self.done}/{self.total} tasks ({pct}%)"
        if self.bytes:  # stages that count bytes (reading) show the rate too
            line += f", {_gb(self.bytes)}, {self.rate() / 1e6:.0f} MB/s"
        return line

    def _extra(self) -> str:
        if self.unit == "tasks" and self.bytes:
            return f"{_gb(self.bytes)} {self.rate() / 1e6:.0f} MB/s"
        return ""

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress as Bar,
                                   TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        console = Console(file=self.stream, force_terminal=True)
        if self.unit == "bytes":
            counts = [DownloadColumn(), TransferSpeedColumn()]
        else:
            counts = [MofNCompleteColumn(), TextColumn("tasks {task.fields[extra]}")]
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *counts,
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        redirect_stdout=False, redirect_stderr=self.stream is sys.stderr,
                        refresh_per_second=4)
        self._task = self._bar.add_task(self.label, total=self.total or None, extra="")
        self._bar.start()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
