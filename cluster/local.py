"""A LocalCluster of worker processes on this machine (the default when no scheduler is given)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

import dask.config
from distributed import Client, LocalCluster

from . import forkserver, pages


@contextlib.contextmanager
def local_cluster(workers: int = 2, threads_per_worker: int = 1, memory_limit: str | int | None = "auto",
                  dashboard: bool = True, preload: tuple[str, ...] = ()):
    """A LocalCluster whose worker processes are forked from the fork server (with `preload` imported once) or
    spawned, as `impressions.worker-start` says (cluster/forkserver.py); the server stops with the cluster.
    Bokeh's dashboard pages are mounted by the first request for them (cluster/pages.py)."""
    method = forkserver.method(preload)
    try:
        # for the whole life of the cluster: a worker its nanny restarts is forked too
        with dask.config.set({"distributed.worker.multiprocessing-method": method}):
            with warnings.catch_warnings():
                # port 8787 taken (another cluster): distributed picks a free port, and we print the link anyway
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                       memory_limit=memory_limit, dashboard_address=":8787" if dashboard else None,
                                       scheduler_kwargs={"dashboard": False}, silence_logs=_worker_log_level())
            pages.install(cluster.scheduler)
            with cluster:
                yield cluster
    finally:
        forkserver.stop()  # also one started for this cluster that the cluster could not use


def connect(*args, **kwargs):
    """Kept for callers of `cluster.local.connect`; the decision lives in cluster/connect.py."""
    from .connect import connect as _connect

    return _connect(*args, **kwargs)


def _worker_log_level() -> int:
    """Task failures come back to the driver as one-line errors; worker tracebacks only with IMPRESSIONS_DEBUG."""
    return logging.INFO if os.environ.get("IMPRESSIONS_DEBUG") else logging.CRITICAL


def quiet_driver() -> None:
    """stderr of a command carries only its own lines: the client's reconnect chatter and asyncio's "Future
    exception was never retrieved" (a connection timing out while the client closes) only with IMPRESSIONS_DEBUG."""
    if not os.environ.get("IMPRESSIONS_DEBUG"):
        for name in ("asyncio", "distributed.client", "distributed.batched"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def announce(client: Client) -> None:
    link = client.dashboard_link if client.dashboard_link else "(no dashboard)"
    sys.stderr.write(f"Dask dashboard: {link}\n")
    sys.stderr.flush()
