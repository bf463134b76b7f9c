"""Which Dask client: the one decision point for every command (pipeline/cli.py calls `connect`).

A running scheduler when an address is given (--scheduler, DASK_SCHEDULER_ADDRESS; on an AWS Batch node the
main node's), else an ECS/Fargate cluster when `impressions.cloudprovider.cluster` is set, else a LocalCluster.
"""
from __future__ import annotations

import contextlib


def prepare(scheduler: str | None, preload: tuple[str, ...] = ()) -> None:
    """Called as a command begins: when `connect` will start a LocalCluster, its fork server (cluster/forkserver.py)
    starts importing `preload` now, while the driver does its own checks."""
    if scheduler:
        return
    from .settings import load_cloudprovider_settings

    if load_cloudprovider_settings().cluster:
        return
    from . import forkserver

    forkserver.start(preload)


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1,
            memory_limit: str | int | None = "auto", dashboard: bool = True, preload: tuple[str, ...] = ()):
    """Yield a Client; a cluster we started is closed afterwards.

    With `scheduler` the running cluster is used as it is and `workers` and `preload` (modules a LocalCluster's
    fork server imports for its workers) are ignored.
    """
    from distributed import Client

    from .local import announce, local_cluster, quiet_driver

    quiet_driver()
    if scheduler:
        with Client(scheduler) as client:
            announce(client)
            yield client
        return
    from .settings import load_cloudprovider_settings

    cloud = load_cloudprovider_settings()
    if cloud.cluster:
        from .cloudprovider import start

        with start(cloud) as cluster, Client(cluster) as client:
            announce(client)
            yield client
        return
    with local_cluster(workers, threads_per_worker, memory_limit, dashboard, preload) as cluster, \
            Client(cluster) as client:
        announce(client)
        yield client
