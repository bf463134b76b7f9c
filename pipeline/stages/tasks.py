"""One task per file on the cluster, with values every task shares (table metadata, the dimension) sent to each
worker once — and sent again when the workers that held them are gone.

`client.scatter(..., broadcast=True)` puts a copy on every worker, which Dask cannot recompute: when every holder
dies (one worker, restarted by its nanny) the tasks that need it are cancelled ("already forgotten"). The tasks
here are idempotent (each writes new files under a new name and returns what it wrote), so the ones that lost
their inputs or their worker are simply run again on freshly scattered values; a task's own error fails the stage.
"""
from __future__ import annotations

from concurrent.futures import CancelledError

from distributed import Client, KilledWorker, as_completed, fire_and_forget, wait

from .. import interrupts
from ..errors import LoadError
from ..report.loads import say
from ..report.progress import Progress
from . import WORKER_MODULES

ATTEMPTS = 3


def live_workers(client: Client) -> dict:
    """The workers the scheduler has now, by address, asked of the scheduler itself. Not
    `client.scheduler_info()`: it returns the client's cached copy, which the client's periodic refresh (every 2 s,
    without per-worker information) can overwrite between the fetch and the return, so it sometimes answers with no
    workers at all (distributed 2026.8; tests/test_soak.py shows it) and a healthy load would take every worker
    for dead."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def warm_up(client: Client) -> None:
    """Import the stage modules on every worker now, without waiting for it: a fresh worker would otherwise
    import them (~1 s of pyarrow, pyiceberg, s3fs) inside the first task of the load, on its critical path,
    while the driver is still fingerprinting sources and opening the catalog. Workers forked from the LocalCluster's
    fork server have them already (cluster/forkserver.py); the Batch nodes' and other clusters' workers need this."""
    for worker in live_workers(client):
        fire_and_forget(client.submit(_import, WORKER_MODULES, workers=[worker], allow_other_workers=False,
                                      pure=False, key=f"warm-up-{worker}"))
    _freeze_modules(collect=False)  # the driver's: see _freeze_modules


def _import(names) -> None:
    import importlib

    for name in names:
        importlib.import_module(name)
    _freeze_modules()


_FROZEN = []


def _freeze_modules(collect: bool = True) -> None:
    """Once per process, when the modules are loaded: the garbage collector's full collections need not walk
    their objects again (~0.3 s of CPU per process and load). Only once: a later freeze would also keep whatever
    garbage and task state happened to be alive at that moment for good. The driver freezes without collecting
    first: its collection (~0.1 s) sits between the cluster's start and the first read, and after the imports
    it finds next to nothing to free (0 objects, measured). A forked worker's collection is cheap: its server
    froze the imports (cluster/frozen.py)."""
    import gc

    if not _FROZEN:
        _FROZEN.append(True)
        if collect:
            gc.collect()
        gc.freeze()


def wait_any(futures, timeout: float = 1.0) -> set:
    """The futures that are done after waiting at most `timeout` s for one of them. distributed's `wait` raises
    where concurrent.futures' returns — TimeoutError when none finished, CancelledError when one was cancelled
    (its dependencies were lost with a worker) — so both are answers here, not errors. The driver waits here all
    through a command, so here a signal whose first raise Python dropped is raised again (interrupts.py)."""
    interrupts.check()
    try:
        wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
    except (TimeoutError, CancelledError):
        pass
    return {f for f in futures if f.done()}


def as_finished(futures, poll: float = 1.0):
    """The futures as they finish, as distributed's `as_completed` gives them, but waking at least every `poll` s
    so that a dropped signal stops the command while its tasks still run (`as_completed` alone would not return
    before the next task ends). Readiness is checked under the condition `as_completed` notifies, so no wake-up
    is lost."""
    futures = list(futures)
    if not futures:
        return
    finished = as_completed(futures, loop=futures[0].client.loop)  # this client's loop, not the default client's
    while not finished.is_empty():
        interrupts.check()
        with finished.thread_condition:
            if not finished.has_ready():
                finished.thread_condition.wait(timeout=poll)
        yield from finished.next_batch(block=False)


def result_of(future):
    """`future.result()`, waiting as `as_finished` does."""
    for _ in as_finished([future]):
        pass
    return future.result()


def map_shared(client: Client, fn, shared: list, calls: list[tuple], label: str) -> list:
    """`fn(*shared, *call)` for every call, on the cluster; results in the order of `calls`."""
    results: list = [None] * len(calls)
    todo = list(range(len(calls)))
    progress = Progress(len(calls), label)
    try:
        for _ in range(ATTEMPTS):
            lost = _run(client, fn, shared, calls, todo, results, progress)
            if not lost:
                return results
            say(f"{label}: {len(lost)} task(s) lost their worker or its shared inputs; running them again")
            todo = lost
        raise LoadError(f"{label}: {len(todo)} task(s) were lost with their workers {ATTEMPTS} times")
    finally:
        progress.close()


def _run(client, fn, shared, calls, todo, results, progress) -> list[int]:
    """One round: the calls of `todo`; returns the ones lost with a worker."""
    held = client.scatter(shared, broadcast=True, hash=False) if shared else []
    futures = {client.submit(fn, *held, *calls[i], pure=False): i for i in todo}
    lost = []
    try:
        for fut in as_finished(futures):
            i = futures[fut]
            if fut.status == "finished":
                results[i] = fut.result()
                progress.step()
            elif fut.status == "cancelled" or isinstance(fut.exception(), (CancelledError, KilledWorker)):
                lost.append(i)
            else:
                raise fut.exception()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return sorted(lost)
