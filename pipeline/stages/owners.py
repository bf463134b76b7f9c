"""Which worker owns which (date, bucket) partition of a load: decided on the driver before the first read, so
that every read task splits its rows the same way and each partition's rows meet on one worker (accumulate.py).

Owners are balanced by rows, not by number of partitions. Campaigns hash into buckets unevenly, and the owner
that holds the most rows writes last, while the others wait. With the bench file's 34 campaigns in 64 buckets,
`key % owners` gave one of 2 workers 64 % of the rows, and one of 8 workers 2.5x its share. So the driver
counts rows per bucket in the head of the first source (`sample_weights`, partition.py) and hands out the
buckets largest first, each to the owner holding the fewest rows so far (LPT). Each date rotates that
assignment by one owner. A date's buckets then stay as balanced as the first date's, and with more owners
than buckets the dates still spread over all of them.

Pure functions of plain data: an `Owners` travels to every read task (one small int per bucket).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Owners:
    """Owner index of every partition key (days × buckets + bucket): (by_bucket[bucket] + days) % count."""

    count: int
    by_bucket: tuple[int, ...]

    def of(self, keys: np.ndarray) -> np.ndarray:
        """The owner index of each partition key (numpy's floor division and modulo also hold for days < 0)."""
        buckets = len(self.by_bucket)
        table = np.asarray(self.by_bucket, dtype=np.int64)
        return (table[keys % buckets] + keys // buckets) % self.count


def balanced(weights, owners: int) -> Owners:
    """Buckets to owners, largest first, each to the owner with the fewest rows (then the fewest buckets) so far.
    Weights of 0 (no sample, or buckets the sample did not see) still spread the buckets evenly by count."""
    weights = np.asarray(weights, dtype=np.float64)
    load, count = [0.0] * owners, [0] * owners
    by_bucket = [0] * len(weights)
    for b in np.argsort(-weights, kind="stable").tolist():
        o = min(range(owners), key=lambda i: (load[i], count[i], i))
        by_bucket[b] = o
        load[o] += weights[b]
        count[o] += 1
    return Owners(owners, tuple(by_bucket))
