"""viewing_percentage statistics as small chunk / combine / aggregate functions (like dask.array.reductions).

A chunk is summarised as (n, mean, M2, min, max); two summaries merge with Chan et al.'s pairwise formula,
which is exact in any tree shape up to rounding (no sum-of-squares cancellation). `tree_reduce` combines
`split_every` summaries per level. The driver reduces the per-file summaries itself: they are a few numbers each,
already stored in the table's metadata or returned by the tasks that read files (stages/table_stats.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Moments:
    n: int
    mean: float
    m2: float
    min: float
    max: float

    @classmethod
    def empty(cls) -> "Moments":
        return cls(0, 0.0, 0.0, math.inf, -math.inf)

    def to_dict(self) -> dict:
        # by hand, not dataclasses.asdict (its recursive copy was ~half of a small file's footer work)
        empty = self.n == 0
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "min": None if empty else self.min,
                "max": None if empty else self.max}

    @classmethod
    def from_dict(cls, d: dict) -> "Moments":
        if not d["n"]:
            return cls.empty()
        return cls(int(d["n"]), float(d["mean"]), float(d["m2"]), float(d["min"]), float(d["max"]))


def chunk(values) -> Moments:
    """Summarise one block of values (Arrow array/chunked array or numpy); nulls are ignored."""
    if isinstance(values, pa.ChunkedArray) and values.num_chunks == 1:
        values = values.chunk(0)
    if isinstance(values, pa.Array):
        values = (values.drop_null() if values.null_count else values).to_numpy()
    elif isinstance(values, pa.ChunkedArray):
        values = np.concatenate([c.drop_null().to_numpy() for c in values.chunks]) if values.num_chunks else \
            np.empty(0)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Moments.empty()
    mean = float(x.mean())
    # Two-pass within the chunk: M2 = sum((x - mean)^2), a compensated second pass keeps it exact to rounding.
    d = x - mean
    mean += float(d.mean())
    d = x - mean
    return Moments(int(x.size), mean, float(np.dot(d, d)), float(x.min()), float(x.max()))


def combine(a: Moments, b: Moments) -> Moments:
    """Chan's formula: merge two summaries."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n)
    return Moments(n, mean, m2, min(a.min, b.min), max(a.max, b.max))


def combine_many(items) -> Moments:
    out = Moments.empty()
    for m in items:
        out = combine(out, m)
    return out


def tree_reduce(items, split_every: int = 8) -> Moments:
    """Reduce a list of summaries in a tree of fan-in `split_every`."""
    items = list(items)
    if not items:
        return Moments.empty()
    split_every = max(2, split_every)
    while len(items) > 1:
        items = [combine_many(items[i:i + split_every]) for i in range(0, len(items), split_every)]
    return items[0]


def summary(m: Moments) -> dict:
    """The user-facing statistics; None when there are no rows."""
    if m.n == 0:
        return {"rows": 0, "vp_mean": None, "vp_std": None, "vp_std_sample": None, "vp_min": None, "vp_max": None}
    var = max(m.m2, 0.0) / m.n
    return {
        "rows": m.n,
        "vp_mean": m.mean,
        "vp_std": math.sqrt(var),
        "vp_std_sample": math.sqrt(max(m.m2, 0.0) / (m.n - 1)) if m.n > 1 else None,
        "vp_min": m.min,
        "vp_max": m.max,
    }
