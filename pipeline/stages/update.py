"""The update stage: campaign metadata changed → rewrite only the partitions that hold changed campaigns.

Diff the new dimension against the version the table was built from → changed keys → affected (date, bucket)
partitions → re-join and rewrite only their data files → one overwrite snapshot that deletes the old files and
adds the new ones. Every other data file keeps its path and bytes. Readers see the old snapshot or the new one,
never a mix. On a commit conflict the whole plan is made again against the new snapshot.

TABLE may equal SOURCE_TABLE (in place, the production mode). A different TABLE gets a copy of SOURCE_TABLE's
unaffected files (server-side copies on S3) plus the rewritten partitions, so the two tables never share a
file and maintenance on one can never delete the other's data.
"""
from __future__ import annotations

import json
import uuid

import pyarrow as pa
from distributed import Client

from ..table.bucket import bucket_array
from ..table.commit import (PROP_DIMENSION, PROP_LOAD, PROP_STATS, commit_files, latest_id, load_file_stats, props_of, write_stats_file)
from .dimension import Dimension, as_dimension, changed_keys, load_version, store, upsert
from ..errors import LoadError, UsageError
from .join import evolve, run_file_tasks
from ..report.loads import Load, emit, load_id, say
from ..storage import filesystem, is_remote
from ..table.catalog import create_or_load, load_table, open_catalog, qualified, table_name, table_properties
from ..table.schema import bucket_count
from ..table.write import WriteTarget, to_date, with_path

STAGE = "update"
ATTEMPTS = 3


class Replan(Exception):
    """The table changed under us in a way that invalidates the rewritten files."""


def dimension_snapshot_of(table) -> int | None:
    """The dimension version the table was last built from."""
    return latest_id(table, PROP_DIMENSION)


def affected_partitions(changed: pa.Table, keys, buckets: int) -> set:
    """{(days or None, bucket)}: None means every date of that bucket."""
    b = bucket_array(changed["campaign_id"], buckets).to_pylist()
    if len(keys) == 2:
        days = changed[keys[0]].cast(pa.int32()).to_pylist()
        return set(zip(days, b))
    return {(None, x) for x in b}


def _partition_of(data_file) -> tuple[int, int]:
    days, bucket = data_file.partition[0], data_file.partition[1]
    if hasattr(days, "toordinal"):
        days = (days - to_date(0)).days
    return int(days), int(bucket)


def in_affected(data_file, affected: set) -> bool:
    days, bucket = _partition_of(data_file)
    return (None, bucket) in affected or (days, bucket) in affected


def update(client: Client, settings, dimension: str | Dimension, source_arg: str, table_arg: str,
           full_snapshot: bool = False, dry_run: bool = False) -> dict:
    new_rows = as_dimension(dimension, settings)  # read once; a re-plan diffs the same rows again
    for attempt in range(ATTEMPTS):
        try:
            return _update_once(client, settings, new_rows, source_arg, table_arg, full_snapshot, dry_run)
        except Replan as e:
            say(f"the table changed during the update ({e}); planning again ({attempt + 2}/{ATTEMPTS})")
    raise LoadError(f"update could not commit after {ATTEMPTS} attempts: concurrent writers keep changing the table")


def _update_once(client, settings, new_rows: Dimension, source_arg, table_arg, full_snapshot, dry_run) -> dict:
    catalog = open_catalog(settings.warehouse, settings.catalog)
    src_ident = table_name(source_arg, settings.namespace)
    dst_ident = table_name(table_arg, settings.namespace)
    in_place = src_ident == dst_ident
    source = load_table(catalog, src_ident)
    dim_ident = (src_ident[0], settings.dimension_table)

    base_id = dimension_snapshot_of(source)
    if base_id is None:
        raise UsageError(f"{qualified(src_ident)} was not built by `join` (no dimension snapshot recorded)")
    old = load_version(catalog, dim_ident, base_id)
    merged = upsert(old, new_rows, full_snapshot)
    changed = changed_keys(old, merged)
    buckets = bucket_count(source)
    affected = affected_partitions(changed, merged.keys, buckets)

    src_snapshot = source.current_snapshot()
    files = [t.file for t in source.scan().plan_files()] if src_snapshot else []
    hit = [f for f in files if in_affected(f, affected)]
    keep = [f for f in files if not in_affected(f, affected)]
    bytes_total = sum(f.file_size_in_bytes for f in files)
    lid = load_id(STAGE, qualified(dst_ident), [new_rows.source["fingerprint"], str(full_snapshot),
                                                  str(src_snapshot.snapshot_id if src_snapshot else None)])
    load = Load(STAGE, qualified(dst_ident), lid)
    plan = {
        "changed_keys": changed.num_rows,
        "changed": [r if len(r) > 1 else r["campaign_id"] for r in changed.slice(0, 100).to_pylist()],
        "affected_partitions": len({_partition_of(f) for f in hit}),
        "files_rewritten": len(hit), "bytes_rewritten": sum(f.file_size_in_bytes for f in hit),
        "bytes_total": bytes_total,
    }
    if dry_run:
        plan_out = {**plan, "dry_run": True, "partitions": sorted({_partition_of(f) for f in hit}),
                    "files": [f.file_path for f in hit]}
        emit({"event": "update_plan", "load_id": lid, "table": qualified(dst_ident), **plan_out})
        return load.record("SUCCEEDED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, **plan_out)

    target_exists = catalog.table_exists(dst_ident)
    if target_exists and not in_place:
        current = load_table(catalog, dst_ident).current_snapshot()
        if current is not None and props_of(current).get(PROP_LOAD) == lid:
            say(f"{qualified(dst_ident)} already holds this update of this source snapshot: skipped")
            return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                               files_written=0, bytes_written=0, committed=False, **plan)
    if changed.num_rows == 0 and (in_place or target_exists):
        say("the dimension update changes nothing: nothing committed")
        return load.finish("SUCCEEDED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, committed=False, **plan)

    load.status("RUNNING", **{k: plan[k] for k in ("changed_keys", "affected_partitions", "files_rewritten")})
    try:
        record = _rewrite(client, catalog, settings, source, dst_ident, in_place, merged, changed, hit, keep,
                          load, lid, dim_ident, base_id)
    except Replan:
        raise
    except Exception as e:
        load.finish("FAILED", error=str(e))
        if isinstance(e, (LoadError, UsageError)):
            raise
        raise LoadError(f"{type(e).__name__}: {e}") from e
    return load.finish("SUCCEEDED", **record, **plan)


def _rewrite(client, catalog, settings, source, dst_ident, in_place, merged, changed, hit, keep, load, lid,
             dim_ident, base_id) -> dict:
    # The new dimension version first: the table records which version it was built from, so a failed
    # commit below leaves the table pointing at the old version and a rerun diffs against it again.
    dim_snapshot = store(catalog, dim_ident, merged, lid, "dimension") if changed.num_rows else base_id
    if in_place:
        target = source
    else:
        from ..table.schema import fact_spec

        target = create_or_load(catalog, dst_ident, source.schema(), fact_spec(bucket_count(source)),
                                table_properties(settings))
        if bucket_count(target) != bucket_count(source):
            raise UsageError(f"{qualified(dst_ident)} has a different bucket count than {'.'.join(source.name())}")
    # the source's columns first (so copies and rewrites agree), then the dimension's new ones
    target = evolve(_with_source_columns(target, source), merged)
    if not in_place:
        _check_same_field_ids(source, target)
    results = run_file_tasks(client, WriteTarget.of(source), WriteTarget.of(target), [f.file_path for f in hit],
                             merged, "rewrite")
    records = [r["record"] for r in results if r["record"] is not None]
    copies = [] if in_place else _copy_files(source, target, keep)
    stats_src = load_file_stats(source) if copies else {}
    stats_files = [r.summary() for r in records] + [
        {**stats_src[old.file_path], "path": new.file_path} for old, new in copies if old.file_path in stats_src]
    stats_path = write_stats_file(target, lid, stats_files)
    hit_paths = {f.file_path for f in hit}
    hit_partitions = {_partition_of(f) for f in hit}

    def plan_deletes(t):
        current = [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
        if not in_place:
            return current  # the copy replaces the target's whole contents
        if dimension_snapshot_of(t) != base_id:
            # another update committed a newer dimension version: our diff was against an old one
            raise Replan("another update changed the table's dimension version")
        present = {f.file_path for f in current}
        if not hit_paths <= present:
            raise Replan("files to rewrite were changed by another commit")
        affected_now = {f.file_path for f in current if _partition_of(f) in hit_partitions}
        if affected_now - hit_paths:
            raise Replan("new files arrived in the affected partitions")
        return [f for f in current if f.file_path in hit_paths]

    adds = [r.data_file for r in records] + [new for _, new in copies]
    props = {PROP_DIMENSION: str(dim_snapshot), PROP_STATS: stats_path,
             "impressions.sources": json.dumps([merged.source] if merged.source else [])}
    if not hit and not adds and in_place:
        return {"rows_read": 0, "rows_written": 0, "files_written": 0, "bytes_written": 0, "committed": False}
    commit_files(target, load, STAGE, adds, plan_deletes, props)
    rows_read = sum(r["rows_read"] for r in results)
    return {"rows_read": rows_read, "rows_written": sum(r.data_file.record_count for r in records),
            "rows_quarantined": 0, "quarantine": {}, "files_written": len(records),
            "bytes_written": sum(r.data_file.file_size_in_bytes for r in records),
            "orphans": sum(r["orphans"] for r in results), "files_copied": len(copies), "committed": True}


def _with_source_columns(target, source):
    have = {f.name for f in target.schema().fields}
    missing = [f for f in source.schema().fields if f.name not in have]
    if missing:
        with target.update_schema() as u:
            for f in missing:
                u.add_column(f.name, f.field_type)
        target = target.refresh()
    return target


def _check_same_field_ids(source, target) -> None:
    """Copied Parquet files carry the source's field ids: the target must use the same ones."""
    ids = {f.name: f.field_id for f in target.schema().fields}
    wrong = [f.name for f in source.schema().fields if ids.get(f.name) != f.field_id]
    if wrong:
        raise UsageError(f"{'.'.join(target.name())} numbers column(s) {', '.join(wrong)} differently from the "
                         f"source; drop it or update a fresh table")


def _copy_files(source, target, files) -> list:
    """Copy unaffected data files into the target's location (server-side on S3); same partition and stats."""
    if not files:
        return []
    from concurrent.futures import ThreadPoolExecutor

    fs, _ = filesystem(files[0].file_path)
    prefix = f"{target.metadata.location.rstrip('/')}/data/copied-{uuid.uuid4().hex[:12]}"

    def copy_one(df):
        # Keep the partition directories: file names alone may repeat across partitions.
        relative = df.file_path.split("/data/", 1)[1] if "/data/" in df.file_path else df.file_path.rsplit("/", 1)[1]
        new_path = f"{prefix}/{relative}"
        if not is_remote(new_path):
            fs.makedirs(_fs_path(new_path).rsplit("/", 1)[0], exist_ok=True)
        fs.copy(_fs_path(df.file_path), _fs_path(new_path))
        return df, with_path(df, new_path)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(copy_one, files))


def _fs_path(url: str) -> str:
    return filesystem(url)[1] if not url.startswith("file://") else url[len("file://"):]
