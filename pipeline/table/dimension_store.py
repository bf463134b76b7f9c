"""The stored campaign dimension: one Iceberg table, one snapshot per distinct version.

A version is stored once per content: its snapshot is tagged `dimension-<fingerprint>`, so storing the same rows
again (a re-plan, a rerun, another table joined with the same file) finds the tag and commits nothing, and
snapshot expiry — ours or another engine's — keeps every version a fact table still refers to.
"""
from __future__ import annotations

import json

import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC

from .catalog import TABLE_PROPERTIES, ensure_namespace
from .commit import Change, commit, without_auto_retry
from .schema import add_columns, iceberg_schema
from .write import write_unpartitioned

KEYS = "impressions.keys"


def tag(fingerprint: str) -> str:
    return f"dimension-{fingerprint}"


def store(catalog, ident: tuple[str, str], rows: pa.Table, keys: tuple, fingerprint: str,
          snapshot_properties: dict) -> int:
    """The snapshot id of this version of the dimension, storing it first if it is new."""
    ensure_namespace(catalog, ident[0])
    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        try:
            table = catalog.create_table(ident, schema=iceberg_schema(rows), partition_spec=UNPARTITIONED_PARTITION_SPEC,
                                         properties={**TABLE_PROPERTIES, KEYS: json.dumps(list(keys))})
        except TableAlreadyExistsError:  # created by a concurrent run
            table = catalog.load_table(ident)
    name = tag(fingerprint)
    if name in table.metadata.refs:
        return table.metadata.refs[name].snapshot_id
    table = add_columns(without_auto_retry(table), rows.select([c for c in rows.column_names
                                                                if c not in {f.name for f in table.schema().fields}]))
    have = [f.name for f in table.schema().fields]
    for c in have:
        if c not in rows.column_names:
            rows = rows.append_column(c, pa.nulls(rows.num_rows, pa.string()))
    rows = rows.select(have)
    new = write_unpartitioned(table, rows) if rows.num_rows else []

    def plan(t):
        if name in t.metadata.refs:  # stored by a concurrent run meanwhile
            return None
        old = [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
        return Change(adds=new, deletes=old, snapshot_properties=snapshot_properties, tag=name)

    table = commit(table, plan) or table.refresh()
    return table.metadata.refs[name].snapshot_id


def load_version(catalog, ident: tuple[str, str], snapshot_id: int | None = None) -> tuple[pa.Table, tuple] | None:
    """(rows, keys) of a stored version (the current one by default); None if there is none."""
    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        return None
    if table.current_snapshot() is None or (snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None):
        return None
    keys = tuple(json.loads(table.properties.get(KEYS, '["campaign_id"]')))
    return table.scan(snapshot_id=snapshot_id).to_arrow(), keys
