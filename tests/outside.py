"""Tools nobody here wrote, used the way another team would: DuckDB reading our Iceberg tables, and standard Iceberg
maintenance (pyiceberg's snapshot expiry, then a plain "delete every file no metadata reaches" sweep).

Nothing here imports the pipeline: these helpers judge it from outside.
"""
from __future__ import annotations

import glob
import os
from datetime import datetime, timedelta, timezone

import duckdb
import duckdb_ext


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """DuckDB with the iceberg and avro extensions loaded from their PyPI wheels (no network)."""
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    base = os.path.join(os.path.dirname(duckdb_ext.__spec__.submodule_search_locations[0]), "duckdb_ext", "extensions")
    for name in ("avro", "iceberg"):
        (path,) = glob.glob(os.path.join(base, "*", "*", f"{name}.duckdb_extension"))
        con.execute(f"LOAD '{path}'")
    return con


def duckdb_stats(metadata_location: str) -> dict:
    """rows, mean and population stddev of viewing_percentage as DuckDB's iceberg_scan computes them."""
    loc = metadata_location.removeprefix("file://")
    n, mean, std = duckdb_connection().execute(
        "SELECT count(*), avg(viewing_percentage), stddev_pop(viewing_percentage) FROM iceberg_scan(?)",
        [loc]).fetchone()
    return {"rows": n, "vp_mean": mean, "vp_std": std}


def duckdb_rows(metadata_location: str, columns: str = "*") -> list[tuple]:
    loc = metadata_location.removeprefix("file://")
    return sorted(duckdb_connection().execute(f"SELECT {columns} FROM iceberg_scan(?)", [loc]).fetchall())


def expire_all_but_current(table) -> int:
    """pyiceberg's own expiry of every snapshot but the current one (tagged snapshots are kept by it)."""
    older = datetime.now(timezone.utc) + timedelta(seconds=1)
    before = len(table.metadata.snapshots)
    table.maintenance.expire_snapshots().older_than(older).commit()
    return before - len(table.refresh().metadata.snapshots)


def delete_unreachable_files(table) -> list[str]:
    """Delete every file under the table's location that its current metadata does not reach: the current
    metadata file, the manifest lists of the snapshots it keeps, their manifests and live data files."""
    table = table.refresh()
    keep = {table.metadata_location}
    for snapshot in table.metadata.snapshots:
        keep.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            keep.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                keep.add(entry.data_file.file_path)
    keep = {k.removeprefix("file://") for k in keep}
    root = table.metadata.location.removeprefix("file://")
    deleted = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if path not in keep:
                os.remove(path)
                deleted.append(path)
    return deleted
