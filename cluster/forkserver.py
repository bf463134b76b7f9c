"""LocalCluster workers forked from one process that has imported the pipeline once (`impressions.worker-start`).

A spawned worker is a fresh interpreter: it imports distributed, pyarrow, pyiceberg and the stage modules itself
(~1.5 s of CPU per worker, and its first task waits for them). multiprocessing's *fork server* is one process that
imports them once and forks every worker from that state, its objects frozen out of the garbage collector's way
(cluster/frozen.py). `start` launches it as a command begins, so it imports while the driver checks its sources
and opens the catalog; by the time the LocalCluster starts, each worker is a fork away from ready.

A forked worker inherits the server's environment, working directory and malloc settings from when the server
started, not the driver's at the time of the fork. So the server is started with Dask's pre-spawn environment
already applied (the malloc thresholds are read once, at process start), and a cluster whose driver has since
changed its environment or directory gets spawned workers instead (`method`): a worker never runs with settings
other than the ones a spawned worker would have had. The server lives as long as its cluster (`stop`), so the
next cluster of the same process starts from the environment of its own time.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading

import dask.config

import pipeline.config  # noqa: F401  (the shipped defaults: impressions.worker-start, the pre-spawn environment)

METHODS = ("forkserver", "spawn")
# The one fork server multiprocessing keeps per process, and the environment it was started with.
_started: dict = {}


def configured() -> str:
    method = dask.config.get("impressions.worker-start")
    if method not in METHODS:
        from pipeline.errors import UsageError

        raise UsageError(f"worker-start must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def start(modules: tuple[str, ...] = ()) -> None:
    """Start the fork server, importing distributed's worker and `modules` in it, unless it runs already or
    workers are to be spawned. Returns at once: the server imports in the background."""
    if configured() != "forkserver" or _started:
        return
    os.environ.update(_spawn_environment())
    ctx = multiprocessing.get_context("forkserver")
    # cluster.frozen last: the imports' objects are frozen before the first fork (see that module)
    ctx.set_forkserver_preload(["distributed", "distributed.worker", "distributed.nanny", *modules,
                                "cluster.frozen"])
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's
        forkserver.ensure_running()
    else:
        # workers inherit an ignored SIGINT (the driver alone acts on a terminal's Ctrl-C, pipeline/cli.py)
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, handler)
    _started.update(_state())


def method(modules: tuple[str, ...] = ()) -> str:
    """How the next LocalCluster starts its workers: `forkserver` when the server (started now if need be) was
    started in the environment a spawned worker would get now, else `spawn`."""
    start(modules)
    if _started and _started == _state():
        return "forkserver"
    return "spawn"


def stop(timeout: float = 10.0) -> None:
    """Stop the server once its cluster has closed, and reap it: no server outlives its cluster, and its CPU (with
    that of the workers it reaped) counts in the driver's own resource usage, as spawned workers' would. Bounded:
    a server whose last worker is slow to exit is left to exit with it."""
    if not _started:
        return
    _started.clear()
    from multiprocessing import forkserver

    server = forkserver._forkserver
    stopper = getattr(server, "_stop", None)  # CPython's own (used by its tests); absent: skipped
    pid = getattr(server, "_forkserver_pid", None)
    if stopper is not None and pid is not None and _children(pid) == []:
        # Every worker is gone and reaped (a nanny's join returns once the server has reaped its worker), so their
        # CPU counts already: what is left is the interpreter's own teardown (~0.25 s of a process that has
        # imported distributed, pyarrow and pyiceberg), which nothing needs. _stop then reaps the server.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if stopper is not None:
        t = threading.Thread(target=stopper, name="forkserver-stop", daemon=True)
        t.start()
        t.join(timeout)


def _children(pid: int) -> list[int] | None:
    """The live children of `pid` (Linux's /proc), or None where that cannot be told."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return None


def _state() -> dict:
    return {"environ": {**os.environ, **_spawn_environment()}, "cwd": os.getcwd()}


def _spawn_environment() -> dict:
    """What a nanny puts into the environment before it spawns a worker, by its rules: the keys of
    `distributed.nanny.pre-spawn-environ` (a variable already set wins, None unsets), and the fixed hash seed it adds
    so that every worker hashes strings alike."""
    config = dask.config.get("distributed.nanny.pre-spawn-environ") or {}
    env = {k: os.environ.get(k, str(v)) for k, v in config.items() if v is not None}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"
    return env
