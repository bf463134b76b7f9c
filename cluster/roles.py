"""The two roles of a node in the AWS Batch multi-node job, one small class each (after dask-jobqueue's runner).

Each process asks only its role (cluster/batchenv.py) and the scheduler's address, then:
- MainNode: a Dask scheduler in this process, wait for the workers, run the JOB, always shut the cluster down;
- ChildNode: Dask worker processes (under nannies) for the main node's scheduler, until it goes away.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections import Counter

from distributed import Client, Nanny, Scheduler

from pipeline.errors import LoadError
from pipeline.report.loads import say

from .batchenv import BatchNode
from .jobrun import PreparedJob
from .settings import NodeSettings

START_TIMEOUT = 60.0  # seconds for the in-process scheduler to start or stop


def quiet_dask() -> int | None:
    """Worker and scheduler chatter only with IMPRESSIONS_DEBUG; warnings and errors always reach the logs.

    Returns the nannies' `silence_logs`: CRITICAL, as for the LocalCluster (cluster/local.py), because a worker
    process that exits with its scheduler can log a spurious "Worker process died unexpectedly" traceback.
    """
    if os.environ.get("IMPRESSIONS_DEBUG"):
        return None
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read by the spawned worker processes
    level = logging.WARNING
    for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.nanny",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(level)
    return logging.CRITICAL


class SchedulerThread:
    """A Dask scheduler on its own event loop in a thread of this process: if the node dies, so does it."""

    def __init__(self, host: str | None, port: int, dashboard_port: int):
        self.host, self.port, self.dashboard_port = host, port, dashboard_port
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Scheduler | None = None
        self._thread = threading.Thread(target=self._serve, name="dask-scheduler", daemon=True)

    @property
    def address(self) -> str:
        """Where the JOB on this node reaches the scheduler."""
        return f"tcp://{self.host or '127.0.0.1'}:{self.port}"

    def start(self) -> "SchedulerThread":
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise LoadError(f"the scheduler did not start within {START_TIMEOUT:.0f}s")
        if self._error is not None:
            cause = self._error.__cause__ or self._error  # distributed wraps the OSError (port in use, ...)
            raise LoadError(f"the scheduler could not start on port {self.port}: {cause}")
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start() in the main thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        dashboard = f"{self.host or ''}:{self.dashboard_port}"
        with warnings.catch_warnings():  # a taken dashboard port: distributed picks another, said by start()
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            scheduler = Scheduler(host=self.host, port=self.port, dashboard_address=dashboard, dashboard=True)
        async with scheduler:
            self._loop, self._scheduler = asyncio.get_running_loop(), scheduler
            server = getattr(scheduler, "http_server", None)
            self.dashboard_port = getattr(server, "port", None) or self.dashboard_port
            self._ready.set()
            await scheduler.finished()

    def stop(self) -> None:
        """Close the scheduler (which closes every worker and nanny) and wait for its thread; bounded, and
        safe to call twice or after the scheduler ended by itself (its loop may be gone)."""
        scheduler, loop = self._scheduler, self._loop
        deadline = time.monotonic() + START_TIMEOUT
        if scheduler is not None and loop is not None and self._thread.is_alive():
            try:
                done = asyncio.run_coroutine_threadsafe(scheduler.close(reason="impressions-node-done"), loop)
            except RuntimeError:  # the loop is closed already
                done = None
            while done is not None and not done.done() and self._thread.is_alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        self._thread.join(max(0.0, deadline - time.monotonic()))


class Stopped(BaseException):
    """SIGTERM on the main node outside the JOB (which gets the signal itself while it runs)."""


def _stop(_signum, _frame):
    raise Stopped


class MainNode:
    """Scheduler + JOB. The exit status is the JOB's; the cluster is shut down whatever happens."""

    def __init__(self, node: BatchNode, settings: NodeSettings, job: PreparedJob):
        self.node, self.settings, self.job = node, settings, job

    def run(self) -> int:
        quiet_dask()
        s = self.settings
        previous = signal.signal(signal.SIGTERM, _stop)  # Batch stops a job with SIGTERM: shut down cleanly
        try:
            scheduler = SchedulerThread(s.host, s.scheduler_port, s.dashboard_port).start()
            moved = "" if scheduler.dashboard_port == s.dashboard_port else \
                f" (node.dashboard-port {s.dashboard_port} was taken)"
            say(f"impressions {self.node.label}: scheduler at port {s.scheduler_port}, dashboard at port "
                f"{scheduler.dashboard_port}{moved}; waiting up to {s.wait_timeout:.0f}s for "
                f"{self.node.workers_expected} workers")
            try:
                client = Client(scheduler.address, timeout=START_TIMEOUT)
                try:
                    return self._run(client, scheduler)
                finally:
                    with contextlib.suppress(Exception):
                        client.close(timeout=10)
            finally:
                scheduler.stop()  # in-process: close the scheduler itself, which closes the workers
        except Stopped:
            say("impressions node: stopped (SIGTERM) before the JOB ran; the cluster is shut down")
            return 128 + signal.SIGTERM
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self, client: Client, scheduler: SchedulerThread) -> int:
        s = self.settings
        arrived = self.wait_for_workers(client)
        if arrived < self.node.workers_expected:
            say(f"impressions node: only {arrived} of {self.node.workers_expected} workers arrived "
                f"within node.wait-timeout ({s.wait_timeout:.0f}s); the job is not run")
            return 1
        code = self.job.run(scheduler.address, s.job_timeout)  # passes SIGTERM on to the JOB meanwhile
        say(f"impressions node: the JOB exited with status {code}")
        return code

    def wait_for_workers(self, client: Client) -> int:
        """Worker nodes are counted as they come (a progress line each); a node counts once all its
        `node.worker-processes` have registered. Returns how many complete nodes came in time."""
        expected, per_node = self.node.workers_expected, self.settings.worker_processes
        deadline, seen = time.monotonic() + self.settings.wait_timeout, -1
        while True:
            counts = Counter(_node_of(name) for name in client.run_on_scheduler(_worker_names))
            nodes = sum(1 for n in counts.values() if n >= per_node)
            if nodes != seen:
                seen = nodes
                say(f"impressions node: {nodes} of {expected} worker nodes arrived")
            if nodes >= expected or time.monotonic() >= deadline:
                return nodes
            time.sleep(0.5)


def _worker_names(dask_scheduler=None) -> list[str]:
    return [str(ws.name) for ws in dask_scheduler.workers.values()]


def _node_of(worker_name: str) -> str:
    """Worker processes of one node are named node-I or node-I-K; a node counts once."""
    parts = worker_name.split("-")
    return "-".join(parts[:2]) if len(parts) >= 2 and parts[0] == "node" else worker_name


class ChildNode:
    """Worker processes for the main node's scheduler; exit when it goes away, or when it never came."""

    def __init__(self, node: BatchNode, settings: NodeSettings):
        self.node, self.settings = node, settings

    @property
    def scheduler_address(self) -> str:
        return f"tcp://{self.node.main_address}:{self.settings.scheduler_port}"

    def run(self) -> int:
        self._silence = quiet_dask()
        s = self.settings
        say(f"impressions {self.node.label}: {s.worker_processes} worker process(es) x {s.worker_threads} "
            f"threads for {self.scheduler_address} (giving up after {s.death_timeout:.0f}s without it)")
        return asyncio.run(self._serve())

    def worker_names(self) -> list[str]:
        n = self.settings.worker_processes
        return [f"node-{self.node.index}"] if n == 1 else [f"node-{self.node.index}-{k}" for k in range(n)]

    async def _serve(self) -> int:
        s = self.settings
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nannies = [Nanny(self.scheduler_address, nthreads=s.worker_threads, name=name,
                         death_timeout=s.death_timeout, silence_logs=self._silence)
                   for name in self.worker_names()]
        self._connected, all_in = 0, asyncio.Event()
        lives = [asyncio.ensure_future(self._live(n, len(nannies), all_in)) for n in nannies]
        stopped, arrived = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(all_in.wait())
        try:
            # until every worker process is registered (or one ends, or a signal; death-timeout as a backstop)
            done, _ = await asyncio.wait([*lives, stopped, arrived], timeout=s.death_timeout + START_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if arrived in done:
                say(f"impressions {self.node.label}: connected to {self.scheduler_address}")
                # until one of them ends: the scheduler closed or went away (or a signal)
                done, _ = await asyncio.wait([*lives, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*lives, stopped, arrived):
                task.cancel()
            await _close_all(nannies)
        if stopped in done:
            say(f"impressions {self.node.label}: stopped by a signal; the workers are closed")
            return 0
        if not self._connected:
            say(f"impressions node: no scheduler at {self.scheduler_address} within node.death-timeout "
                f"({s.death_timeout:.0f}s)")
            return 1
        say(f"impressions {self.node.label}: the scheduler closed or went away; the workers are closed")
        return 0

    async def _live(self, nanny: Nanny, total: int, all_in: asyncio.Event) -> None:
        """One worker process under its nanny: start (gives up after death-timeout), then run until it closes."""
        try:
            await nanny
        except Exception:  # noqa: BLE001 - timed out, refused, failed: no scheduler for this process
            return
        self._connected += 1
        if self._connected == total:
            all_in.set()
        await nanny.finished()


async def _close_all(nannies: list[Nanny]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(n.close(timeout=10) for n in nannies), return_exceptions=True),
                               START_TIMEOUT)
