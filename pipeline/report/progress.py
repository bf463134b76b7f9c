"""A one-line progress counter on stderr (redrawn on a TTY, every 10 % otherwise)."""
from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress counter on stderr (redrawn on a TTY, every 10 % otherwise)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.bytes = total, label, 0, 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last_pct = -1

    def step(self, nbytes: int = 0) -> None:
        self.done += 1
        self.bytes += nbytes
        pct = int(100 * self.done / max(1, self.total))
        rate = self.bytes / max(1e-9, time.monotonic() - self.t0) / 1e6
        line = f"{self.label}: {self.done}/{self.total} tasks ({pct}%)"
        if self.bytes:  # stages that count bytes (reading) show the rate too
            line += f", {self.bytes / 1e9:.2f} GB, {rate:.0f} MB/s"
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        elif pct // 10 != self.last_pct // 10 or self.done == self.total:
            sys.stderr.write(line + "\n")
        self.last_pct = pct

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
