"""Commits: one snapshot per table and command, re-planned against the new snapshot on a conflict.

Per-file statistics (count, mean, M2, min, max of viewing_percentage and the source of each file) go to a small
JSON sidecar under the table's metadata folder, named by the snapshot property `impressions.stats-file`, so
`stats` never has to open the data files it wrote.
"""
from __future__ import annotations

import json
import time
import uuid

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from ..errors import LoadError
from ..report.loads import Load, say


def commit_snapshot(table: Table, properties: dict, deletes: list, adds: list) -> Table:
    """One attempt at ONE snapshot that deletes and adds data files (an append when nothing is deleted).

    Raises one of CONFLICTS when another writer committed first: the caller reloads and plans again.
    """
    tx = table.transaction()
    producer = tx.update_snapshot(snapshot_properties=properties)
    with (producer.overwrite() if deletes else producer.fast_append()) as op:
        for df in deletes:
            op.delete_data_file(df)
        for df in adds:
            op.append_data_file(df)
    return tx.commit_transaction()


# pyiceberg's overwrite validation may notice a concurrent commit before the catalog does
CONFLICTS = (CommitFailedException, ValidationException)


def replace_contents(table: Table, rows: pa.Table, properties: dict, attempts: int = 5) -> Table:
    """Replace a small table's whole contents in ONE overwrite snapshot (pyiceberg's overwrite makes two).

    The new files are written once; on a concurrent commit the table is reloaded and the files to delete
    are planned again from the new snapshot.
    """
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    new = list(_dataframe_to_data_files(table.metadata, rows, table.io)) if rows.num_rows else []
    for attempt in range(attempts):
        old = [task.file for task in table.scan().plan_files()] if table.current_snapshot() else []
        try:
            return commit_snapshot(table, properties, old, new)
        except CONFLICTS:
            time.sleep(0.1 * (attempt + 1))
            table = table.refresh()
    raise CommitFailedException(f"could not replace the contents of {'.'.join(table.name())}: concurrent writers")


PROP_LOAD = "impressions.load-id"
PROP_STAGE = "impressions.stage"
PROP_SOURCES = "impressions.sources"
PROP_STATS = "impressions.stats-file"
PROP_DIMENSION = "impressions.dimension-snapshot-id"
ATTEMPTS = 5


def history(table):
    """Snapshots of the current branch, newest first."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None


def props_of(snapshot) -> dict:
    return dict(snapshot.summary.additional_properties) if snapshot.summary else {}


def latest_id(table, key: str) -> int | None:
    """The newest snapshot property `key` in the table's history, as an int (a snapshot id), or None."""
    for snapshot in history(table):
        value = props_of(snapshot).get(key)
        if value:
            return int(value)
    return None


def write_stats_file(table, load_id: str, files: list[dict]) -> str:
    path = f"{table.metadata.location.rstrip('/')}/metadata/impressions-stats/{load_id}-{uuid.uuid4().hex[:8]}.json"
    out = table.io.new_output(path)
    with out.create(overwrite=True) as f:
        f.write(json.dumps({"load_id": load_id, "files": files}).encode())
    return path


def load_file_stats(table) -> dict:
    """path -> stored statistics, for every file written by our loads in the current history."""
    out = {}
    for snapshot in history(table):
        path = props_of(snapshot).get(PROP_STATS)
        if not path:
            continue
        try:
            with table.io.new_input(path).open() as f:
                for rec in json.loads(f.read())["files"]:
                    out.setdefault(rec["path"], rec)
        except (OSError, ValueError, KeyError):
            say(f"warning: statistics file {path} unreadable; its files will be read instead")
    return out


def committed_sources(table) -> dict:
    """fingerprint -> {path, load_id} for every source committed in the table's current history."""
    out = {}
    for snapshot in history(table):
        props = props_of(snapshot)
        try:
            for s in json.loads(props.get(PROP_SOURCES, "[]")):
                out.setdefault(s["fingerprint"], {"path": s["path"], "load_id": props.get(PROP_LOAD)})
        except (ValueError, KeyError, TypeError):
            pass
    return out


def commit_files(table, load: Load, stage: str, adds: list, plan_deletes, properties: dict | None = None):
    """Commit `adds` (and the deletes `plan_deletes(table)` finds on the fresh table) in ONE snapshot.

    On a conflict the table is reloaded and the deletes are planned again, never replayed.
    """
    props = {PROP_LOAD: load.load_id, PROP_STAGE: stage, **(properties or {})}
    for attempt in range(ATTEMPTS):
        deletes = plan_deletes(table) if plan_deletes else []
        if deletes is None:  # the plan found nothing left to do
            return table
        try:
            return commit_snapshot(table, props, deletes, adds)
        except CONFLICTS as e:  # another writer committed first: reload, plan the deletes again
            say(f"commit conflict on {table.name()} ({e}); re-planning (attempt {attempt + 2}/{ATTEMPTS})")
            time.sleep(0.2 * (attempt + 1))
            table = table.refresh()
    raise LoadError(f"could not commit to {'.'.join(table.name())} after {ATTEMPTS} attempts (concurrent writers)")


def commit_partition(table, qtable, files, qfiles, sources, load: Load, replace: bool) -> None:
    """Quarantine first (idempotent per load id), then the fact table in one snapshot."""
    qtable = qtable.refresh()
    stale_q = lambda t: [task.file for task in t.scan(row_filter=EqualTo("load_id", load.load_id)).plan_files()]
    if qfiles or stale_q(qtable):
        commit_files(qtable, load, "quarantine", qfiles, stale_q)

    stats_path = write_stats_file(table, load.load_id, [f.summary() for f in files])
    paths = {s.url for s in sources}
    fingerprints = {s.fingerprint for s in sources}

    def plan(t):
        done = committed_sources(t)
        if not replace and fingerprints & set(done):
            raise LoadError("a concurrent load committed the same source first; nothing committed")
        if not replace:
            return []
        owned = load_file_stats(t)
        return [task.file for task in t.scan().plan_files()
                if owned.get(task.file.file_path, {}).get("source") in paths]

    commit_files(table, load, "partition", [f.data_file for f in files], plan, {
        PROP_SOURCES: json.dumps([s.to_dict() for s in sources]),
        PROP_STATS: stats_path,
    })
