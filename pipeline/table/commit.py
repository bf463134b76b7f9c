"""Commits: every command makes ONE snapshot per table (or none), re-planned against the new snapshot on a conflict.

A `Change` is what one command does to one table: data files added and deleted, table properties set and
removed (the lineage), snapshot properties, and optionally a tag on the new snapshot. `commit` applies it in one
pyiceberg transaction, which the catalog swaps in atomically (a compare-and-swap on the metadata location in the
SQL catalog, a versioned update in Glue). The plan is a function of the table, so when another writer commits
first the table is reloaded and the plan made again — never replayed.

pyiceberg's own retry (`commit.retry.num-retries`, default 4 in pyiceberg 0.12) would instead rebase the
snapshot onto the new head and replay the property updates unchanged, without our checks (for example "has a
concurrent load committed this source already?"). Every table we write therefore has it set to 0.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.table import Table
from pyiceberg.table.update.snapshot import ManageSnapshots


ATTEMPTS = 8
NO_AUTO_RETRY = {"commit.retry.num-retries": "0"}

# pyiceberg's overwrite validation may notice a concurrent commit before the catalog does
CONFLICTS = (CommitFailedException, ValidationException)


class ConcurrentCommit(Exception):
    """Another writer kept committing first; nothing was committed."""


@dataclass
class Change:
    """What one command does to one table, in one snapshot."""

    adds: list = field(default_factory=list)  # pyiceberg DataFiles
    deletes: list = field(default_factory=list)
    set_properties: dict = field(default_factory=dict)
    remove_properties: list = field(default_factory=list)
    snapshot_properties: dict = field(default_factory=dict)
    tag: str | None = None


def apply(table: Table, change: Change) -> Table:
    """One attempt: the properties, the snapshot and the tag in ONE transaction. Raises one of CONFLICTS."""
    tx = table.transaction()
    removed = [k for k in change.remove_properties if k in table.properties and k not in change.set_properties]
    if removed:
        tx.remove_properties(*removed)
    if change.set_properties:
        tx.set_properties(change.set_properties)
    producer = tx.update_snapshot(snapshot_properties={k: str(v) for k, v in change.snapshot_properties.items()})
    with (producer.overwrite() if change.deletes else producer.fast_append()) as op:
        for df in change.deletes:
            op.delete_data_file(df)
        for df in change.adds:
            op.append_data_file(df)
        snapshot_id = op.snapshot_id
    if change.tag:
        ManageSnapshots(tx).create_tag(snapshot_id, change.tag).commit()
    return tx.commit_transaction()


def commit(table: Table, plan: Callable[[Table], Change | None], attempts: int = ATTEMPTS,
           on_conflict: Callable[[Exception, int], None] | None = None) -> Table | None:
    """Plan against the current table and commit; on a conflict reload and plan again.

    `plan` returns the Change, None when there is nothing left to do (then nothing is committed), or raises to
    give up (for example when a concurrent writer already did the same work). An interrupted command commits
    nothing: the catalog checks before every commit (catalog.py).
    """
    for attempt in range(attempts):
        change = plan(table)
        if change is None:
            return None
        try:
            committed = apply(table, change)
        except CONFLICTS as e:
            if on_conflict:
                on_conflict(e, attempt)
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
            table = table.refresh()
            continue
        tag_total_rows(committed)
        return committed
    raise ConcurrentCommit(f"could not commit to {'.'.join(table.name())} after {attempts} attempts: "
                           "other writers kept committing first; nothing was committed")


def without_auto_retry(table: Table) -> Table:
    """Switch off pyiceberg's replaying retry on a table another tool created (a metadata-only commit, once)."""
    if table.properties.get("commit.retry.num-retries") == "0":
        return table
    tx = table.transaction()
    tx.set_properties(NO_AUTO_RETRY)
    try:
        return tx.commit_transaction()
    except CONFLICTS:
        return table.refresh()


def tag_total_rows(table: Table) -> None:
    """In an s3:// warehouse the bucket's tags carry each table's total rows (`impressions:<table>:rows`), set
    after each commit. A monitoring aid: a failure (or S3's 50-tag limit) is a warning, never a failed commit."""
    location = table.metadata.location
    if not location.startswith(("s3://", "s3a://")):
        return
    from ..report.loads import say
    from ..storage import set_bucket_tags

    key = f"impressions:{'.'.join(table.name())}:rows"
    try:
        snapshot = table.refresh().current_snapshot()  # a later commit's total, if one came after ours
        total = (snapshot.summary.additional_properties or {}).get("total-records", "0") if snapshot else "0"
        if not set_bucket_tags(location, {key: total}):
            say(f"warning: the bucket of {location} has 50 tags already; {key} not set")
    except Exception as e:  # noqa: BLE001 - tags are a monitoring aid
        say(f"warning: could not tag the bucket of {location} ({type(e).__name__}: {e})")
