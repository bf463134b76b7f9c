"""Verdicts from outside for the drills: pyiceberg's own SqlCatalog, DuckDB's iceberg_scan, the file system.

Nothing here imports the pipeline.
"""
from __future__ import annotations

import os

from outside import duckdb_connection

# Bookkeeping tables that every command writes by design (the load history): "nothing committed" is about the
# data tables, so they are left out of `state`.
HISTORY_TABLES = {"loads"}


def catalog(warehouse: str, uri: str | None = None, endpoint: str | None = None):
    """pyiceberg's SqlCatalog as any Iceberg client would open the warehouse (local, or S3 through `endpoint`)."""
    from pyiceberg.catalog.sql import SqlCatalog

    props = {}
    if str(warehouse).startswith("s3://"):
        props = {"s3.endpoint": endpoint or os.environ["AWS_ENDPOINT_URL"],
                 "s3.access-key-id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                 "s3.secret-access-key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                 "s3.region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        location = str(warehouse)
    else:
        location = "file://" + os.path.abspath(warehouse)
    uri = uri or f"sqlite:///{os.path.abspath(warehouse)}/catalog.db"
    return SqlCatalog("impressions", uri=uri, warehouse=location, **props)


def state(warehouse: str, **kw) -> dict:
    """{namespace.table: (number of snapshots, current snapshot id)} of every data table (no catalog: {})."""
    if not str(warehouse).startswith("s3://") and "uri" not in kw and \
            not os.path.exists(os.path.join(warehouse, "catalog.db")):
        return {}
    cat = catalog(warehouse, **kw)
    out = {}
    for ns in cat.list_namespaces():
        for ident in cat.list_tables(ns):
            if ident[-1] in HISTORY_TABLES:
                continue
            t = cat.load_table(ident)
            out[".".join(ident)] = (len(t.metadata.snapshots), t.metadata.current_snapshot_id)
    return out


def snapshots_of_load(warehouse: str, qualified: str, load_id: str, **kw) -> int:
    """How many snapshots of the table name `load_id` in their summary (`impressions.load-id`)."""
    try:
        t = catalog(warehouse, **kw).load_table(tuple(qualified.split(".")))
    except Exception:  # noqa: BLE001 - no such table: none
        return 0
    return sum(1 for s in t.metadata.snapshots
               if (s.summary.additional_properties if s.summary else {}).get("impressions.load-id") == load_id)


def table(warehouse: str, name: str, **kw):
    return catalog(warehouse, **kw).load_table(("impressions", name))


def duck(table, sql: str) -> list[tuple]:
    """`sql` with `{t}` standing for the table as DuckDB's iceberg_scan reads it."""
    loc = table.metadata_location.removeprefix("file://")
    return duckdb_connection().execute(sql.replace("{t}", "iceberg_scan(?)"), [loc]).fetchall()


def counts(table) -> tuple[int, int, int]:
    """(rows, distinct impression ids, sum of impression ids) as DuckDB reads the table."""
    if table.current_snapshot() is None:
        return (0, 0, 0)
    n, distinct, total = duck(table, "SELECT count(*), count(DISTINCT impression_id), "
                                     "coalesce(sum(impression_id), 0) FROM {t}")[0]
    return n, distinct, int(total)


def exact(table, first_id: int, n: int) -> None:
    """Every id first_id … first_id + n - 1 exactly once, nothing else."""
    want = (n, n, sum(range(first_id, first_id + n)))
    got = counts(table)
    assert got == want, f"(rows, distinct ids, sum of ids) {got}, expected {want}"


def names_by_campaign(table, column: str = "campaign_name") -> dict[tuple, int]:
    """{(campaign_id, attribute): rows} as DuckDB reads the table."""
    return {(c, v): n for c, v, n in duck(table, f"SELECT campaign_id, {column}, count(*) FROM {{t}} GROUP BY 1, 2")}


def reachable(table) -> set[str]:
    """Every file the table's current metadata reaches: itself and the metadata files it logs, the manifest list
    of each snapshot it keeps, their manifests and live data files, statistics files."""
    table = table.refresh()
    keep = {table.metadata_location} | {e.metadata_file for e in table.metadata.metadata_log}
    keep |= {s.statistics_path for s in table.metadata.statistics}
    for snapshot in table.metadata.snapshots:
        keep.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            keep.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                keep.add(entry.data_file.file_path)
    return {k.removeprefix("file://") for k in keep}


def unreachable_files(table) -> list[str]:
    """Files under a local table's location that its metadata does not reach (what an orphan sweep deletes)."""
    keep = reachable(table)
    root = table.metadata.location.removeprefix("file://")
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names
                  if os.path.join(d, n) not in keep)


def data_files_on_disk(table) -> set[str]:
    root = os.path.join(table.metadata.location.removeprefix("file://"), "data")
    return {os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.endswith(".parquet")}


def live_data_files(table) -> set[str]:
    table = table.refresh()
    if table.current_snapshot() is None:
        return set()
    return {t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()}
