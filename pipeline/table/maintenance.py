"""Table maintenance with pyiceberg's own APIs: snapshot expiry, and finding the files no metadata reaches.

Lineage and statistics live in the table's properties (lineage.py) and stored dimension versions are tagged, so
neither expiry nor deleting unreachable files can lose them.
"""
from __future__ import annotations

from datetime import datetime, timezone

from pyiceberg.table import Table

from ..storage import filesystem


def expire(table: Table, older_than: datetime, retain_last: int) -> list[int]:
    """Expire the snapshots older than `older_than`, except the newest `retain_last` of the current branch and
    every branch or tag head (pyiceberg protects those itself). Returns the expired ids."""
    keep, snapshot = set(), table.current_snapshot()
    while snapshot is not None and len(keep) < retain_last:
        keep.add(snapshot.snapshot_id)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    cutoff = older_than.timestamp() * 1000
    ids = [s.snapshot_id for s in table.metadata.snapshots
           if s.timestamp_ms < cutoff and s.snapshot_id not in keep | protected]
    if ids:
        table.maintenance.expire_snapshots().by_ids(ids).commit()
    return ids


def reachable(table: Table) -> set[str]:
    """Every file the table's current metadata reaches: metadata files (current and logged), each kept snapshot's
    manifest list, manifests and live data/delete files, statistics files."""
    def norm(path: str) -> str:
        return filesystem(path)[1] if "://" in path and not path.startswith("file://") else \
            path.removeprefix("file://")

    out = {table.metadata_location} | {entry.metadata_file for entry in table.metadata.metadata_log}
    out |= {s.statistics_path for s in table.metadata.statistics}
    out |= {s.statistics_path for s in table.metadata.partition_statistics}
    for snapshot in table.metadata.snapshots:
        out.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            out.add(manifest.manifest_path)
            # a DELETED entry only says the file was live in an older snapshot: it reaches nothing by itself
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                out.add(entry.data_file.file_path)
    return {norm(p) for p in out}


def unreachable(table: Table, older_than: datetime) -> list[dict]:
    """Files under the table's location that no metadata reaches and that are older than `older_than`
    (newer ones may belong to a load that is about to commit)."""
    location = table.metadata.location
    fs, root = filesystem(location)
    keep = reachable(table)
    cutoff = older_than.timestamp()
    found = []
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory" or path in keep:
            continue
        modified = _modified(info)
        if modified is not None and modified >= cutoff:
            continue
        found.append({"path": path if "://" not in location or location.startswith("file://")
                      else f"{location.split('://', 1)[0]}://{path}",
                      "bytes": int(info.get("size") or 0), "modified": modified})
    return sorted(found, key=lambda f: f["path"])


def delete(paths: list[str]) -> None:
    if paths:
        fs, _ = filesystem(paths[0])
        fs.rm([filesystem(p)[1] for p in paths])


def _modified(info: dict) -> float | None:
    """When a file last changed; for a local file with several names, when it last got one: a hard link
    (update.py links the files it keeps) keeps its source's old mtime but sets the inode's change time, which
    fsspec gives as `created`."""
    if int(info.get("nlink") or 1) > 1 and "mtime" in info and "created" in info:
        return max(float(info["mtime"]), float(info["created"]))
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return float(value) if value is not None else None
