"""Measuring one command on a shared Linux machine: wall, CPU (user and system apart), peak memory per process
and of the process tree, and the CPU other programs used meanwhile.

Each command runs as a fresh process under a tiny Python wrapper that `subprocess.run`s it and reports its own
wall time and `getrusage(RUSAGE_CHILDREN)`: user and system CPU of every reaped descendant (Dask's worker
processes are joined by their nanny, so their CPU is included) and ru_maxrss, the largest single process.
Meanwhile the harness samples /proc every 0.2 s: the summed RSS of the whole tree (its peak; shared pages
are counted once per process, so it slightly overstates multi-process peers) and each process's VmHWM (its own
peak RSS, exact even between samples), labelled by role (main, worker = a multiprocessing child, helper).
Other programs' CPU = the machine's busy CPU (/proc/stat, idle and iowait excluded) during the run minus the
command's CPU and the harness's own sampling CPU.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_EVERY = 0.2
TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

# Runs one command; writes {"wall", "cpu_user", "cpu_sys", "maxrss_kb", "returncode"} as JSON to argv[1].
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
               "returncode": rc}, f)
"""


class Failed(RuntimeError):
    """The measured command exited non-zero or timed out."""


def busy_cpu_seconds() -> float:
    """CPU seconds spent so far by everything on the machine (idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class TreeSampler:
    """Peak summed RSS of a process's descendants, each one's VmHWM and role, and their CPU (a cross-check)."""

    def __init__(self, pid: int):
        self.pid, self.peak_rss, self.procs = pid, 0, {}  # pid -> {"role", "hwm", "cpu", "cmd"}

    def sample(self) -> None:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = set(), {self.pid}
        while frontier:
            frontier = {p for p, pp in parent.items() if pp in frontier} - tree
            tree |= frontier
        total = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                rss = _kb(status, "VmRSS:") * 1024
                hwm = _kb(status, "VmHWM:") * 1024
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            info = self.procs.get(pid)
            if info is None:
                cmd = _cmdline(pid)
                info = self.procs[pid] = {"role": _role(pid, parent, self.pid, cmd), "hwm": 0, "cpu": 0.0,
                                          "cmd": cmd[:200]}
            info["hwm"] = max(info["hwm"], hwm)
            info["cpu"] = max(info["cpu"], (int(fields[11]) + int(fields[12])) / TICK)
        self.peak_rss = max(self.peak_rss, total)

    def peaks(self) -> dict:
        by_role = {}
        for info in self.procs.values():
            by_role.setdefault(info["role"], []).append(info["hwm"])
        return {role: sorted(v, reverse=True) for role, v in by_role.items()}


def _kb(status: str, key: str) -> int:
    for line in status.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0  # kernel threads and zombies have no Vm lines


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _role(pid: int, parent: dict, wrapper: int, cmd: str) -> str:
    if "resource_tracker" in cmd or "semaphore_tracker" in cmd:
        return "helper"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "forkserver" in cmd:
        return "worker"
    if parent.get(pid) == wrapper:
        return "main"
    return "child"


def measure(cmd: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 3600) -> dict:
    """Run `cmd` (a fresh process) under the rusage wrapper, sampling its tree; stdout/stderr go to log.out/.err.
    Returns the figures plus the command's stdout; raises Failed if it exits non-zero or times out."""
    usage = log.with_suffix(".usage.json")
    usage.unlink(missing_ok=True)
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        busy0, own0 = busy_cpu_seconds(), own_cpu_seconds()
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(usage), *cmd], stdout=out, stderr=err,
                                env=env, cwd=cwd, start_new_session=True)
        sampler, deadline = TreeSampler(proc.pid), time.monotonic() + timeout
        while proc.poll() is None:
            sampler.sample()
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
                proc.wait()
                raise Failed(f"timed out after {timeout:.0f} s: {' '.join(cmd)} (log: {err_path})")
            time.sleep(SAMPLE_EVERY)
        busy, own = busy_cpu_seconds() - busy0, own_cpu_seconds() - own0
    if not usage.exists():
        raise Failed(f"the wrapper died: {' '.join(cmd)} (log: {err_path})")
    r = json.loads(usage.read_text())
    if r["returncode"] != 0:
        tail = err_path.read_text()[-3000:]
        raise Failed(f"exit {r['returncode']}: {' '.join(cmd)}\n--- {err_path} (tail):\n{tail}")
    r["cpu"] = r["cpu_user"] + r["cpu_sys"]
    peaks = sampler.peaks()
    workers = peaks.get("worker", [])
    r.update(
        other_cpu=max(0.0, busy - r["cpu"] - own), harness_cpu=own, peak_rss_tree=sampler.peak_rss,
        process_peaks=peaks, worker_peak_rss=workers[0] if workers else None, workers_seen=len(workers),
        cpu_sampled=sum(p["cpu"] for p in sampler.procs.values()), stdout=out_path.read_text(),
    )
    r["disturbed"] = r["other_cpu"] > max(2.0, 0.05 * r["wall"] * NCPU)
    return r


def settle(max_wait: float, say) -> float:
    """Flush written pages outside the timed part, then wait (up to max_wait s) until other programs leave the
    cores idle for 3 s in a row. Returns the seconds waited."""
    os.sync()
    t0 = time.monotonic()
    quiet = 0
    while quiet < 3 and time.monotonic() - t0 < max_wait:
        before = busy_cpu_seconds()
        time.sleep(1)
        quiet = quiet + 1 if busy_cpu_seconds() - before < 0.1 else 0
    waited = time.monotonic() - t0
    if quiet < 3 and max_wait > 0:
        say(f"    (the machine is still busy after {max_wait:.0f} s; measuring anyway)")
    return waited


def machine() -> dict:
    import platform

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor() or "?")
    return {"cores": NCPU, "ram_gib": round(ram / 2**30, 1), "cpu_model": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": list(os.getloadavg())}
