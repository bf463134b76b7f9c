"""Iceberg schemas and partition specs of our tables, and Arrow → Iceberg schema conversion."""
from __future__ import annotations

import pyarrow as pa
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.name_mapping import MappedField, NameMapping
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import BinaryType, DateType, DoubleType, LongType, NestedField, StringType

from ..errors import UsageError


def fact_schema(extra_columns: list[tuple[str, object]] = ()) -> Schema:
    fields = [
        NestedField(1, "ad_date", DateType(), required=False),
        NestedField(2, "impression_id", LongType(), required=False),
        NestedField(3, "campaign_id", StringType(), required=False),
        NestedField(4, "video_id", StringType(), required=False),
        NestedField(5, "viewing_percentage", DoubleType(), required=False),
    ]
    for i, (name, typ) in enumerate(extra_columns):
        fields.append(NestedField(6 + i, name, typ, required=False))
    return Schema(*fields)


def fact_spec(buckets: int) -> PartitionSpec:
    return PartitionSpec(
        PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="ad_date"),
        PartitionField(source_id=3, field_id=1001, transform=BucketTransform(buckets), name="campaign_id_bucket"),
    )


def bucket_count(table: Table | TableMetadata) -> int:
    """N of the table's bucket[N](campaign_id) field (a Table, or the metadata a worker holds)."""
    for f in table.spec().fields:
        if isinstance(f.transform, BucketTransform):
            return f.transform.num_buckets
    location = table.metadata.location if isinstance(table, Table) else table.location
    raise UsageError(f"table at {location} is not bucketed on campaign_id")


QUARANTINE_ICEBERG = Schema(
    NestedField(1, "load_id", StringType(), required=False),
    NestedField(2, "source", StringType(), required=False),
    NestedField(3, "byte_offset", LongType(), required=False),
    NestedField(4, "reason", StringType(), required=False),
    NestedField(5, "line", BinaryType(), required=False),
)
QUARANTINE_SPEC = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="load_id"))


def iceberg_schema(rows: pa.Table) -> Schema:
    """The Iceberg schema of an Arrow table, field ids numbered from 1 in column order."""
    mapping = NameMapping([MappedField(field_id=i + 1, names=[n]) for i, n in enumerate(rows.column_names)])
    return pyarrow_to_schema(rows.schema, name_mapping=mapping)


def add_columns(table: Table, rows: pa.Table) -> Table:
    """Add the columns of `rows` the table lacks (Iceberg schema evolution: no data is rewritten)."""
    have = {f.name for f in table.schema().fields}
    missing = [c for c in rows.column_names if c not in have]
    if not missing:
        return table
    with table.update_schema() as u:
        u.union_by_name(iceberg_schema(rows.select(missing)))
    return table.refresh()


def add_fields(table: Table, like: Table) -> Table:
    """Add the fields of `like` that `table` lacks, with their types (in `like`'s order)."""
    have = {f.name for f in table.schema().fields}
    missing = [f for f in like.schema().fields if f.name not in have]
    if not missing:
        return table
    with table.update_schema() as u:
        for f in missing:
            u.add_column(f.name, f.field_type)
    return table.refresh()
