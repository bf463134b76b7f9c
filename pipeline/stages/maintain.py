"""Maintenance verbs, safe to run from cron next to the daily loads: compact, expire, cleanup.

- `compact`: the small files of each partition are rewritten into files near a target size, one task per
  (partition, source) group so the files stay named for their source (lineage.py) and a later --replace still
  finds them; all in ONE snapshot. Rows are copied as they are, so lineage and statistics do not change. If a
  concurrent commit removed any file being compacted, the compaction is planned again (never committed over it);
  files a concurrent load adds are simply not part of it.
- `expire`: pyiceberg's snapshot expiry (older than a threshold, keeping the newest N).
- `cleanup`: files under the table that no metadata reaches and that are older than a threshold (a load in
  flight writes newer ones): listed, and removed with --delete.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
from distributed import Client

from .. import interrupts
from ..errors import LoadError
from ..report.loads import FAILURES, Load, emit, fail, load_id, say
from ..table import maintenance
from ..table.catalog import load_table, open_catalog, qualified, table_name
from ..table.commit import Change, commit, without_auto_retry
from ..table.lineage import fingerprint_of
from ..table.write import NO_SOURCE, WriteTarget, to_date, write_data_files
from .join import read_file
from .partition_commit import PROP_LOAD, PROP_STAGE
from .tasks import map_shared

SMALL = 0.75  # a file below this share of the target size is "small"
ATTEMPTS = 3


class _Changed(Exception):
    """A file being compacted was removed by a concurrent commit."""


def _partition_values(table, data_file) -> tuple:
    """The partition of a data file as the writer takes it (identity dates as dates)."""
    spec = table.metadata.specs()[data_file.spec_id]
    schema = table.schema()
    values = []
    for i, f in enumerate(spec.fields):
        v = data_file.partition[i]
        if str(schema.find_field(f.source_id).field_type) == "date" and isinstance(v, int) \
                and f.transform.__class__.__name__ == "IdentityTransform":
            v = to_date(v)
        values.append(v)
    return tuple(values)


def plan_compaction(table, target_size: int) -> list[dict]:
    """Batches of small files, each batch one (partition, source) group of at most about the target size."""
    groups: dict = {}
    for task in table.scan().plan_files() if table.current_snapshot() else []:
        f = task.file
        if task.delete_files:
            raise LoadError(f"{'.'.join(table.name())} has row-level delete files; compact it with the engine "
                            "that wrote them")
        if f.file_size_in_bytes < SMALL * target_size:
            key = (f.spec_id, tuple(f.partition), fingerprint_of(f.file_path) or NO_SOURCE)
            groups.setdefault(key, []).append(f)
    batches = []
    for (_, _, source), files in groups.items():
        batch, size = [], 0
        for f in sorted(files, key=lambda f: f.file_size_in_bytes) + [None]:
            if f is None or (batch and size + f.file_size_in_bytes > target_size):
                if len(batch) > 1:  # one small file alone is left as it is
                    batches.append({"files": batch, "source": source})
                batch, size = [], 0
            if f is not None:
                batch.append(f)
                size += f.file_size_in_bytes
    return batches


def compact_batch(target: WriteTarget, paths: list[str], values: tuple, source: str, size: int) -> list:
    """Read a batch of small files of one partition and source, write them as one file (of at most `size`)."""
    rows = pa.concat_tables([read_file(target, p) for p in paths], promote_options="default")
    return write_data_files(target, [(values, source, rows)], file_size=size)


def compact(client: Client, settings, table_arg: str, target_size: int) -> dict:
    ident = table_name(table_arg, settings.namespace)
    catalog = open_catalog(settings.warehouse, settings.catalog, create=False)
    table = without_auto_retry(load_table(catalog, ident))
    for attempt in range(ATTEMPTS):
        try:
            return _compact_once(client, table, ident, target_size)
        except _Changed as e:
            say(f"compact: {e}; planning again ({attempt + 2}/{ATTEMPTS})")
            table = table.refresh()
    raise LoadError(f"compact gave up after {ATTEMPTS} attempts: concurrent commits keep rewriting the same files")


def _compact_once(client, table, ident, target_size) -> dict:
    snapshot = table.current_snapshot()
    batches = plan_compaction(table, target_size)
    lid = load_id("compact", qualified(ident), [str(snapshot.snapshot_id if snapshot else None), str(target_size)])
    load = Load("compact", qualified(ident), lid)
    if not batches:
        return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, files_rewritten=0, reason="no partition has small files")
    inputs = [f for b in batches for f in b["files"]]
    load.status("RUNNING", files_rewritten=len(inputs))
    calls = [([f.file_path for f in b["files"]], _partition_values(table, b["files"][0]), b["source"], target_size)
             for b in batches]
    try:
        written = [w for ws in map_shared(client, compact_batch, [WriteTarget.of(table)], calls, "compact") for w in ws]
    except FAILURES as e:
        fail(load, e)
    rows_in = sum(f.record_count for f in inputs)
    rows_out = sum(w.data_file.record_count for w in written)
    if rows_in != rows_out:
        raise LoadError(f"compaction read {rows_in} rows but wrote {rows_out}; nothing committed")
    gone = {f.file_path for f in inputs}

    def plan(t):
        present = [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
        have = {f.file_path for f in present}
        if not gone <= have:
            raise _Changed("a concurrent commit removed files being compacted")
        return Change(adds=[w.data_file for w in written], deletes=[f for f in present if f.file_path in gone],
                      snapshot_properties={PROP_LOAD: lid, PROP_STAGE: "compact"})

    try:
        commit(table, plan)
    except _Changed:
        raise  # compact plans again
    except FAILURES as e:  # an interrupt or a failed commit is reported FAILED, as in the other stages
        fail(load, e)
    return load.finish("SUCCEEDED", rows_read=rows_in, rows_written=rows_out, rows_quarantined=0, quarantine={},
                       files_written=len(written), bytes_written=sum(w.data_file.file_size_in_bytes for w in written),
                       files_rewritten=len(inputs), bytes_rewritten=sum(f.file_size_in_bytes for f in inputs))


def expire(settings, table_arg: str, older_than, retain_last: int) -> dict:
    ident = table_name(table_arg, settings.namespace)
    table = load_table(open_catalog(settings.warehouse, settings.catalog, create=False), ident)
    before = len(table.metadata.snapshots)
    ids = maintenance.expire(table, datetime.now(timezone.utc) - older_than, retain_last)
    out = {"event": "expire", "table": qualified(ident), "expired": len(ids), "snapshots_before": before,
           "snapshots_after": before - len(ids)}
    say(f"{qualified(ident)}: expired {len(ids)} of {before} snapshot(s)")
    emit(out)
    return out


def cleanup(settings, table_arg: str, older_than, delete: bool) -> dict:
    ident = table_name(table_arg, settings.namespace)
    table = load_table(open_catalog(settings.warehouse, settings.catalog, create=False), ident)
    files = maintenance.unreachable(table, datetime.now(timezone.utc) - older_than)
    if delete:
        interrupts.check()  # an interrupted command deletes nothing (interrupts.py)
        maintenance.delete([f["path"] for f in files])
    size = sum(f["bytes"] for f in files)
    verb = "deleted" if delete else "found (use --delete to remove them)"
    say(f"{qualified(ident)}: {len(files)} unreferenced file(s), {size:,} bytes, {verb}")
    out = {"event": "cleanup", "table": qualified(ident), "deleted": delete, "count": len(files), "bytes": size,
           "files": [f["path"] for f in files]}
    emit(out)
    return out
