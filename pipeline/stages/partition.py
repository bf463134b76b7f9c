"""The partition stage: gzip sources → parsed rows → (date, bucket) partitions → one Iceberg snapshot.

Driver side: plan (index passes as tasks, then byte ranges as plain data), submit one read task per range,
collect every worker's files, check that every line is accounted for, commit once. Worker side: `read_range`
reads exactly the lines its range owns, parses them and hands them to the worker's accumulator.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from distributed import Client, as_completed
from isal.isal_zlib import error as IsalError

from ..report import stats
from ..table.commit import commit_partition, committed_sources
from .accumulate import Accumulator, accumulator_for, drop_load, finish_load, quarantine_table
from ..config import Settings
from ..errors import LoadError, UsageError
from ..read.gzindex import build_index, cache_url
from ..report.loads import Load, load_id, say
from ..report.progress import Progress
from ..read.parse import parse_block
from ..read.ranges import ByteRange, LongLine, open_range, owned_blocks, plan_indexed, plan_plain
from ..read.sources import Source, describe, is_gzip
from ..storage import filesystem
from ..table.catalog import create_or_load, open_catalog, qualified, table_name, table_properties
from ..table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, bucket_count, fact_schema, fact_spec
from ..table.write import WriteTarget

STAGE = "partition"
HEAD_RANGES = 2  # a streaming head task reads this many range sizes while the index pass runs


# ------------------------------------------------------------------ worker side

@dataclass
class RangeResult:
    key: str
    lines: int = 0
    written: int = 0
    quarantine: dict = field(default_factory=dict)
    uncompressed: int = 0


def read_range(source: Source, r: ByteRange, load: str, target: WriteTarget, qtarget: WriteTarget,
               settings: Settings) -> RangeResult:
    """Read, parse and hand over one range; returns only counts."""
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
    acc = accumulator_for(load, r.source_index, lambda: Accumulator(
        load, source.url, target, qtarget, bucket_count(target.metadata), settings.memory_budget))
    acc.add_range(r.key, parts, quarantine)
    return result


class _Checked:
    """A source stream whose read errors (truncated or corrupt gzip, I/O) become one-line LoadErrors."""

    def __init__(self, stream, url: str):
        self.stream, self.url = stream, url

    def read(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except EOFError as e:
            raise LoadError(f"{self.url}: truncated gzip stream ({e})") from None
        except (OSError, ValueError, RuntimeError, IsalError) as e:
            raise LoadError(f"{self.url}: corrupt or unreadable input ({e})") from None

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------ driver side

def start_sources(client: Client, sources: list[Source], settings: Settings):
    """Plan what can be read at once, and start the index passes that the rest waits for.

    Returns (ranges to read now, {source index: future of its GzipIndex}). A big gzip file without a cached
    index gets its index pass (a task) and, meanwhile, a streaming *head* task that reads the file's first
    bytes (up to HEAD_RANGES × range-size) on another worker, so no worker waits idle for the index.
    """
    rs = settings.read
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    kinds = client.gather([client.submit(is_gzip, s, pure=False) for s in sources])
    now, pending = [], {}
    for i, (s, gz) in enumerate(zip(sources, kinds)):
        if not gz:
            now += plan_plain(i, s.size, rs.range_size)
        elif s.size < rs.small_file:
            now.append(ByteRange(i, 0, 0, None, "stream"))
        else:
            fs, path = filesystem(cache_url(settings.warehouse, s))
            if not fs.exists(path):
                now.append(ByteRange(i, 0, 0, _head_size(s.size, workers, rs), "stream"))
            pending[i] = client.submit(build_index, s, settings.warehouse, rs.index_spacing,
                                       key=f"gzindex-{s.fingerprint}", retries=0)
    if pending:
        say(f"index pass over {len(pending)} gzip file(s)...")
    return now, pending


def _head_size(compressed: int, workers: int, rs) -> int:
    """What the head task reads: at most HEAD_RANGES ranges, and at most about half of one worker's share
    of the file (CSV inflates ~4x), so a mid-sized file is still read by several tasks."""
    return max(rs.block_size, min(HEAD_RANGES * rs.range_size, compressed * 4 // (2 * workers)))


def partition(client: Client, settings: Settings, source_urls: list[str], table_arg: str,
              replace: bool = False, buckets: int | None = None) -> dict:
    """Run the partition stage; returns the final load record (raises LoadError after a FAILED line)."""
    ident = table_name(table_arg, settings.namespace)
    sources = [describe(u) for u in source_urls]
    if len({s.url for s in sources}) != len(sources):
        raise UsageError("the same source is given twice")
    catalog = open_catalog(settings.warehouse, settings.catalog)
    table = create_or_load(catalog, ident, fact_schema(), fact_spec(buckets or settings.buckets),
                           table_properties(settings))
    n_buckets = bucket_count(table)
    if buckets is not None and buckets != n_buckets:
        raise UsageError(f"{qualified(ident)} has {n_buckets} buckets, fixed when it was created (--buckets {buckets})")
    qtable = create_or_load(catalog, (ident[0], settings.quarantine_table), QUARANTINE_ICEBERG, QUARANTINE_SPEC,
                            table_properties(settings))

    lid = load_id(STAGE, qualified(ident), [s.fingerprint for s in sources])
    load = Load(STAGE, qualified(ident), lid, [s.to_dict() for s in sources])
    done = committed_sources(table)
    todo = [s for s in sources if replace or s.fingerprint not in done]
    if not todo:
        return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, skipped_sources=[s.url for s in sources])
    skipped = [s.url for s in sources if s not in todo]
    if skipped:
        say(f"already loaded, skipped: {', '.join(skipped)}")
    load.status("RUNNING", sources=[s.url for s in todo])
    try:
        record = _run(client, settings, table, qtable, todo, load, replace)
    except Exception as e:  # report, then let the CLI map it to an exit code
        client.run(drop_load, lid)
        load.finish("FAILED", error=str(e))
        if isinstance(e, (LoadError, UsageError)):
            raise
        raise LoadError(f"{type(e).__name__}: {e}") from e
    if skipped:
        record["skipped_sources"] = skipped
    return record


def _run(client, settings, table, qtable, sources, load: Load, replace: bool) -> dict:
    # table metadata grows with the table's history: send it to each worker once, not with every task
    target, qtarget = client.scatter([WriteTarget.of(table), WriteTarget.of(qtable)], broadcast=True, hash=False)
    lid = load.load_id
    ranges, pending = start_sources(client, sources, settings)
    futures = _submit(client, sources, ranges, lid, target, qtarget, settings)
    for i, index in pending.items():
        head = next((r for r in ranges if r.source_index == i), None)
        more = plan_indexed(i, _result(index, futures), settings.read.range_size,
                            start=head.end if head else 0, first_number=1 if head else 0)
        ranges += more
        futures += _submit(client, sources, more, lid, target, qtarget, settings)
    say(f"{len(ranges)} read task(s) over {len(sources)} source(s); dashboard: {client.dashboard_link}")
    results = _collect(futures)

    files, qfiles, seen = [], [], {}
    for attempt in range(3):
        holders = list(client.scheduler_info(n_workers=-1)["workers"])
        handed = client.gather([client.submit(finish_load, load.load_id, workers=[w], allow_other_workers=False,
                                              pure=False) for w in holders])
        for by_source in handed:
            for src_index, part in by_source.items():
                files += part["files"]
                qfiles += part["quarantine_files"]
                for key in part["ranges"]:
                    if key in seen:
                        raise LoadError(f"range {key} was read twice; nothing committed")
                    seen[key] = True
        missing = [r for r in ranges if r.key not in seen]
        if not missing:
            break
        say(f"{len(missing)} range(s) were lost with a worker; reading them again")
        results.update(_read_all(client, sources, missing, load.load_id, target, qtarget, settings))
    else:
        raise LoadError(f"{len(missing)} range(s) could not be read after 3 attempts")

    rows_read = sum(r.lines for r in results.values())
    written = sum(f.data_file.record_count for f in files)
    quarantine = {}
    for r in results.values():
        for k, v in r.quarantine.items():
            quarantine[k] = quarantine.get(k, 0) + v
    quarantined = sum(quarantine.values())
    if written != rows_read - quarantined or written != sum(r.written for r in results.values()):
        raise LoadError(f"row accounting mismatch: read {rows_read}, written {written}, quarantined {quarantined}")

    commit_partition(table, qtable, files, qfiles, sources, load, replace)
    return load.finish(
        "SUCCEEDED", rows_read=rows_read, rows_written=written, rows_quarantined=quarantined,
        quarantine=dict(sorted(quarantine.items())), files_written=len(files), read_tasks=len(ranges),
        bytes_written=sum(f.data_file.file_size_in_bytes for f in files),
        vp_std=stats.summary(stats.tree_reduce([f.moments for f in files]))["vp_std"],
    )


def _submit(client, sources, ranges, lid, target, qtarget, settings) -> list:
    return [client.submit(read_range, sources[r.source_index], r, lid, target, qtarget, settings,
                          key=f"read-{lid}-{r.key}-{uuid.uuid4().hex[:6]}", retries=0) for r in ranges]


def _result(future, others: list):
    """A future's result; on failure the other tasks of the load are cancelled first."""
    try:
        return future.result()
    except Exception:
        for f in others:
            f.cancel()
        raise


def _collect(futures) -> dict:
    results = {}
    progress = Progress(len(futures), "read")
    for fut in as_completed(futures):
        res = _result(fut, futures)
        results[res.key] = res
        progress.step(res.uncompressed)
    progress.close()
    return results


def _read_all(client, sources, ranges, lid, target, qtarget, settings) -> dict:
    return _collect(_submit(client, sources, ranges, lid, target, qtarget, settings))
