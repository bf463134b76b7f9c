"""The join stage: FACT_PARTITIONED ⋈ campaign dimension → FACT_JOINED, as a broadcast join.

The dimension is read once on the driver and scattered to every worker once (again if its holders die); each task reads one source data
file, left-joins it with the dimension and writes one file into the same (date, bucket) partition of the target,
named for the same source. Joins are incremental by lineage (table/lineage.py): the target holds the source
loads it has joined; a run joins the source's loads it does not hold yet and drops the rows of loads the source
no longer holds (replaced sources). `--full` rebuilds; so does a run whose dimension differs from the one the
target was built with, or whose source was rewritten by another engine (its rows can no longer be told apart
by load) — each said on stderr.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client

from ..errors import LoadError, UsageError
from ..report import stats
from ..report.loads import FAILURES, Load, fail, load_id, report_files, say
from ..schema import COLUMNS, PARSED_SCHEMA
from ..table.bucket import bucket_of
from ..table.catalog import create_or_load, load_table, open_catalog, qualified, table_name, table_properties
from ..table.commit import Change, commit, without_auto_retry
from ..table.lineage import (DIMENSION_FINGERPRINT, DIMENSION_SNAPSHOT, entry_properties, fingerprint_of, lineage,
                             property_key)
from ..table.schema import add_columns, bucket_count, fact_schema, fact_spec
from ..table.write import NO_SOURCE, WriteTarget, WrittenFile, write_data_files
from .dimension import Dimension, as_dimension, store
from .partition_commit import PROP_LOAD, PROP_SOURCES, PROP_STAGE
from .tasks import live_workers, map_shared

STAGE = "join"
MATCHED = "__dimension_matched"
FILES_PER_TASK = 16  # at most, in one join or rewrite task (run_file_tasks)


# ------------------------------------------------------------------ worker side

def broadcast_copy(dim: Dimension) -> pa.Table:
    """The dimension as the join needs it: key columns named as in the facts, and a match marker."""
    rows = dim.rows
    if len(dim.keys) == 2:
        rows = rows.rename_columns(["ad_date" if c == dim.keys[0] else c for c in rows.column_names])
    return rows.append_column(MATCHED, pa.array([True] * rows.num_rows, pa.bool_()))


def join_rows(facts: pa.Table, dim_rows: pa.Table, attributes: list[str]) -> tuple[pa.Table, int]:
    """Left join; returns the joined rows (fact columns, then attributes) and the orphan count."""
    facts = facts.select(COLUMNS)
    if "ad_date" not in dim_rows.column_names:
        return lookup_join(facts, dim_rows, attributes)
    facts = facts.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                                  for f in facts.schema]))  # Acero's hash join takes no dictionary keys
    joined = facts.join(dim_rows, keys=["ad_date", "campaign_id"], join_type="left outer", use_threads=False)
    orphans = joined[MATCHED].null_count
    return joined.select(COLUMNS + attributes), orphans


def lookup_join(facts: pa.Table, dim_rows: pa.Table, attributes: list[str]) -> tuple[pa.Table, int]:
    """The left join on campaign_id alone, as a lookup: each distinct campaign of a chunk is looked up once in
    the dimension, and every attribute column becomes a dictionary array whose indices are the rows' dimension
    row (null: no match) and whose dictionary is the dimension's column — no hash join, no copy of the
    attribute values per row (the writer stores them dictionary-encoded as they are). The facts' order is kept."""
    import pyarrow.compute as pc

    keys = dim_rows["campaign_id"].combine_chunks()
    values = {a: _without_nulls(dim_rows[a].combine_chunks()) for a in attributes}
    columns: dict = {a: [] for a in attributes}
    orphans = 0
    for chunk in facts["campaign_id"].chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        at = pc.take(pc.index_in(encoded.dictionary, value_set=keys), encoded.indices)  # dimension row, or null
        orphans += at.null_count
        for a in attributes:
            dictionary, valid = values[a]
            if dictionary is None:  # the attribute is null for every campaign
                columns[a].append(pa.nulls(len(chunk), dim_rows[a].type))
                continue
            indices = at if valid is None else pc.if_else(pc.take(valid, at), at, pa.scalar(None, at.type))
            columns[a].append(pa.DictionaryArray.from_arrays(indices, dictionary))
    joined = facts
    for a in attributes:
        kind = dim_rows[a].type if values[a][0] is None else pa.dictionary(pa.int32(), dim_rows[a].type)
        joined = joined.append_column(a, pa.chunked_array(columns[a], kind))
    return joined, orphans


def _without_nulls(values: pa.Array):
    """(a dictionary for `values` without null entries — Parquet cannot write those —, which entries are valid);
    a null entry is replaced by a valid value that no row will point to. (None, None): every entry is null."""
    if values.null_count == 0:
        return values, None
    if values.null_count == len(values):
        return None, None
    valid = values.is_valid()
    return values.fill_null(values.filter(valid)[0]), valid


def read_file(target: WriteTarget, path: str, columns: list[str] | None = None) -> pa.Table:
    """A data file's rows: every column, or only `columns` with the fact's string ids as dictionaries. A join
    needs the fact columns alone (a rewrite would otherwise decode the old attribute strings only to drop them),
    and dictionary ids are ~7x cheaper to read than plain strings, looked up once per campaign and written again
    as they are."""
    with target.io().new_input(path).open() as f:
        if columns is None:
            return pq.read_table(f)
        ids = [c.name for c in PARSED_SCHEMA if pa.types.is_dictionary(c.type) and c.name in columns]
        return pq.read_table(f, columns=columns, read_dictionary=ids)


def join_file(src: WriteTarget, dst: WriteTarget, dim_rows: pa.Table, path: str, attributes: list[str]) -> dict:
    """Read one source file, join it, write it into the same partition of the target, named for the same source
    (the target's writer puts the columns in its order and types, and fills the ones the rows lack with nulls)."""
    facts = read_file(src, path, COLUMNS)
    result = {"source_file": path, "rows_read": facts.num_rows, "orphans": 0, "records": []}
    if facts.num_rows == 0:
        return result
    joined, orphans = join_rows(facts, dim_rows, attributes)
    values = (joined["ad_date"][0].as_py(), bucket_of(joined["campaign_id"][0].as_py(), bucket_count(dst.metadata)))
    result["orphans"] = orphans
    result["records"] = write_data_files(dst, [(values, fingerprint_of(path) or NO_SOURCE, joined)])
    return result


# ------------------------------------------------------------------ driver side

def evolve(table, dim: Dimension):
    """Add the dimension's attribute columns the table lacks (Iceberg schema evolution)."""
    missing = [c for c in dim.attributes if c not in {f.name for f in table.schema().fields}]
    if missing:
        table = add_columns(table, dim.rows.select(missing))
        say(f"{'.'.join(table.name())}: added column(s) {', '.join(missing)}")
    return table


def join_files(src: WriteTarget, dst: WriteTarget, dim_rows: pa.Table, paths: list[str],
               attributes: list[str]) -> list[dict]:
    """`join_file` for each of `paths`, in one task."""
    return [join_file(src, dst, dim_rows, path, attributes) for path in paths]


def run_file_tasks(client: Client, src: WriteTarget, dst: WriteTarget, paths: list[str], dim: Dimension,
                   label: str) -> list[dict]:
    """The files joined by tasks of up to FILES_PER_TASK files, still at least 8 tasks per worker thread (so
    the workers end together); the dimension and both tables' metadata go to each worker once. A backfill's
    small files (~60 KB, ~7 ms of work each) would otherwise spend a fifth of the workers' time waiting for
    Dask to hand them the next one."""
    slots = max(1, sum(w["nthreads"] for w in live_workers(client).values()))
    per_task = max(1, min(FILES_PER_TASK, len(paths) // (8 * slots)))
    batches = [paths[i:i + per_task] for i in range(0, len(paths), per_task)]
    results = map_shared(client, join_files, [src, dst, broadcast_copy(dim)],
                         [(batch, dim.attributes) for batch in batches], label)
    return [r for batch in results for r in batch]


def files_by_source(table) -> dict:
    """source fingerprint (None for files another engine named) → the table's live data files."""
    out: dict = {}
    if table.current_snapshot() is not None:
        for task in table.scan().plan_files():
            out.setdefault(fingerprint_of(task.file.file_path), []).append(task.file)
    return out


def _adds_up(files: dict, entries: dict, fingerprints) -> bool:
    """Whether each source's rows are all still in files named for it."""
    return all(sum(f.record_count for f in files.get(fp, [])) == entries[fp].rows for fp in fingerprints)


def join(client: Client, settings, dimension: str | Dimension, source_arg: str, table_arg: str,
         full: bool = False) -> dict:
    catalog = open_catalog(settings.warehouse, settings.catalog)
    src_ident = table_name(source_arg, settings.namespace)
    dst_ident = table_name(table_arg, settings.namespace)
    if src_ident == dst_ident:
        raise UsageError("join writes a new table: SOURCE_TABLE and TABLE must differ")
    source = load_table(catalog, src_ident)
    dim = as_dimension(dimension, settings)
    target = without_auto_retry(create_or_load(catalog, dst_ident, fact_schema(), fact_spec(bucket_count(source)),
                                               table_properties(settings)))
    if bucket_count(target) != bucket_count(source):
        raise UsageError(f"{qualified(dst_ident)} has {bucket_count(target)} buckets, the source {bucket_count(source)}")

    src_lin, dst_lin = lineage(source.properties), lineage(target.properties)
    src_files, dst_files = files_by_source(source), files_by_source(target)
    built = target.properties.get(DIMENSION_FINGERPRINT)
    if not full and dst_files and built and built != dim.fingerprint:
        say(f"{qualified(dst_ident)} was built with another version of the dimension: rebuilding it (as --full)")
        full = True
    stale = {fp for fp, e in dst_lin.items() if fp not in src_lin or src_lin[fp].load_id != e.load_id}
    new = {fp for fp in src_lin if fp not in dst_lin or fp in stale}
    if not full and (None in src_files or not _adds_up(src_files, src_lin, new)
                     or None in dst_files or not _adds_up(dst_files, dst_lin, stale)):
        say(f"the files of {qualified(src_ident)} or {qualified(dst_ident)} were rewritten by another tool: "
            "rebuilding (as --full)")
        full = True
    if full:
        paths = [f.file_path for fs in src_files.values() for f in fs]
        joined = set(src_lin)
    else:
        paths = [f.file_path for fp in new for f in src_files.get(fp, [])]
        joined = new
    lid = load_id(STAGE, qualified(dst_ident), [dim.fingerprint, "full" if full else "incremental",
                                                 *sorted(f"{fp}:{src_lin[fp].load_id}" for fp in joined)])
    load = Load(STAGE, qualified(dst_ident), lid, [dim.source] if dim.source else [])
    if not full and not new and not stale and target.current_snapshot() is not None:
        return load.finish("SKIPPED", rows_read=0, rows_written=0, rows_quarantined=0, quarantine={},
                           files_written=0, bytes_written=0, orphans=0, reason="no new loads in the source")

    load.status("RUNNING", files=len(paths), full=full)
    try:
        dim_snapshot = store(catalog, dst_ident[0], settings, dim, lid, "dimension")
        target = evolve(target, dim)
        results = run_file_tasks(client, WriteTarget.of(source), WriteTarget.of(target), paths, dim, "join")
        records: list[WrittenFile] = [w for r in results for w in r["records"]]

        def plan(t):
            if not full and lineage(t.properties) != dst_lin:
                raise LoadError(f"another join committed to {qualified(dst_ident)} meanwhile; nothing committed, "
                                "run the join again")
            now = lineage(t.properties)
            if full:
                deletes = [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
                gone = [fp for fp in now if fp not in joined]
            else:
                deletes = [f for fp in stale for f in dst_files.get(fp, [])]
                gone = [fp for fp in stale if fp not in joined]
            return Change(
                adds=[r.data_file for r in records], deletes=deletes,
                set_properties={**entry_properties(src_lin[fp] for fp in joined),
                                DIMENSION_SNAPSHOT: str(dim_snapshot), DIMENSION_FINGERPRINT: dim.fingerprint},
                remove_properties=[property_key(fp) for fp in gone],
                snapshot_properties={PROP_LOAD: lid, PROP_STAGE: STAGE, DIMENSION_SNAPSHOT: str(dim_snapshot),
                                     PROP_SOURCES: json.dumps([dim.source] if dim.source else [])})

        commit(target, plan)
    except FAILURES as e:  # report, then let the CLI map it to an exit code
        fail(load, e)
    report_files(load, [r.data_file for r in records])
    rows_read = sum(r["rows_read"] for r in results)
    written = sum(r.data_file.record_count for r in records)
    summary = stats.summary(stats.tree_reduce([r.moments for r in records]))
    return load.finish("SUCCEEDED", rows_read=rows_read, rows_written=written, rows_quarantined=0, quarantine={},
                       files_written=len(records), bytes_written=sum(r.data_file.file_size_in_bytes for r in records),
                       orphans=sum(r["orphans"] for r in results), full=full,
                       vp_mean=summary["vp_mean"], vp_std=summary["vp_std"])

