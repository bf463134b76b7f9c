"""The partition stage: gzip sources → parsed rows → (date, bucket) partitions → one Iceberg snapshot.

Driver side: decide which sources to load (lineage.py: a source already in the table is skipped, a path that now
holds other bytes is refused unless --replace or --append), plan (index passes as tasks, then byte ranges as
plain data), submit one read task per range, collect every worker's files, check that every line is accounted
for, commit once (partition_commit.py). Worker side: `read_range` reads exactly the lines its range owns, parses
them and hands them to the worker's accumulator.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from distributed import Client, KilledWorker
from isal.isal_zlib import error as IsalError

from ..config import Settings
from ..errors import LoadError, UsageError
from ..read.gzindex import build_index, cache_url
from ..read.parse import parse_block
from ..read.ranges import ByteRange, LongLine, open_range, owned_blocks, plan_indexed, plan_plain, read_mode
from ..read.sources import Source, describe_all, is_gzip, refuse_duplicates, refuse_empty
from ..report import stats
from ..report.loads import FAILURES, Load, fail, load_id, report_files, say
from ..report.progress import Progress
from ..storage import filesystem
from ..table.bucket import bucket_array
from ..table.catalog import create_or_load, open_catalog, qualified, table_name, table_properties
from ..table.commit import without_auto_retry
from ..table.lineage import lineage
from ..table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, bucket_count, fact_schema, fact_spec
from ..table.write import WriteTarget
from .accumulate import drop_load, finish_load, quarantine_table, split_by_owner
from .exchange import Exchange
from .owners import Owners, balanced
from .partition_commit import commit_load
from .tasks import live_workers, result_of, wait_any

STAGE = "partition"
HEAD_RANGES = 2  # a streaming head task reads this many range sizes while the index pass runs
READS_AHEAD = 3  # reads per worker thread that may be running, queued or waiting for their owners (Reads)
READ_RETRIES = 2  # read tasks are idempotent (an accumulator takes a range once): Dask may rerun them
HAND_OVER_TIMEOUT = 600  # seconds one worker may take to write and hand over its files


# ------------------------------------------------------------------ worker side

@dataclass
class RangeResult:
    key: str
    lines: int = 0
    written: int = 0
    quarantine: dict = field(default_factory=dict)
    uncompressed: int = 0


def read_range(source: Source, r: ByteRange, load: str, owners: Owners, buckets: int, settings: Settings) -> dict:
    """Read and parse exactly the lines one range owns; returns its counts and one share per owner:
    `{"result": RangeResult, o: (share key, source fingerprint, rows of owner o or None, quarantine or None)}`.

    The range's quarantined lines travel with one owner's share, so they too reach exactly one accumulator."""
    rs = settings.read
    result = RangeResult(r.key)
    parts, q_off, q_reason, q_line = [], [], [], []
    stream = _Checked(open_range(source, r), source.url)
    try:
        for item in owned_blocks(stream, r.start, r.end, rs.block_size, rs.max_line, rs.quarantine_line_bytes):
            if isinstance(item, LongLine):
                result.lines += 1
                q_off.append(item.offset), q_reason.append("line_too_long"), q_line.append(item.prefix)
                continue
            offset, block = item
            result.uncompressed += len(block)
            parsed = parse_block(block, offset, rs.quarantine_line_bytes)
            result.lines += parsed.lines
            if parsed.rows.num_rows:
                parts.append(parsed.rows)
            q_off += parsed.bad_offsets
            q_reason += parsed.bad_reasons
            q_line += parsed.bad_lines
    finally:
        stream.close()
    result.written = sum(p.num_rows for p in parts)
    for reason in q_reason:
        result.quarantine[reason] = result.quarantine.get(reason, 0) + 1
    quarantine = quarantine_table(load, source.url, q_off, q_reason, q_line) if q_off else None
    rows = pa.concat_tables(parts).unify_dictionaries().combine_chunks() if len(parts) > 1 else \
        parts[0] if parts else None
    parts.clear()  # the blocks' tables are copied into `rows`: not three copies at once while splitting
    shares = split_by_owner(rows, buckets, owners) if rows is not None else [None] * owners.count
    rows = None
    keeper = r.number % owners.count  # the owner whose share carries the quarantined lines
    out = {"result": result}
    for o in range(owners.count):
        out[o] = (f"{r.key}@{o}", source.fingerprint, shares[o], quarantine if o == keeper else None)
    return out


class _Checked:
    """A source stream whose read errors (truncated or corrupt gzip, I/O) become one-line LoadErrors."""

    def __init__(self, stream, url: str):
        self.stream, self.url = stream, url

    def readinto(self, buffer) -> int:
        try:
            return self.stream.readinto(buffer)
        except EOFError as e:
            raise LoadError(f"{self.url}: truncated gzip stream ({e})") from None
        except (OSError, ValueError, RuntimeError, IsalError) as e:
            raise LoadError(f"{self.url}: corrupt or unreadable input ({e})") from None

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------ driver side

@dataclass
class Plan:
    """Which of the given sources this load reads, and which committed sources it replaces."""

    todo: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (source, why)
    replaced: dict = field(default_factory=dict)  # fingerprint -> SourceEntry of rows to delete


def plan_sources(sources: list[Source], committed: dict, replace: bool, append: bool, table: str) -> Plan:
    """Decide per source by content: new → load; already in the table → skip (or --replace it); a path that
    was loaded with other content → refuse, unless --replace (its old rows go) or --append (both stay)."""
    plan = Plan()
    by_path: dict = {}
    for entry in committed.values():
        by_path.setdefault(entry.path, []).append(entry)
    for s in sources:
        same = committed.get(s.fingerprint)
        if same is not None and not replace:
            why = "already loaded" if same.path == s.url else f"same content as {same.path}, already loaded"
            plan.skipped.append((s, f"{why} (load {same.load_id})"))
            continue
        earlier = [e for e in by_path.get(s.url, []) if e.fingerprint != s.fingerprint]
        if earlier and not (replace or append):
            e = earlier[-1]
            raise UsageError(
                f"{s.url} was loaded into {table} before with other content ({e.size:,} bytes, load {e.load_id}, "
                f"committed {e.committed}); use --replace to replace its rows, or --append to keep both")
        plan.todo.append(s)
        if replace:
            plan.replaced.update({e.fingerprint: e for e in earlier + ([same] if same else [])})
    return plan


def partition(client: Client, settings: Settings, source_urls: list[str | Source], table_arg: str,
              replace: bool = False, buckets: int | None = None, append: bool = False,
              allow_empty: bool = False) -> dict:
    """Run the partition stage; returns the final load record (raises LoadError after a FAILED line)."""
    if replace and append:
        raise UsageError("--replace and --append exclude each other")
    ident = table_name(table_arg, settings.namespace)
    sources = describe_all(source_urls)
    refuse_duplicates(sources)
    catalog = open_catalog(settings.warehouse, settings.catalog)
    table = without_auto_retry(create_or_load(catalog, ident, fact_schema(), fact_spec(buckets or settings.buckets),
                                              table_properties(settings)))
    n_buckets = bucket_count(table)
    if buckets is not None and buckets != n_buckets:
        raise UsageError(f"{qualified(ident)} has {n_buckets} buckets, fixed when it was created (--buckets {buckets})")
    qtable = without_auto_retry(create_or_load(catalog, (ident[0], settings.quarantine_table), QUARANTINE_ICEBERG,
                                               QUARANTINE_SPEC, table_properties(settings)))

    lid = load_id(STAGE, qualified(ident), [s.fingerprint for s in sources])
    load = Load(STAGE, qualified(ident), lid, [s.to_dict() for s in sources])
    try:  # a failed upload is a failed load, on record, not a usage error
        for s in sources:
            refuse_empty(s.url, s.size, allow_empty)
    except LoadError as e:
        fail(load, e)
    plan = plan_sources(sources, lineage(table.properties), replace, append, qualified(ident))
    for s, why in plan.skipped:
        say(f"skipped {s.url}: {why}")
    if not plan.todo:
        return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, skipped_sources=[s.url for s, _ in plan.skipped])
    load.status("RUNNING", sources=[s.url for s in plan.todo])
    try:
        record = _run(client, settings, table, qtable, plan, load)
    except FAILURES as e:  # report, then let the CLI map it to an exit code
        fail(load, e)
    finally:
        client.run(drop_load, load.run_id)  # whatever a failed or recomputed task left on a worker
    if plan.skipped:
        record["skipped_sources"] = [s.url for s, _ in plan.skipped]
    return record


def _run(client, settings, table, qtable, plan: Plan, load: Load) -> dict:
    sources = plan.todo
    owners = list(live_workers(client))
    buckets = bucket_count(table)
    with ThreadPoolExecutor(min(8, len(sources))) as pool:  # two bytes each, read here: no round trip
        kinds = list(pool.map(is_gzip, sources))
    owner_map = balanced(sample_weights(sources[0], kinds[0], buckets, settings), len(owners))  # who owns what
    ranges, pending = start_sources(client, sources, kinds, settings)  # the workers start reading at once
    reads = Reads(client, sources, load.load_id, owner_map, buckets, settings)
    reads.add(ranges)
    reads.submit(0)
    # meanwhile: table metadata grows with the table's history: send it to each worker once, not with every task
    target, qtarget = client.scatter([WriteTarget.of(table), WriteTarget.of(qtable)], broadcast=True, hash=False)
    exchange = Exchange(client, load.run_id, load.load_id, owners, target, qtarget, settings.memory_budget)
    for i, index in pending.items():  # while an index pass runs, the file's head is read (start_sources)
        head = next((r for r in ranges if r.source_index == i), None)
        more = plan_indexed(i, _result(index, reads.futures), settings.read.range_size,
                            start=head.end if head else 0, first_number=1 if head else 0,
                            tail=len(owners) * settings.read.range_size)
        ranges += more
        reads.add(more)
    say(f"{len(ranges)} read task(s) over {len(sources)} source(s), {len(exchange)} owner(s)")
    results: dict = {}
    _collect(reads, exchange, results, "read")

    files, qfiles, seen = [], [], set()
    for attempt in range(3):
        exchange.drain(HAND_OVER_TIMEOUT)
        for part in _hand_over(client, load.run_id):
            files += part["files"]
            qfiles += part["quarantine_files"]
            for key in part["parts"]:
                if key in seen:
                    raise LoadError(f"the share {key} was taken twice; nothing committed")
                seen.add(key)
        lost: dict = {}  # range -> the owners whose share of it no surviving accumulator holds
        for r in ranges:
            owners_missing = {o for o in range(len(exchange)) if f"{r.key}@{o}" not in seen}
            if owners_missing:
                lost[r] = owners_missing
        if not lost:
            break
        say(f"{len(lost)} range(s) were lost with a worker; reading them again")
        exchange.replace_dead()
        target, qtarget = client.scatter([WriteTarget.of(table), WriteTarget.of(qtable)], broadcast=True, hash=False)
        exchange.target, exchange.qtarget = target, qtarget
        again = Reads(client, sources, load.load_id, owner_map, buckets, settings)
        again.add(list(lost), lost)
        _collect(again, exchange, results, "read again")
    else:
        raise LoadError(f"{len(lost)} range(s) could not be read after 3 attempts")

    rows_read = sum(r.lines for r in results.values())
    written = sum(f.data_file.record_count for f in files)
    quarantine = {}
    for r in results.values():
        for k, v in r.quarantine.items():
            quarantine[k] = quarantine.get(k, 0) + v
    quarantined = sum(quarantine.values())
    if written != rows_read - quarantined or written != sum(r.written for r in results.values()):
        raise LoadError(f"row accounting mismatch: read {rows_read}, written {written}, quarantined {quarantined}")

    outcome = commit_load(table, qtable, files, qfiles, plan, load)
    if outcome == "concurrent":
        return load.finish("SKIPPED", rows_read=rows_read, rows_written=0, rows_quarantined=quarantined,
                           quarantine=dict(sorted(quarantine.items())), files_written=0, bytes_written=0,
                           reason="a concurrent load committed the same source(s) first")
    report_files(load, [f.data_file for f in files])
    moments = stats.tree_reduce([f.moments for f in files])
    summary = stats.summary(moments)
    return load.finish(
        "SUCCEEDED", rows_read=rows_read, rows_written=written, rows_quarantined=quarantined,
        quarantine=dict(sorted(quarantine.items())), files_written=len(files), read_tasks=len(ranges),
        bytes_written=sum(f.data_file.file_size_in_bytes for f in files),
        replaced_sources=sorted({e.path for e in plan.replaced.values()}),
        vp_mean=summary["vp_mean"], vp_std=summary["vp_std"],
    )


def _hand_over(client: Client, lid: str) -> list[dict]:
    """Every worker flushes and hands over its files for the load. A worker that dies meanwhile is given up
    on (its ranges are missing and get read again), never waited for: its pinned task could not move."""
    holders = list(live_workers(client))
    futures = {client.submit(finish_load, lid, workers=[w], allow_other_workers=False, pure=False,
                             key=f"finish-{lid}-{uuid.uuid4().hex[:6]}"): w for w in holders}
    out, pending, deadline = [], set(futures), time.monotonic() + HAND_OVER_TIMEOUT
    while pending:
        done = wait_any(pending)
        pending -= done
        for f in done:
            if f.status == "finished":
                out.append(f.result())
            elif f.status == "error" and not isinstance(f.exception(), (CancelledError, KilledWorker)):
                raise f.exception()
            # cancelled or lost with its worker: its shares are missing and get read again
        alive = set(live_workers(client))
        for f in [f for f in pending if futures[f] not in alive]:
            f.cancel()
            pending.discard(f)
        if pending and time.monotonic() > deadline:
            raise LoadError(f"{len(pending)} worker(s) did not hand over their files within {HAND_OVER_TIMEOUT} s")
    return out


class Reads:
    """The read tasks of a load, submitted no further ahead than the exchange keeps up with.

    Submitting every range at once would let each worker read on while the shares of its earlier reads wait for
    their owners (an owner absorbs only between its own reads, and not while it spills): a backlog that
    grows with the file, next to the budgeted accumulators. So at most READS_AHEAD reads per worker thread are
    running, queued, or not yet absorbed by their owners; the next range is submitted as those drain.
    """

    def __init__(self, client: Client, sources: list[Source], load: str, owners: Owners, buckets: int,
                 settings: Settings):
        self.client, self.sources, self.load = client, sources, load
        self.owners, self.buckets, self.settings = owners, buckets, settings
        threads = sum(w["nthreads"] for w in live_workers(client).values())
        self.window = READS_AHEAD * max(1, threads)
        self.todo: list[ByteRange] = []
        self.only: dict = {}  # range key -> the owners whose shares to route (a range read again)
        self.futures: list = []  # submitted, not yet finished
        self.range_of: dict = {}  # future key -> range key
        self.total = 0

    def add(self, ranges: list[ByteRange], only: dict | None = None) -> None:
        self.todo += ranges
        self.total += len(ranges)
        for r, owners in (only or {}).items():
            self.only[r.key] = owners

    def submit(self, backlog: float) -> list:
        """Submit reads while fewer than the window are running, queued, or waiting (`backlog`) for owners;
        returns the new futures."""
        new = []
        while self.todo and len(self.futures) + len(new) + backlog < self.window:
            r = self.todo.pop(0)
            new.append(self.client.submit(
                read_range, self.sources[r.source_index], r, self.load, self.owners, self.buckets, self.settings,
                key=f"read-{self.load}-{r.key}-{uuid.uuid4().hex[:6]}", retries=READ_RETRIES))
            self.range_of[new[-1].key] = r.key
        self.futures += new
        return new

    def __contains__(self, future) -> bool:
        return future.key in self.range_of

    def done(self, future) -> None:
        self.futures.remove(future)

    def owners_of(self, future) -> set | None:
        """The owners whose shares of a finished read are routed (None: all)."""
        return self.only.get(self.range_of[future.key]) if self.only else None

    def cancel(self) -> None:
        self.todo.clear()
        for f in self.futures:
            f.cancel()


def _result(future, others: list):
    """A future's result; on failure (other than a lost worker) the other tasks of the load are cancelled."""
    try:
        return result_of(future)
    except (CancelledError, KilledWorker):
        raise
    except Exception:
        for f in others:
            f.cancel()
        raise


def _collect(reads: Reads, exchange: Exchange, results: dict, label: str) -> None:
    """Route each finished read's shares through the exchange and keep its counts, submitting further reads as
    the exchange keeps up (Reads). A read's own result holds its shares, so it is never fetched here: only its
    errors are. A finished read is released at once (the exchange holds what it still needs) and its counts are
    taken when they arrive, so the next finished read is routed without waiting for them (they queue behind the
    worker's running read); a read lost with its worker is read again after the hand-over, and so are the shares
    of an owner that died (its absorbs are given up on, never waited for)."""
    progress = Progress(reads.total, label)
    counts: set = set()
    try:
        while reads.todo or reads.futures or counts:
            if reads.todo and len(reads.futures) + exchange.backlog() >= reads.window:
                exchange.send_pending()  # rather than wait for full batches
            reads.submit(exchange.backlog())
            if not reads.futures and reads.todo:  # nothing is being read: whatever holds the window, not these
                reads.submit(0)
            done = wait_any(set(reads.futures) | counts | set(exchange.absorbing))
            for fut in done:
                if fut in counts:
                    counts.discard(fut)
                    if fut.status == "finished":
                        res = fut.result()
                        results[res.key] = res
                        progress.step(res.uncompressed)
                    elif fut.status == "error" and not isinstance(fut.exception(), (CancelledError, KilledWorker)):
                        raise fut.exception()  # else lost with its worker: read again after the hand-over
                elif fut in reads:
                    reads.done(fut)
                    if fut.status == "error":
                        error = fut.exception()
                        if not isinstance(error, (CancelledError, KilledWorker)):  # lost: read again later
                            reads.cancel()
                            raise error
                    elif fut.status == "finished":
                        counts.add(exchange.add(fut, reads.owners_of(fut)))
                    fut.release()
            exchange.forget_finished()  # an owner's own error (a failed write) fails the load here
            if not done:
                exchange.give_up_dead()
    finally:
        progress.close()


def start_sources(client: Client, sources: list[Source], kinds: list[bool], settings: Settings):
    """Plan what can be read at once (`kinds`: which sources are gzip), and start the index passes that the rest
    waits for.

    Returns (ranges to read now, {source index: future of its GzipIndex}). A big gzip file without a cached
    index gets its index pass (a task) and, meanwhile, a streaming *head* task that reads the file's first
    bytes (up to HEAD_RANGES × range-size) on another worker, so no worker waits idle for the index.
    """
    rs = settings.read
    workers = max(1, len(live_workers(client)))
    now, pending, cold = [], {}, 0
    for i, (s, gz) in enumerate(zip(sources, kinds)):
        mode = read_mode(s.size, gz, rs.small_file)
        if mode == "plain":
            now += plan_plain(i, s.size, rs.range_size)
        elif mode == "stream":
            now.append(ByteRange(i, 0, 0, None, "stream"))
        else:
            fs, path = filesystem(cache_url(settings.warehouse, s))
            if not fs.exists(path):
                now.append(ByteRange(i, 0, 0, _head_size(s.size, workers, rs), "stream"))
                cold += 1
            pending[i] = client.submit(build_index, s, settings.warehouse, rs.index_spacing, rs.index_threads,
                                       key=f"gzindex-{s.fingerprint}", retries=0)
    if cold:
        say(f"index pass over {cold} gzip file(s)...")
    if len(pending) > cold:  # built by an earlier load or by `impressions index` (stages/index.py)
        say(f"cached index of {len(pending) - cold} gzip file(s): every range read from its seek point")
    return now, pending


def _head_size(compressed: int, workers: int, rs) -> int:
    """What the head task reads: at most HEAD_RANGES ranges, and at most about half of one worker's share
    of the file (CSV inflates ~4x), so a mid-sized file is still read by several tasks."""
    return max(rs.block_size, min(HEAD_RANGES * rs.range_size, compressed * 4 // (2 * workers)))


SAMPLE_BYTES = 4 << 20  # of the first source's head, parsed on the driver to balance the owners (owners.py)


def sample_weights(source: Source, gzip: bool, buckets: int, settings: Settings) -> np.ndarray:
    """Rows per bucket in the lines of the first few MiB of a source (~90,000 rows: about 2 % error per
    campaign of 34), read and parsed as a load reads them, for `owners.balanced`. A head that cannot be read
    gives no weights (the owners are then spread by bucket count), and the load itself reports the fault."""
    rs, weights = settings.read, np.zeros(buckets)
    if not source.size:
        return weights
    try:
        stream = open_range(source, ByteRange(0, 0, 0, None, "stream" if gzip else "plain"))
        try:
            blocks = [b for b in owned_blocks(stream, 0, SAMPLE_BYTES, SAMPLE_BYTES, rs.max_line,
                                              rs.quarantine_line_bytes) if not isinstance(b, LongLine)]
        finally:
            stream.close()
    except (OSError, EOFError, ValueError, RuntimeError, IsalError):
        return weights
    for offset, block in blocks:
        rows = parse_block(block, offset, rs.quarantine_line_bytes).rows
        if rows.num_rows:
            weights += np.bincount(bucket_array(rows["campaign_id"], buckets).to_numpy(), minlength=buckets)
    return weights
