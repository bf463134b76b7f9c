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
        with attach(scheduler) as client:
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


HANDSHAKE_ATTEMPTS = 5


def attach(address: str, attempts: int = HANDSHAKE_ATTEMPTS, **client_options):
    """A Client of a running scheduler that other clients may be using at the same time (`client_options` go
    to `Client`).

    distributed (2026.8) asserts that the first batch a new client reads holds the scheduler's `stream-start`
    alone. A message the scheduler sends to every client at that moment (`cancelled-keys` when another client
    cancels futures: a failing load does) can share that 2 ms batch, and the connection fails with a bare
    AssertionError (measured: 2 of 40 connections beside a client cancelling in a loop; tests/test_connect.py).
    The failed client holds nothing yet (no futures, no data), so it is closed and the connection made again,
    a little later each time (a failing load cancels its futures in bursts)."""
    import time

    from distributed import Client

    for attempt in range(1, attempts + 1):
        try:
            return Client(address, **client_options)
        except AssertionError as e:
            _abandon(e)
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


def _abandon(error: AssertionError) -> None:
    """Close what a failed handshake left open, both found in the failed call's frame: its client (it started an
    event loop; left to the garbage collector, its __del__ can run inside a later client's start and deadlock on
    the loop runner's lock) and its connection (else "Closing dangling stream" on the command's stderr). Not
    `distributed.client._get_global_client()`: inside a `with Client(...)` that answers the caller's client."""
    client = comm = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_ensure_connected":
            client, comm = tb.tb_frame.f_locals.get("self"), tb.tb_frame.f_locals.get("comm")
        tb = tb.tb_next
    if client is None:
        return
    if comm is not None:
        async def abort():  # on the client's event loop, where the connection lives
            comm.abort()

        client.sync(abort)
    client.close()
