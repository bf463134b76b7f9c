"""The join stage: FACT_PARTITIONED ⋈ campaign dimension → FACT_JOINED, as a broadcast join.

The dimension is read once on the driver and scattered to every worker once; each task reads one source data
file, left-joins it with the dimension and writes one file into the same (date, bucket) partition of the target.
Joins are incremental: only source files added since the target's last join are processed (`--full` rebuilds).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, as_completed

from ..report import stats
from ..table.bucket import bucket_of
from ..table.commit import PROP_DIMENSION, PROP_STATS, commit_files, latest_id, props_of, write_stats_file
from .dimension import Dimension, as_dimension, store
from ..errors import LoadError, UsageError
from ..report.loads import Load, load_id, say
from ..report.progress import Progress
from ..schema import COLUMNS
from ..table.catalog import create_or_load, load_table, open_catalog, qualified, table_name, table_properties
from ..table.schema import bucket_count, fact_schema, fact_spec, iceberg_schema
from ..table.write import WriteTarget, WrittenFile, write_data_files

STAGE = "join"
PROP_SOURCE_SNAPSHOT = "impressions.source-snapshot-id"
MATCHED = "__dimension_matched"


# ------------------------------------------------------------------ worker side

def broadcast_copy(dim: Dimension) -> pa.Table:
    """The dimension as the join needs it: key columns named as in the facts, and a match marker."""
    rows = dim.rows
    if len(dim.keys) == 2:
        rows = rows.rename_columns(["ad_date" if c == dim.keys[0] else c for c in rows.column_names])
    return rows.append_column(MATCHED, pa.array([True] * rows.num_rows, pa.bool_()))


def join_rows(facts: pa.Table, dim_rows: pa.Table, attributes: list[str]) -> tuple[pa.Table, int]:
    """Left join; returns the joined rows (fact columns, then attributes) and the orphan count."""
    keys = ["ad_date", "campaign_id"] if "ad_date" in dim_rows.column_names else ["campaign_id"]
    facts = facts.select(COLUMNS)
    joined = facts.join(dim_rows, keys=keys, join_type="left outer", use_threads=False)
    orphans = joined[MATCHED].null_count
    return joined.select(COLUMNS + attributes), orphans


def read_file(target: WriteTarget, path: str) -> pa.Table:
    with target.io().new_input(path).open() as f:
        return pq.read_table(f)


def join_file(src: WriteTarget, dst: WriteTarget, path: str, dim_rows: pa.Table, attributes: list[str]) -> dict:
    """Read one source file, join it, write it into the same partition of the target (whose writer puts the
    columns in the target's order and types, and fills the ones the rows lack with nulls)."""
    facts = read_file(src, path)
    result = {"source_file": path, "rows_read": facts.num_rows, "orphans": 0, "record": None}
    if facts.num_rows == 0:
        return result
    joined, orphans = join_rows(facts, dim_rows, attributes)
    values = (joined["ad_date"][0].as_py(), bucket_of(joined["campaign_id"][0].as_py(), bucket_count(dst.metadata)))
    (data_file,) = write_data_files(dst, [(values, joined)])
    result["orphans"] = orphans
    result["record"] = WrittenFile(data_file, path, stats.chunk(joined["viewing_percentage"]))
    return result


# ------------------------------------------------------------------ driver side

def evolve(table, dim: Dimension):
    """Add the dimension's attribute columns the table lacks (Iceberg schema evolution)."""
    have = {f.name for f in table.schema().fields}
    missing = [c for c in dim.attributes if c not in have]
    if missing:
        with table.update_schema() as u:
            u.union_by_name(iceberg_schema(dim.rows.select(missing)))
        table = table.refresh()
        say(f"{'.'.join(table.name())}: added column(s) {', '.join(missing)}")
    return table


def dimension_snapshot(catalog, settings, namespace: str, dim: Dimension, lid: str, stage: str) -> int:
    """Store the dimension as a new snapshot unless the current one came from the same file."""
    ident = (namespace, settings.dimension_table)
    try:
        table = catalog.load_table(ident)
        current = table.current_snapshot()
        if current is not None and dim.source:
            sources = json.loads(props_of(current).get("impressions.sources", "[]"))
            if sources and sources[0].get("fingerprint") == dim.source["fingerprint"]:
                return current.snapshot_id
    except Exception:  # noqa: BLE001 - no table yet
        pass
    return store(catalog, ident, dim, lid, stage)


def run_file_tasks(client: Client, src: WriteTarget, dst: WriteTarget, paths: list[str], dim: Dimension,
                   label: str) -> list[dict]:
    """Broadcast the dimension once, then one join task per file."""
    # the dimension and the two tables' metadata go to each worker once, not with every task
    dim_future, src, dst = client.scatter([broadcast_copy(dim), src, dst], broadcast=True, hash=False)
    futures = [client.submit(join_file, src, dst, p, dim_future, dim.attributes, pure=False) for p in paths]
    progress = Progress(len(futures), label)
    out = []
    for fut in as_completed(futures):
        out.append(fut.result())
        progress.step()
    progress.close()
    return out


def join(client: Client, settings, dimension: str | Dimension, source_arg: str, table_arg: str,
         full: bool = False) -> dict:
    catalog = open_catalog(settings.warehouse, settings.catalog)
    src_ident = table_name(source_arg, settings.namespace)
    dst_ident = table_name(table_arg, settings.namespace)
    if src_ident == dst_ident:
        raise UsageError("join writes a new table: SOURCE_TABLE and TABLE must differ")
    source = load_table(catalog, src_ident)
    dim = as_dimension(dimension, settings)
    src_snapshot = source.current_snapshot()
    lid = load_id(STAGE, qualified(dst_ident), [dim.source["fingerprint"],
                                                 str(src_snapshot.snapshot_id if src_snapshot else None), str(full)])
    load = Load(STAGE, qualified(dst_ident), lid)

    target = create_or_load(catalog, dst_ident, fact_schema(), fact_spec(bucket_count(source)),
                            table_properties(settings))
    if bucket_count(target) != bucket_count(source):
        raise UsageError(f"{qualified(dst_ident)} has {bucket_count(target)} buckets, the source {bucket_count(source)}")
    current = {t.file.file_path: t.file for t in source.scan().plan_files()} if src_snapshot else {}
    done_at = latest_id(target, PROP_SOURCE_SNAPSHOT)
    if not full and done_at is not None and target.current_snapshot() is not None:
        if src_snapshot and done_at == src_snapshot.snapshot_id:
            return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                               files_written=0, bytes_written=0, orphans=0, reason="source unchanged since last join")
        try:
            before = {t.file.file_path for t in source.scan(snapshot_id=done_at).plan_files()}
        except Exception:  # noqa: BLE001 - expired snapshot
            before = None
        if before is None or not before <= set(current):
            say("the source table was rewritten since the last join: rebuilding the joined table (--full)")
            full = True
        else:
            paths = [p for p in current if p not in before]
    if full or done_at is None or target.current_snapshot() is None:
        full = True
        paths = list(current)

    load.status("RUNNING", files=len(paths))
    try:
        dim_snapshot = dimension_snapshot(catalog, settings, dst_ident[0], dim, lid, "dimension")
        target = evolve(target, dim)
        results = run_file_tasks(client, WriteTarget.of(source), WriteTarget.of(target), paths, dim, "join")
        records = [r["record"] for r in results if r["record"] is not None]
        stats_path = write_stats_file(target, lid, [r.summary() for r in records])

        def plan(t):
            """A rebuild replaces whatever the target holds now; an incremental join appends, but only if no
            other join has advanced the target meanwhile (its files would then be appended twice)."""
            if full:
                return [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
            if latest_id(t, PROP_SOURCE_SNAPSHOT) != done_at:
                raise LoadError(f"another join committed to {qualified(dst_ident)} meanwhile; nothing committed, "
                                "run the join again")
            return []

        commit_files(target, load, STAGE, [r.data_file for r in records], plan, {
            PROP_SOURCE_SNAPSHOT: str(src_snapshot.snapshot_id) if src_snapshot else "",
            PROP_DIMENSION: str(dim_snapshot), PROP_STATS: stats_path,
            "impressions.sources": json.dumps([dim.source]),
        })
    except Exception as e:
        load.finish("FAILED", error=str(e))
        if isinstance(e, (LoadError, UsageError)):
            raise
        raise LoadError(f"{type(e).__name__}: {e}") from e
    rows_read = sum(r["rows_read"] for r in results)
    written = sum(r.data_file.record_count for r in records)
    return load.finish("SUCCEEDED", rows_read=rows_read, rows_written=written, rows_quarantined=0, quarantine={},
                       files_written=len(records), bytes_written=sum(r.data_file.file_size_in_bytes for r in records),
                       orphans=sum(r["orphans"] for r in results), full=full,
                       vp_std=stats.summary(stats.tree_reduce([r.moments for r in records]))["vp_std"])
