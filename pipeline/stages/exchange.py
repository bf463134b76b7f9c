"""The exchange: each read task's shares go to their owners, entirely through Dask tasks and futures.

A read task returns `{"result": counts, 0: share for owner 0, 1: …}`. For each finished read the driver submits
tiny `getitem` tasks — Dask runs them where the read's result lives, so only each owner's share moves — and,
every few shares, one `absorb` task pinned to the owner (accumulate.absorb), at a higher priority than reads so
shares never pile up. The driver reads no further ahead than the owners absorb (partition.Reads and `backlog`),
so what waits between a read and its owner is bounded by the worker threads, not by the file. The driver drops
its references as soon as it has submitted what depends on them: Dask keeps a share until its absorb has run,
then forgets it.

An owner that dies takes its buffered rows with it: its pinned absorbs are cancelled (never waited for), its
owner index moves to a live worker, and the hand-over (partition.py) notices the shares that no surviving
accumulator holds and reads those ranges again; owners that already hold a share ignore it the second time.
"""
from __future__ import annotations

import operator
import time
import uuid

from concurrent.futures import CancelledError

from distributed import Client, KilledWorker

from ..errors import LoadError
from .accumulate import absorb
from .tasks import live_workers, wait_any

SHARES_PER_ABSORB = 4
PRIORITY = 10  # above the reads (0): an owner takes its shares before it reads on


class Exchange:
    def __init__(self, client: Client, run: str, load: str, owners: list[str], target, qtarget, budget: int):
        self.client, self.run, self.load = client, run, load
        self.owners = list(owners)  # owner index -> worker address
        self.target, self.qtarget, self.budget = target, qtarget, budget
        self.pending: dict[int, list] = {o: [] for o in range(len(owners))}
        self.absorbing: dict = {}  # absorb future -> (owner index, shares it takes)

    def __len__(self) -> int:
        return len(self.owners)

    def add(self, read_future, owners: set | None = None):
        """Route a finished read's shares (only those of `owners`, when given); returns the future of its counts."""
        submit = self.client.submit
        counts = submit(operator.getitem, read_future, "result", priority=PRIORITY, pure=False)
        for o in sorted(owners) if owners is not None else range(len(self.owners)):
            self.pending[o].append(submit(operator.getitem, read_future, o, priority=PRIORITY, pure=False))
            if len(self.pending[o]) >= SHARES_PER_ABSORB:
                self._absorb(o)
        self.forget_finished()
        return counts

    def backlog(self) -> float:
        """Shares routed but not absorbed yet, in reads' worth (a read has one share per owner): what the
        workers hold besides their accumulators, which the driver keeps bounded by reading no further ahead."""
        waiting = sum(len(p) for p in self.pending.values()) + sum(n for _, n in self.absorbing.values())
        return waiting / len(self.owners)

    def send_pending(self) -> None:
        """Absorb whatever waits for a full batch now (the driver does, rather than read further ahead)."""
        for o in range(len(self.owners)):
            if self.pending[o]:
                self._absorb(o)

    def _absorb(self, o: int) -> None:
        shares, self.pending[o] = self.pending[o], []
        future = self.client.submit(absorb, self.run, self.load, shares, self.target, self.qtarget, self.budget,
                                    workers=[self.owners[o]], allow_other_workers=False, priority=PRIORITY,
                                    pure=False, key=f"absorb-{self.run}-{o}-{uuid.uuid4().hex[:8]}")
        self.absorbing[future] = (o, len(shares))

    def forget_finished(self) -> None:
        for f in [f for f in self.absorbing if f.done()]:
            if f.status == "error":
                try:
                    f.result()  # raises the owner's own error (a failed write): the load fails
                except (CancelledError, KilledWorker):
                    pass  # lost with its worker: the hand-over reads those ranges again
            del self.absorbing[f]

    def drain(self, timeout: float) -> None:
        """Send what is pending and wait until every absorb has run, or its owner died (then the owner index moves
        to a live worker; the shares it held are read again after the hand-over)."""
        self.send_pending()
        deadline = time.monotonic() + timeout
        while self.absorbing:
            wait_any(self.absorbing)
            self.forget_finished()
            self.give_up_dead()
            if self.absorbing and time.monotonic() > deadline:
                raise LoadError(f"{len(self.absorbing)} share hand-over task(s) did not finish within {timeout:.0f} s")
        self.replace_dead()

    def give_up_dead(self) -> None:
        """Cancel the absorbs pinned to owners that died: they would wait forever (their shares are read again)."""
        alive = set(live_workers(self.client))
        for f, (o, _) in list(self.absorbing.items()):
            if self.owners[o] not in alive:
                f.cancel()
                del self.absorbing[f]

    def replace_dead(self) -> list[int]:
        """Give the owner indices of dead workers to live ones (the least loaded first)."""
        alive = list(live_workers(self.client))
        if not alive:
            raise LoadError("every worker is gone")
        moved = []
        for o, address in enumerate(self.owners):
            if address not in alive:
                self.owners[o] = min(alive, key=self.owners.count)
                moved.append(o)
        return moved
