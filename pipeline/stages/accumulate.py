"""Owner-side grouping of parsed rows by (source, date, bucket), so each partition gets few, large files.

Every (date, bucket) partition has one *owner* among the workers (owners.py). A read task parses its range and
splits the rows into one sorted share per owner (`split_by_owner`); the exchange (exchange.py) brings each share to
its owner, whose `absorb` task adds it to the worker's accumulator for the load. So a partition's rows meet on one
worker, and a partition gets about one file per load — not one per worker — whatever the worker count.

When everything a worker buffers — all loads, all sources — passes `write.memory-budget`, the largest accumulator
spills its rows to the worker's local disk (Arrow IPC, no compression: cheap to write and to read back): a
worker's memory is bounded by the budget, whatever the file or the number of sources. At the end of the read
phase each owner writes one data file per (source, partition) from its memory and its spills, streaming a
group row group by row group, so the budget bounds memory without multiplying the files. The files are committed
later by the driver, all in one snapshot.

Accumulators live on the Dask worker object, so they disappear with the worker; the driver checks that every
share of every range reached a surviving accumulator and reads again the ranges whose shares did not.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from dask.sizeof import sizeof

from ..schema import PARSED_SCHEMA, QUARANTINE_SCHEMA
from ..storage import scratch_directory
from ..table.bucket import bucket_array
from ..table.schema import bucket_count
from ..table.write import WriteTarget, concat_pieces, to_date, write_data_files
from .owners import Owners


class Share(NamedTuple):
    """One range's rows for one owner: the rows sorted by partition key, the key of each group, the start of
    each group plus the end. A type of its own, not a plain tuple, so that Dask pickles it when it moves to its
    owner (protocol 5: the Arrow and numpy buffers travel as they are, out of band) instead of giving the table
    to its Arrow serializer, which first copies it into a growing IPC stream — 41–47 ms instead of 0.6–0.7 ms
    for a 41 MB table under jemalloc, whose freed pages each new stream faults in again.

    The rows are narrow (`narrow`): no ad_date (each group's key holds its date) and 16-bit dictionary codes
    where the dictionary fits, 20 bytes a row instead of 28 through the exchange, in memory and in the spills;
    `restore` makes a group's rows whole again before they are written."""

    rows: pa.Table
    keys: np.ndarray
    starts: np.ndarray


@sizeof.register(Share)
def _sizeof_share(share: Share) -> int:  # what Dask counts as held while the share waits for its owner
    return share.rows.nbytes + share.keys.nbytes + share.starts.nbytes


def partition_keys(rows: pa.Table, buckets: int) -> np.ndarray:
    """days × buckets + bucket of every row: one small integer per (date, bucket) partition."""
    days = rows["ad_date"].cast(pa.int32()).to_numpy(zero_copy_only=False)
    key = np.multiply(days, buckets, dtype=np.int64)  # one 64-bit pass, no temporaries
    key += bucket_array(rows["campaign_id"], buckets).to_numpy(zero_copy_only=False)
    return key


def split_by_owner(rows: pa.Table, buckets: int, owners: Owners) -> list:
    """The rows of one range as one `Share` per owner (owners.py says which partition key each owner takes), or
    None where an owner gets no rows.

    One sort does it: the rows are ordered by (owner, key), so each owner's share is one run of that order. With
    few distinct keys (a few dates × buckets) each row gets the 16-bit rank of its key in that order, which numpy
    sorts with a stable radix sort in O(n); owners and groups are then found on the sorted ranks, never on 64-bit
    keys.
    """
    n = owners.count
    if rows.num_rows == 0:
        return [None] * n
    key = partition_keys(rows, buckets)
    low, high = int(key.min()), int(key.max())
    if high - low < 1 << 16:
        span = np.arange(low, high + 1)
        by_rank = span[np.lexsort((span, owners.of(span)))]  # every possible key, in (owner, key) order
        rank = np.empty(len(span), dtype=np.uint16)
        rank[by_rank - low] = np.arange(len(span), dtype=np.uint16)
        ranks = rank[key - low]
        order = np.argsort(ranks, kind="stable")
        group = ranks[order]  # per sorted row: its key's rank
        bounds = np.searchsorted(group, np.searchsorted(owners.of(by_rank), np.arange(n + 1)))
    else:
        order = np.lexsort((key, owners.of(key)))
        group = key[order]  # per sorted row: its key
        bounds = np.searchsorted(owners.of(group), np.arange(n + 1))
        by_rank = None
    order = order.astype(np.uint32) if len(order) < 1 << 32 else order  # Arrow's take is ~2x faster with these
    narrow_rows = narrow(rows)
    parts = []
    for o in range(n):
        a, b = int(bounds[o]), int(bounds[o + 1])
        if a == b:
            parts.append(None)
            continue
        starts = np.concatenate(([0], np.flatnonzero(group[a + 1:b] != group[a:b - 1]) + 1, [b - a]))
        firsts = group[a + starts[:-1]]
        # a table of its own per owner, not a slice of one sorted table: the share an owner keeps would pin the
        # other owners' rows in its memory, uncounted by the budget, until it writes its files
        share = narrow_rows.take(pa.array(order[a:b]))
        parts.append(Share(share, by_rank[firsts] if by_rank is not None else firsts, starts))
    return parts


def narrow(rows: pa.Table) -> pa.Table:
    """Parsed rows as a share carries them: without ad_date, dictionary codes in 16 bits where they fit."""
    columns, names = [], []
    for name in rows.column_names:
        if name == "ad_date":
            continue
        col = rows[name]
        if pa.types.is_dictionary(col.type) and col.type.index_type.bit_width > 16 \
                and all(len(chunk.dictionary) <= np.iinfo(np.int16).max for chunk in col.chunks):
            col = col.cast(pa.dictionary(pa.int16(), col.type.value_type))
        columns.append(col)
        names.append(name)
    return pa.Table.from_arrays(columns, names=names)


def restore(rows: pa.Table, key: int, buckets: int) -> pa.Table:
    """One group's narrow rows (`narrow`, `regroup`) as parsed rows again: its date from its partition key,
    32-bit codes (the pieces of one group, from spills and memory, each with a dictionary that fits 16 bits,
    may together need more); a text column that `regroup` decoded stays plain strings."""
    days = pa.array(np.full(rows.num_rows, key // buckets, dtype=np.int32), pa.date32())
    fields, columns = [PARSED_SCHEMA.field(0)], [days]
    for f in list(PARSED_SCHEMA)[1:]:
        col, have = rows[f.name], rows.schema.field(f.name).type
        if have != f.type and pa.types.is_dictionary(have):
            col = col.cast(f.type)
        fields.append(f.with_type(col.type))
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=PARSED_SCHEMA.metadata))


GATHER_RUN = 256  # rows: shorter runs on average are put in order by one gather, longer ones by copying each run


def regroup(shares: list[Share]) -> Share:
    """Shares of one source as one share, sorted by partition key, in one pass per column for all of them.

    A *run* is one group's rows in one share. A backfill group gets a run of a few dozen rows from every read:
    making each group whole on its own cost a concat and a cast per group (~0.5 ms a group each time an owner
    spilled: 9 % of a worker's time on a 3,840-partition file), so short runs are put in order by one gather per
    column; long runs (a daily file's few partitions) are copied run by run, which needs no row numbers (a
    gather's take 8 bytes a row; 64-bit row numbers for every flush doubled a daily-shaped flush's system time,
    measured). Empties `shares`; copies the rows once, a column at a time, letting each column of the shares go
    once it is copied.

    A share carries its read's whole dictionaries. Where a column's dictionaries hold more values than a group
    has rows on average (70,000 video ids, a few hundred rows a group), the strings are decoded: smaller in each
    group's spill, and unifying those dictionaries would hash every value of each. Else they are unified into
    one (a few campaigns' worth)."""
    run_keys = np.concatenate([share.keys for share in shares])
    keys, rank = np.unique(run_keys, return_inverse=True)
    lengths = np.concatenate([np.diff(share.starts) for share in shares])
    counts = np.bincount(rank, weights=lengths, minlength=len(keys)).astype(np.int64)
    bases = np.cumsum([0] + [share.rows.num_rows for share in shares[:-1]])
    begins = np.concatenate([base + share.starts[:-1] for base, share in zip(bases, shares)])
    runs = np.argsort(rank, kind="stable")  # the runs in (key, share) order
    begins, lengths = begins[runs], lengths[runs]
    in_order = bool(np.all(begins[1:] == begins[:-1] + lengths[:-1]))  # one share, sorted already
    gather = None
    if not in_order and len(lengths) * GATHER_RUN > lengths.sum():
        ends = np.cumsum(lengths)
        # row i of the output is row i + (its run's begin - the run's output start) of the shares; in 32 bits
        # where the rows fit (Arrow's take is 2x faster with them; a negative offset wraps, and wraps back)
        width = np.uint32 if ends[-1] < 1 << 32 else np.int64
        order = np.arange(ends[-1], dtype=width)
        order += np.repeat((begins - (ends - lengths)).astype(width), lengths)
        gather = pa.array(order)
        del order, ends
    rows = concat_pieces([share.rows for share in shares])  # some codes 16-bit, some not: the wider
    shares.clear()
    per_group = rows.num_rows / max(1, len(keys))
    names, columns = rows.column_names, list(rows.columns)
    del rows
    spans = list(zip(begins.tolist(), lengths.tolist()))
    for i, col in enumerate(columns):
        columns[i] = None  # this column of the shares goes once its copy is made
        if pa.types.is_dictionary(col.type):
            if sum(len(chunk.dictionary) for chunk in col.chunks) > per_group:
                col = col.cast(_decoded_type(col))
            elif col.num_chunks > 1:
                col = col.unify_dictionaries()
        if not in_order and gather is None:
            col = pa.chunked_array([c for b, n in spans for c in col.slice(b, n).chunks], col.type)
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        columns[i] = col.take(gather) if gather is not None else col
        del col
    return Share(pa.Table.from_arrays(columns, names=names), keys, np.concatenate(([0], np.cumsum(counts))))


LARGE_TEXT = 1 << 30  # decoded bytes beyond which a column's strings get 64-bit offsets


def _decoded_type(col: pa.ChunkedArray) -> pa.DataType:
    """The type a dictionary column is decoded to: its value type, or the large (64-bit offset) kind of it when
    its strings may pass 2 GiB together (a large `write.memory-budget`: 32-bit offsets would overflow and fail the
    load). Estimated from each chunk's dictionary: its bytes per value times the chunk's rows."""
    estimate = sum(chunk.dictionary.nbytes / max(1, len(chunk.dictionary)) * len(chunk) for chunk in col.chunks)
    if estimate <= LARGE_TEXT:
        return col.type.value_type
    return pa.large_string() if pa.types.is_string(col.type.value_type) else pa.large_binary()


def by_source(pending: list) -> list[tuple[str, Share]]:
    """Buffered (source, share) pairs as one regrouped share per source; empties `pending`."""
    sources: dict = {}
    for source, share in pending:
        sources.setdefault(source, []).append(share)
    pending.clear()
    return [(source, regroup(shares)) for source, shares in sources.items()]


def groups_of(source: str, share: Share):
    """((source, key), rows) of each group of a share: zero-copy slices."""
    for k, a, b in zip(share.keys.tolist(), share.starts[:-1].tolist(), share.starts[1:].tolist()):
        yield (source, k), share.rows.slice(a, b - a)


@dataclass
class Spill:
    """Rows an accumulator moved from memory to its worker's local disk: one file, in which each (source,
    partition key) group is an Arrow IPC stream of its own holding the group's rows (`regroup`), found by its
    byte span."""

    path: str
    spans: dict  # (source, key) -> (offset, length)
    handle: pa.NativeFile | None = None  # opened by the first read

    @classmethod
    def write(cls, path: str, regrouped: list[tuple[str, Share]]) -> "Spill":
        spans = {}
        with pa.OSFile(path, "wb") as sink:
            for source, share in regrouped:
                for group, rows in groups_of(source, share):
                    start = sink.tell()
                    with pa.ipc.new_stream(sink, rows.schema) as stream:
                        stream.write_table(rows)
                    spans[group] = (start, sink.tell() - start)
        return cls(path, spans)

    def read(self, group) -> pa.Table | None:
        """The group's rows (read, not memory-mapped: pages of a mapped spill would count as the worker's),
        through one handle per spill (`close`): a backfill reads a few thousand groups from each."""
        if group not in self.spans:
            return None
        offset, length = self.spans[group]
        if self.handle is None:
            self.handle = pa.OSFile(self.path)
        return pa.ipc.open_stream(self.handle.read_at(length, offset)).read_all()  # positional: thread-safe

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@dataclass
class Accumulator:
    """One load's rows on one worker, grouped by (source fingerprint, partition key): in memory, and in spills
    on the worker's local disk once the budget was passed; written as one data file per group at the end."""

    load_id: str
    target: WriteTarget
    quarantine_target: WriteTarget
    buckets: int
    pending: list = field(default_factory=list)  # (fingerprint, Share) in memory, as they came
    quarantine: list = field(default_factory=list)
    nbytes: int = 0
    parts: set = field(default_factory=set)  # "<range>@<owner>": the shares taken
    spills: list = field(default_factory=list)
    spill_dir: str | None = None
    closed: bool = False  # written or dropped: a late share is not taken (nor spilled where nobody deletes it)
    files: list = field(default_factory=list)
    quarantine_files: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_part(self, part_key: str, source: str, part, quarantine: pa.Table | None) -> bool:
        """Take one range's share for this owner at once (see split_by_owner); False if already taken (a range
        read again after a worker loss sends every owner its share again)."""
        with self.lock:
            if part_key in self.parts or self.closed:
                return False
            if part is not None:
                self.pending.append((source, Share(*part)))
                self.nbytes += part.rows.nbytes
            if quarantine is not None and quarantine.num_rows:
                self.quarantine.append(quarantine)
                self.nbytes += quarantine.nbytes
            self.parts.add(part_key)
            return True

    def flush(self) -> None:
        """Free the memory: the rows go to a spill on the local disk, quarantined lines to their files."""
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.pending and not self.closed:
            if self.spill_dir is None:
                self.spill_dir = tempfile.mkdtemp(prefix=f"spill-{self.load_id}-", dir=scratch_directory())
            path = os.path.join(self.spill_dir, f"{len(self.spills):05d}.arrows")
            self.spills.append(Spill.write(path, by_source(self.pending)))
        self._write_quarantine()
        self.nbytes = 0

    def _write_quarantine(self) -> None:
        if self.quarantine:
            q = pa.concat_tables(self.quarantine)
            self.quarantine = []
            self.quarantine_files.extend(
                w.data_file for w in write_data_files(self.quarantine_target, [((self.load_id,), "0" * 24, q)]))

    def held(self) -> set:
        """The (source, key) groups with rows in memory."""
        return {(source, k) for source, share in self.pending for k in share.keys.tolist()}

    def _pieces(self, group, memory: dict):
        """A group's rows, spill by spill and then what is in memory, each let go once it is written."""
        key = group[1]
        for spill in self.spills:
            rows = spill.read(group)
            if rows is not None:
                yield restore(rows, key, self.buckets)
        rows = memory.pop(group, None)
        if rows is not None:
            yield restore(rows, key, self.buckets)

    def finish(self) -> dict:
        """Write one data file per group (and the quarantined lines); returns what this worker hands over."""
        with self.lock:
            try:
                memory = dict(g for source, share in by_source(self.pending) for g in groups_of(source, share))
                keys = sorted(set(memory).union(*(s.spans for s in self.spills)))
                groups = [((to_date(k // self.buckets), k % self.buckets), source,
                           lambda group=(source, k): self._pieces(group, memory)) for source, k in keys]
                if groups:
                    self.files.extend(write_data_files(self.target, groups, threads=_task_threads()))
                self._write_quarantine()
                self.nbytes = 0
            finally:
                self.discard()
            return {"parts": sorted(self.parts), "files": self.files, "quarantine_files": self.quarantine_files}

    def discard(self) -> None:
        """Forget the buffered rows and delete the spills (the load failed, or they were written)."""
        self.closed = True
        self.pending.clear()
        for spill in self.spills:
            spill.close()
        self.spills = []
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None


def quarantine_table(load_id: str, source: str, offsets, reasons, lines) -> pa.Table:
    n = len(offsets)
    return pa.table([pa.array([load_id] * n, pa.string()), pa.array([source] * n, pa.string()),
                     pa.array(offsets, pa.int64()), pa.array(reasons, pa.string()), pa.array(lines, pa.binary())],
                    schema=QUARANTINE_SCHEMA)


def _task_threads() -> int:
    """The task threads of this worker: the hand-over writes that many files at once (one, outside a worker)."""
    worker = _worker()
    return max(1, worker.state.nthreads) if worker is not None else 1


# ------------------------------------------------------------ the per-worker registry

_LOCAL: dict = {}  # used only outside a Dask worker (tests, synchronous runs)
_LOCAL_DROPPED: set = set()
_REGISTRY_LOCK = threading.RLock()  # re-entrant: helpers that hold it call _registry(), which takes it too


def _registry(dask_worker=None) -> dict:
    """This worker's accumulators (one per load run). In a task the worker is found by `get_worker()`; from
    `Client.run` (which runs outside any task) it comes as the `dask_worker` argument Client.run passes."""
    worker = _worker(dask_worker)
    if worker is None:
        return _LOCAL
    with _REGISTRY_LOCK:
        if not hasattr(worker, "_impressions_accumulators"):
            worker._impressions_accumulators = {}
        return worker._impressions_accumulators


def _dropped(dask_worker=None) -> set:
    """The load runs dropped on this worker: an absorb of theirs that was still queued or running when the load
    failed must not start a new accumulator after the drop."""
    worker = _worker(dask_worker)
    if worker is None:
        return _LOCAL_DROPPED
    with _REGISTRY_LOCK:
        if not hasattr(worker, "_impressions_dropped"):
            worker._impressions_dropped = set()
        return worker._impressions_dropped


def _worker(dask_worker=None):
    if dask_worker is not None:
        return dask_worker
    try:
        from distributed import get_worker

        return get_worker()
    except ValueError:
        return None


def accumulator_for(load_id: str, make) -> Accumulator | None:
    """The worker's accumulator for a load run (made on first use); None once the run was dropped."""
    reg = _registry()
    with _REGISTRY_LOCK:
        if load_id in _dropped():
            return None
        if load_id not in reg:
            reg[load_id] = make()
        return reg[load_id]


def absorb(run: str, load: str, shares: list, target: WriteTarget, qtarget: WriteTarget, budget: int) -> list[str]:
    """The owner's side of the exchange (a task pinned to the owner): add the shares of some ranges to this
    worker's accumulator for the run, write files if the worker's budget is passed; returns the shares taken."""
    acc = accumulator_for(run, lambda: Accumulator(load, target, qtarget, bucket_count(target.metadata)))
    if acc is None:  # the load failed and was dropped: nothing to keep
        return []
    for part_key, source, part, quarantine in shares:
        acc.add_part(part_key, source, part, quarantine)
        keep_within(budget)
    return [s[0] for s in shares]


def keep_within(budget: int) -> None:
    """Flush the largest accumulators on this worker until what it buffers (every load) fits the budget."""
    reg = _registry()
    while True:
        with _REGISTRY_LOCK:
            accs = list(reg.values())
        if sum(a.nbytes for a in accs) < budget or not accs:
            return
        max(accs, key=lambda a: a.nbytes).flush()


def buffered_bytes(dask_worker=None) -> int:
    """What this worker holds in accumulators (all loads): the budget's measure, and a soak check
    (`client.run(buffered_bytes)`)."""
    reg = _registry(dask_worker)
    with _REGISTRY_LOCK:
        return sum(a.nbytes for a in reg.values())


def finish_load(load_id: str) -> dict:
    """Flush and hand over everything this worker holds for the load (run once per worker)."""
    reg = _registry()
    with _REGISTRY_LOCK:
        acc = reg.pop(load_id, None)
    return acc.finish() if acc else {"parts": [], "files": [], "quarantine_files": []}


def drop_load(load_id: str, dask_worker=None) -> int:
    """Forget a load run's buffers on this worker (after it failed, or left over by a recomputed task); run it
    everywhere with `client.run(drop_load, run_id)`."""
    reg = _registry(dask_worker)
    with _REGISTRY_LOCK:
        _dropped(dask_worker).add(load_id)
        acc = reg.pop(load_id, None)
    if acc is None:
        return 0
    with acc.lock:
        acc.discard()
    return 1
