"""Connect to a running scheduler, or start a LocalCluster of worker processes."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from distributed import Client, LocalCluster


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
            memory_limit: str | int | None = "auto", dashboard: bool = True):
    """Yield a Client; the cluster (if we started it) is closed afterwards.

    With `scheduler` the running cluster is used as it is and `workers` is ignored.
    """
    if scheduler:
        with Client(scheduler) as client:
            _announce(client)
            yield client
        return
    with warnings.catch_warnings():
        # port 8787 taken (another cluster): distributed picks a free port, and we print the link anyway
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                               memory_limit=memory_limit, dashboard_address=":8787" if dashboard else None,
                               silence_logs=_worker_log_level())
    with cluster, Client(cluster) as client:
        _announce(client)
        yield client


def _worker_log_level() -> int:
    """Task failures come back to the driver as one-line errors; worker tracebacks only with IMPRESSIONS_DEBUG."""
    return logging.INFO if os.environ.get("IMPRESSIONS_DEBUG") else logging.CRITICAL


def _announce(client: Client) -> None:
    link = client.dashboard_link if client.dashboard_link else "(no dashboard)"
    sys.stderr.write(f"Dask dashboard: {link}\n")
    sys.stderr.flush()
