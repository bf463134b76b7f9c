"""pipeline.report.progress: a rich bar on a terminal (checked through a real pseudo-terminal), quiet lines
every ~10 % otherwise, and never a byte on stdout (which carries JSON lines only)."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from pipeline.report.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ not a terminal
def test_quiet_lines_every_tenth_of_the_tasks(capsys):
    p = Progress(40, "read")                      # today's interface: (total, label), step(nbytes), close()
    for _ in range(40):
        p.step(50_000_000)
    p.close()
    p.close()                                     # closing twice is harmless
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 11                       # 0 %, 10 %, ..., 100 %: one line per tenth, not per task
    assert lines[-1].startswith("read: 40/40 tasks (100%), 2.00 GB, ")
    assert lines[-1].endswith(" MB/s")
    assert [int(line.split("(")[1].split("%")[0]) // 10 for line in lines] == list(range(11))


def test_tasks_without_bytes_show_no_rate():
    s = io.StringIO()
    with Progress(3, "join", stream=s) as p:
        for _ in range(3):
            p.step()
    assert s.getvalue().splitlines() == ["join: 1/3 tasks (33%)", "join: 2/3 tasks (66%)", "join: 3/3 tasks (100%)"]


def test_byte_progress_for_the_index_pass():
    s = io.StringIO()
    with Progress(3_000_000_000, "index", unit="bytes", stream=s) as p:
        for _ in range(30):
            p.advance(100_000_000)
    lines = s.getvalue().splitlines()
    assert len(lines) == 11                       # 3 %, 10 %, 20 %, ..., 100 %
    assert lines[-1].startswith("index: 3.00/3.00 GB (100%), ")
    assert p.done == p.bytes == 3_000_000_000


def test_empty_total_and_bad_unit():
    s = io.StringIO()
    Progress(0, "read", stream=s).close()
    assert s.getvalue() == ""
    with pytest.raises(ValueError, match="unit"):
        Progress(1, "x", unit="rows")


# ------------------------------------------------------------------------------------------- a terminal
SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pipeline.report.progress import Progress
    p = Progress(10, "read")
    assert p.tty
    for i in range(10):
        p.step(100_000_000)
        if i == 4:   # a status line while the bar is drawn must still reach stdout, alone
            sys.stdout.write(json.dumps({"event": "load_status", "status": "RUNNING"}) + "\\n")
            sys.stdout.flush()
            sys.stderr.write("a human line on stderr\\n")
        time.sleep(0.06)
    p.close()
    with Progress(2_000_000_000, "index", unit="bytes") as b:
        for _ in range(4):
            b.advance(500_000_000)
            time.sleep(0.06)
""")


def _run_on_pty() -> tuple[str, str]:
    """Run SCRIPT with stderr on a pseudo-terminal (120 columns) and stdout on a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "TERM")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:                           # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return out, b"".join(chunks).decode(errors="replace")


def test_rich_bar_on_a_terminal_and_stdout_untouched():
    out, tty = _run_on_pty()
    assert [json.loads(line) for line in out.splitlines()] == [{"event": "load_status", "status": "RUNNING"}]
    assert "\x1b[" in tty                         # drawn with terminal control sequences (redrawn in place)
    assert "━" in tty                             # rich's bar
    assert "10/10" in tty and "100%" in tty       # tasks: M/N and the percentage
    assert "1.0 GB" in tty or "1.00 GB" in tty    # bytes read, shown next to the task count
    assert "2.0/2.0 GB" in tty                    # the byte-based bar of the index pass
    assert "a human line on stderr" in tty        # printed above the bar, not lost
    assert "read: " not in tty                    # no quiet lines on a terminal


# ------------------------------------------------------------------------------------------- a listener
def test_listener_gets_the_start_throttled_updates_and_the_end():
    seen = []
    with Progress(5, "read", stream=io.StringIO(), listener=seen.append, every=0) as p:
        for _ in range(5):
            p.step(10)
    assert [s["done"] for s in seen] == [0, 1, 2, 3, 4, 5, 5]
    assert seen[-1] == {"label": "read", "done": 5, "total": 5, "unit": "tasks", "bytes": 50,
                        "seconds": seen[-1]["seconds"]}
    seen.clear()
    with Progress(100, "index", unit="bytes", stream=io.StringIO(), listener=seen.append, every=3600) as p:
        for _ in range(10):
            p.advance(10)
    assert [s["done"] for s in seen] == [0, 100]            # start and close: the updates between are throttled


def test_a_failing_listener_is_ignored():
    def boom(_):
        raise RuntimeError("scheduler gone")
    s = io.StringIO()
    with Progress(2, "read", stream=s, listener=boom, every=0) as p:
        p.step()
        p.step()
    assert s.getvalue().splitlines()[-1] == "read: 2/2 tasks (100%)"
