"""Commits: every command makes ONE snapshot per table (or none), re-planned against the new snapshot on a conflict.

A `Change` is what one command does to one table: data files added and deleted, table properties set and
removed (the lineage), snapshot properties, and optionally a tag on the new snapshot. `commit` applies it in one
pyiceberg transaction, which the catalog swaps in atomically (a compare-and-swap on the metadata location in the
SQL catalog, a versioned update in Glue). The plan is a function of the table, so when another writer commits
first the table is reloaded and the plan made again — never replayed.

pyiceberg's own retry (`commit.retry.num-retries`, default 4 in pyiceberg 0.12) would instead rebase the
snapshot onto the new head and replay the property updates unchanged, without our checks (for example "has a
concurrent load committed this source already?"). Every table we write therefore has it set to 0.

The snapshot itself is made by pyiceberg's own producers (0.12, private classes: only this module knows them),
subclassed where their cost grew with the table (`_Append`, `_Overwrite`: many added files in manifests of whole
bucket ranges; an overwrite's pass over the manifests done once).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import And, In, IsNull, Or, Reference
from pyiceberg.manifest import DataFileContent, ManifestEntry, ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import ManageSnapshots, _FastAppendFiles, _OverwriteFiles
from pyiceberg.transforms import BucketTransform
from pyiceberg.typedef import KeyDefaultDict


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
    properties = {k: str(v) for k, v in change.snapshot_properties.items()}
    with (_Overwrite if change.deletes else _Append).of(tx, properties) as op:
        for df in change.deletes:
            op.delete_data_file(df)
        for df in change.adds:
            op.append_data_file(df)
        snapshot_id = op.snapshot_id
    if change.tag:
        ManageSnapshots(tx).create_tag(snapshot_id, change.tag).commit()
    return tx.commit_transaction()


MANIFEST_FILES = 256  # a commit adding N data files writes N // this manifests of them (one below 2 x this)


class _GroupedAdds:
    """The added files of a commit in several manifests, each holding whole ranges of buckets, once there are at
    least twice MANIFEST_FILES of them (pyiceberg writes one manifest for all).

    A later overwrite rewrites every manifest holding a file it replaces, entry by entry: with a backfill's 3,840
    files in one manifest, an update of 3 campaigns (240 files) rewrote the 3,600 others. Grouped, it rewrites the
    few manifests holding those buckets. A daily load's few files stay in one manifest, so a table's manifests do
    not multiply with its loads."""

    def _manifests(self) -> list:
        added = self._added_data_files
        groups = _bucket_groups(added, self._transaction.table_metadata.spec())
        if len(groups) <= 1:
            return super()._manifests()
        self._added_data_files = []  # pyiceberg writes the rest (deleted and existing entries) as it does
        try:
            rest = super()._manifests()
        finally:
            self._added_data_files = added
        return [self._added_manifest(group) for group in groups] + rest

    def _added_manifest(self, files: list):
        with self.new_manifest_writer(spec=self._transaction.table_metadata.spec()) as writer:
            for data_file in files:
                writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                   sequence_number=None, file_sequence_number=None,
                                                   data_file=data_file))
        return writer.to_manifest_file()


def _bucket_groups(files: list, spec) -> list[list]:
    """`files` in len(files) // MANIFEST_FILES groups of whole bucket ranges (one group without a bucket field)."""
    position = next((i for i, f in enumerate(spec.fields) if isinstance(f.transform, BucketTransform)), None)
    n = len(files) // MANIFEST_FILES
    if position is None or n <= 1:
        return [files]
    buckets = spec.fields[position].transform.num_buckets
    n = min(n, buckets)
    groups: list[list] = [[] for _ in range(n)]
    for data_file in files:
        bucket = data_file.partition[position]
        groups[0 if bucket is None else int(bucket) * n // buckets].append(data_file)
    return [g for g in groups if g]


class _Append(_GroupedAdds, _FastAppendFiles):
    """pyiceberg's fast append (0.12), its added files grouped (`_GroupedAdds`)."""

    @classmethod
    def of(cls, tx, snapshot_properties: dict) -> "_Append":
        """What `tx.update_snapshot(...).fast_append()` makes, as this class."""
        return cls(operation=Operation.APPEND, transaction=tx, io=tx._table.io, branch=MAIN_BRANCH,
                   snapshot_properties=snapshot_properties)


class _Overwrite(_GroupedAdds, _OverwriteFiles):
    """pyiceberg's overwrite of named data files (0.12), its work on the parent's manifests done once and its
    added files grouped (`_GroupedAdds`).

    pyiceberg finds the deleted files' manifest entries in one pass over the parent's manifests and rewrites the
    manifests that lose some in a second, decoding every entry twice and hashing each kept entry by its `repr`;
    it prunes manifests with an Or of one term per partition of the deleted files. An update replacing 240 of a
    table's 3,840 files, all in one manifest, spent 1.3-1.4 s in that commit (0.8 s this way). Here the pruning
    predicate is one `In` per partition field (a superset: pruning only skips manifests, every entry is still
    matched by path), the one pass remembers what each touched manifest keeps, and the rewrite writes that."""

    @classmethod
    def of(cls, tx, snapshot_properties: dict) -> "_Overwrite":
        """What `tx.update_snapshot(...).overwrite()` makes, as this class."""
        has_parent = tx.table_metadata.snapshot_by_name(name=MAIN_BRANCH) is not None
        return cls(operation=Operation.OVERWRITE if has_parent else Operation.APPEND, transaction=tx,
                   io=tx._table.io, branch=MAIN_BRANCH, snapshot_properties=snapshot_properties)

    def _build_delete_files_partition_predicate(self) -> None:
        by_spec: dict = {}
        for data_file in self._deleted_data_files:
            by_spec.setdefault(data_file.spec_id, []).append(data_file.partition)
        for spec_id, partitions in by_spec.items():
            terms = []
            for pos, field in enumerate(self.spec(spec_id).fields):
                values = {p[pos] for p in partitions}
                known = values - {None}
                term = In(Reference(field.name), known) if known else None
                if None in values:
                    term = IsNull(Reference(field.name)) if term is None else Or(term, IsNull(Reference(field.name)))
                terms.append(term)
            if terms:
                self.partition_filters[spec_id] = Or(self.partition_filters[spec_id],
                                                     And(*terms) if len(terms) > 1 else terms[0])

    _kept: dict | None = None  # manifest path -> the entries it keeps, for the manifests that lose some

    def _deleted_entries(self) -> list[ManifestEntry]:
        self._kept = {}
        parent = (self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id)
                  if self._parent_snapshot_id is not None else None)
        deleted: list[ManifestEntry] = []
        if parent is not None:
            paths = {f.file_path for f in self._deleted_data_files}
            evaluators = KeyDefaultDict(self._build_manifest_evaluator)
            for manifest in parent.manifests(io=self._io):
                if not evaluators[manifest.partition_spec_id](manifest):
                    continue
                gone, kept = [], []
                for entry in manifest.fetch_manifest_entry(io=self._io, discard_deleted=True):
                    hit = entry.data_file.content == DataFileContent.DATA and entry.data_file.file_path in paths
                    (gone if hit else kept).append(entry)
                if gone:
                    self._kept[manifest.manifest_path] = kept
                    deleted += [_entry(e, ManifestEntryStatus.DELETED, self._snapshot_id) for e in gone]
        self._validate_required_deletes(deleted)
        return deleted

    def _existing_manifests(self) -> list:
        head = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
        if head is None:
            return []
        if head.snapshot_id != self._parent_snapshot_id or self._kept is None:
            return super()._existing_manifests()  # not the snapshot the deletes were found in: pyiceberg's way
        out = []
        for manifest in head.manifests(io=self._io):
            kept = self._kept.get(manifest.manifest_path)
            if kept is None:
                out.append(manifest)  # loses nothing: kept as it is
            elif kept:
                with self.new_manifest_writer(self.spec(manifest.partition_spec_id)) as writer:
                    for e in kept:
                        writer.add_entry(_entry(e, ManifestEntryStatus.EXISTING, e.snapshot_id))
                out.append(writer.to_manifest_file())
        return out


def _entry(entry: ManifestEntry, status: ManifestEntryStatus, snapshot_id: int) -> ManifestEntry:
    return ManifestEntry.from_args(status=status, snapshot_id=snapshot_id, sequence_number=entry.sequence_number,
                                   file_sequence_number=entry.file_sequence_number, data_file=entry.data_file)


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
