"""The load history as an Iceberg table (`impressions.loads` by default): one row per status change of a load.

An Iceberg table, so Athena, DuckDB or Spark query the history like any table. Rows are only ever appended.
"""
from __future__ import annotations

import pyarrow as pa
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from .. import interrupts
from .catalog import create_or_load
from .commit import Change, commit, without_auto_retry
from .write import write_unpartitioned

SCHEMA = Schema(
    NestedField(1, "run_id", StringType(), required=False),
    NestedField(2, "load_id", StringType(), required=False),
    NestedField(3, "stage", StringType(), required=False),
    NestedField(4, "table", StringType(), required=False),
    NestedField(5, "status", StringType(), required=False),
    NestedField(6, "time", TimestamptzType(), required=False),
    NestedField(7, "host", StringType(), required=False),
    NestedField(8, "pid", LongType(), required=False),
    NestedField(9, "line", StringType(), required=False),  # the status line, as printed (JSON)
)
ARROW = pa.schema([("run_id", pa.string()), ("load_id", pa.string()), ("stage", pa.string()),
                   ("table", pa.string()), ("status", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
                   ("host", pa.string()), ("pid", pa.int64()), ("line", pa.string())])


def open_events(catalog, ident: tuple[str, str], properties: dict):
    with interrupts.recording():  # the history of an interrupted load is written too
        return without_auto_retry(create_or_load(catalog, ident, SCHEMA, UNPARTITIONED_PARTITION_SPEC, properties))


def append(table, rows: list[dict]) -> None:
    """Append rows (dicts of the ARROW schema's fields) in one snapshot."""
    data = pa.Table.from_pylist(rows, schema=ARROW)
    files = write_unpartitioned(table, data)
    with interrupts.recording():  # the history records interrupted loads too
        commit(table, lambda t: Change(adds=files, snapshot_properties={"impressions.stage": "load-history"}))


def read(table) -> pa.Table:
    return table.scan().to_arrow() if table.current_snapshot() else ARROW.empty_table()
