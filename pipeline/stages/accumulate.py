"""Worker-side grouping of parsed rows by (source, date, bucket), so each partition gets few, large files.

Each read task parses its range, sorts it on a small integer key (days × buckets + bucket) and hands the sorted
slices to its worker's accumulator for the load. When everything a worker buffers — all loads, all sources —
passes `write.memory-budget`, the largest accumulator writes one data file per (source, partition) and forgets
its rows: a worker's memory is bounded by the budget, whatever the files or the number of sources. The files are
committed later by the driver, all in one snapshot.

Accumulators live on the Dask worker object, so they disappear with the worker; the driver checks that every
range reached a surviving accumulator and re-reads the ones that did not.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..schema import QUARANTINE_SCHEMA
from ..table.bucket import bucket_array
from ..table.write import WriteTarget, to_date, write_data_files


def sort_by_partition(rows: pa.Table, buckets: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows sorted by partition, with each group's key and start offset (plus the end)."""
    days = rows["ad_date"].cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    bucket = bucket_array(rows["campaign_id"], buckets).to_numpy(zero_copy_only=False).astype(np.int64)
    key = days * buckets + bucket
    low = int(key.min()) if len(key) else 0
    if len(key) and int(key.max()) - low < 1 << 16:
        # a few dates × buckets: a 16-bit key, which numpy sorts with a stable radix sort in O(n)
        order = np.argsort((key - low).astype(np.uint16), kind="stable")
    else:
        order = np.argsort(key, kind="stable")
    key = key[order]
    rows = rows.take(pa.array(order))
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1, [len(key)])) if len(key) else np.zeros(1, np.int64)
    return rows, key[starts[:-1]], starts


@dataclass
class Accumulator:
    """One load's rows on one worker, grouped by (source fingerprint, partition key)."""

    load_id: str
    target: WriteTarget
    quarantine_target: WriteTarget
    buckets: int
    groups: dict = field(default_factory=dict)  # (fingerprint, key) -> list of sorted slices
    quarantine: list = field(default_factory=list)
    nbytes: int = 0
    ranges: set = field(default_factory=set)
    files: list = field(default_factory=list)
    quarantine_files: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_range(self, range_key: str, source: str, parts: list[pa.Table], quarantine: pa.Table | None) -> bool:
        """Take a whole range's rows at once (a failed task adds nothing); False if already taken."""
        with self.lock:
            if range_key in self.ranges:
                return False
            for rows in parts:
                sorted_rows, keys, starts = sort_by_partition(rows, self.buckets)
                for k, s, e in zip(keys.tolist(), starts[:-1].tolist(), starts[1:].tolist()):
                    self.groups.setdefault((source, k), []).append(sorted_rows.slice(s, e - s))
                self.nbytes += sorted_rows.nbytes
            if quarantine is not None and quarantine.num_rows:
                self.quarantine.append(quarantine)
                self.nbytes += quarantine.nbytes
            self.ranges.add(range_key)
            return True

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        groups = []
        for (source, key) in sorted(self.groups):
            rows = pa.concat_tables(self.groups[(source, key)])
            groups.append(((to_date(key // self.buckets), key % self.buckets), source, rows))
        self.groups.clear()
        if groups:
            self.files.extend(write_data_files(self.target, groups))
        if self.quarantine:
            q = pa.concat_tables(self.quarantine)
            self.quarantine = []
            self.quarantine_files.extend(
                w.data_file for w in write_data_files(self.quarantine_target, [((self.load_id,), "0" * 24, q)]))
        self.nbytes = 0

    def finish(self) -> dict:
        with self.lock:
            self._flush()
            return {"ranges": sorted(self.ranges), "files": self.files, "quarantine_files": self.quarantine_files}


def quarantine_table(load_id: str, source: str, offsets, reasons, lines) -> pa.Table:
    n = len(offsets)
    return pa.table([pa.array([load_id] * n, pa.string()), pa.array([source] * n, pa.string()),
                     pa.array(offsets, pa.int64()), pa.array(reasons, pa.string()), pa.array(lines, pa.binary())],
                    schema=QUARANTINE_SCHEMA)


# ------------------------------------------------------------ the per-worker registry

_LOCAL: dict = {}  # used only outside a Dask worker (tests, synchronous runs)
_REGISTRY_LOCK = threading.Lock()


def _registry() -> dict:
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        return _LOCAL
    with _REGISTRY_LOCK:
        if not hasattr(worker, "_impressions_accumulators"):
            worker._impressions_accumulators = {}
        return worker._impressions_accumulators


def accumulator_for(load_id: str, make) -> Accumulator:
    reg = _registry()
    with _REGISTRY_LOCK:
        if load_id not in reg:
            reg[load_id] = make()
        return reg[load_id]


def keep_within(budget: int) -> None:
    """Flush the largest accumulators on this worker until what it buffers (every load) fits the budget."""
    reg = _registry()
    while True:
        with _REGISTRY_LOCK:
            accs = list(reg.values())
        if sum(a.nbytes for a in accs) < budget or not accs:
            return
        max(accs, key=lambda a: a.nbytes).flush()


def buffered_bytes() -> int:
    """What this worker holds in accumulators (all loads): the budget's measure, and a soak check."""
    with _REGISTRY_LOCK:
        return sum(a.nbytes for a in _registry().values())


def finish_load(load_id: str) -> dict:
    """Flush and hand over everything this worker holds for the load (run once per worker)."""
    reg = _registry()
    with _REGISTRY_LOCK:
        acc = reg.pop(load_id, None)
    return acc.finish() if acc else {"ranges": [], "files": [], "quarantine_files": []}


def drop_load(load_id: str) -> int:
    """Forget a load's buffers on this worker (after it failed, or left over by a recomputed task)."""
    reg = _registry()
    with _REGISTRY_LOCK:
        return 1 if reg.pop(load_id, None) is not None else 0
