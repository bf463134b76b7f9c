"""Iceberg tables through pyiceberg: the catalog, table names, schemas, and the one adapter around the
private write API (pin pyiceberg==0.12.*; if it breaks, only this module changes).

Workers write data files in parallel with `write_data_files`; the driver commits them in one snapshot.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (CommitFailedException, NamespaceAlreadyExistsError, NoSuchTableError,
                                 TableAlreadyExistsError, ValidationException)
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import (_get_parquet_writer_kwargs, compute_statistics_plan,
                                  data_file_statistics_from_parquet_metadata, parquet_path_to_id_mapping,
                                  schema_to_pyarrow)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table.locations import load_location_provider
from pyiceberg.typedef import Record
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import BinaryType, DateType, DoubleType, LongType, NestedField, StringType

from .errors import UsageError
from .sources import is_remote

CATALOG_NAME = "impressions"
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "1",  # fast; the files are already small per partition
    "write.parquet.row-group-limit": "1048576",
    "commit.retry.num-retries": "0",  # we retry ourselves, re-planning against the new snapshot
}


# ---------------------------------------------------------------- names and catalog

def table_name(name: str, namespace: str = "impressions") -> tuple[str, str]:
    """`FACT_PARTITIONED`, `ns.NAME` or `tables/FACT_PARTITIONED` → ("impressions", "fact_partitioned")."""
    name = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if "." in name:
        namespace, name = name.rsplit(".", 1)
    if not name or not name.replace("_", "").isalnum() or not namespace.replace("_", "").isalnum():
        raise UsageError(f"invalid table name {name!r}: use letters, digits and underscores (NAME or ns.NAME)")
    return namespace.lower(), name


def qualified(ident: tuple[str, str]) -> str:
    return ".".join(ident)


def catalog_properties(warehouse: str) -> dict:
    props = {"warehouse": warehouse}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        props["s3.endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        props["s3.region"] = region
        props["glue.region"] = region
    return props


def open_catalog(warehouse: str, catalog: str | None) -> Catalog:
    """SQL catalog (sqlite inside a local warehouse by default) or AWS Glue."""
    props = catalog_properties(warehouse)
    if catalog is None:
        if is_remote(warehouse):
            raise UsageError("an s3:// warehouse needs --catalog (a SQLAlchemy URI or 'glue')")
        os.makedirs(warehouse, exist_ok=True)
        catalog = f"sqlite:///{os.path.abspath(warehouse)}/catalog.db"
        props["warehouse"] = "file://" + os.path.abspath(warehouse)
    elif not is_remote(warehouse):
        os.makedirs(warehouse, exist_ok=True)
        props["warehouse"] = "file://" + os.path.abspath(warehouse)
    if catalog == "glue":
        from pyiceberg.catalog.glue import GlueCatalog

        endpoint = os.environ.get("AWS_ENDPOINT_URL_GLUE") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            props["glue.endpoint"] = endpoint
        return GlueCatalog(CATALOG_NAME, **props)
    if "://" not in catalog:
        raise UsageError(f"--catalog must be a SQLAlchemy URI (sqlite:///..., postgresql://...) or 'glue', got {catalog!r}")
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(CATALOG_NAME, uri=catalog, **props)


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def load_table(catalog: Catalog, ident: tuple[str, str]) -> Table:
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        raise UsageError(f"table {qualified(ident)} does not exist") from None


def table_properties(settings) -> dict:
    """Properties of a new table: ours, plus the Parquet options from `impressions.write.*`."""
    return {**TABLE_PROPERTIES, "write.parquet.compression-codec": settings.compression,
            "write.parquet.row-group-limit": str(settings.row_group_rows)}


def create_or_load(catalog: Catalog, ident: tuple[str, str], schema: Schema, spec: PartitionSpec,
                   properties: dict | None = None) -> Table:
    """Load the table, or create it (a table keeps the properties it was created with)."""
    ensure_namespace(catalog, ident[0])
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        pass
    try:
        return catalog.create_table(ident, schema=schema, partition_spec=spec,
                                    properties=properties or TABLE_PROPERTIES)
    except TableAlreadyExistsError:  # created concurrently
        return catalog.load_table(ident)


# ---------------------------------------------------------------- schemas

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


# ---------------------------------------------------------------- parallel writes

@dataclass(frozen=True)
class WriteTarget:
    """What a worker needs to write data files of a table: plain, picklable data."""

    metadata: TableMetadata
    io_properties: dict

    @classmethod
    def of(cls, table: Table) -> "WriteTarget":
        return cls(table.metadata, dict(table.io.properties))

    def io(self):
        return load_file_io(self.io_properties, self.metadata.location)


def partition_key(target: WriteTarget, values: tuple) -> PartitionKey | None:
    """Partition key from already-transformed values (e.g. (date, bucket)), in spec order."""
    spec = target.metadata.spec()
    if spec.is_unpartitioned():
        return None
    return PartitionKey(
        field_values=[PartitionFieldValue(field=f, value=v) for f, v in zip(spec.fields, values)],
        partition_spec=spec,
        schema=target.metadata.schema(),
    )


def write_data_files(target: WriteTarget, groups: list[tuple[tuple, pa.Table]]) -> list:
    """Write one Parquet data file per (partition values, rows) group, in parallel threads; returns DataFiles.

    What pyiceberg's own writer does (field ids, Iceberg column statistics, the table's location provider and
    Parquet properties), minus its per-row re-derivation of the partition, and with dictionary encoding only
    for string and date columns: dictionaries of unique ids and floats cost time and save nothing.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    metadata = target.metadata
    schema = metadata.schema()
    arrow_schema = _plain_types(schema_to_pyarrow(schema, include_field_ids=True))
    options = _get_parquet_writer_kwargs(metadata.properties)
    options["use_dictionary"] = [f.name for f in arrow_schema
                                 if pa.types.is_string(f.type) or pa.types.is_date(f.type)]
    row_group = int(metadata.properties.get("write.parquet.row-group-limit", 1048576))
    locations = load_location_provider(table_location=metadata.location, table_properties=metadata.properties)
    plan = compute_statistics_plan(schema, metadata.properties)
    mapping = parquet_path_to_id_mapping(schema)
    io = target.io()
    write_uuid = uuid.uuid4()

    def write_one(item) -> DataFile:
        i, (values, rows) = item
        key = partition_key(target, values)
        path = locations.new_data_location(data_file_name=f"{i:05d}-0-{write_uuid}.parquet", partition_key=key)
        table = _conform(rows, arrow_schema)
        out = io.new_output(path)
        with out.create(overwrite=True) as stream:
            # store_schema=False: no Arrow schema in the file, so dictionary-encoded string columns (written
            # as they are, without decoding and re-encoding) read back as plain strings in every engine
            writer = pq.ParquetWriter(stream, schema=table.schema, store_schema=False, **options)
            writer.write_table(table, row_group_size=row_group)
            writer.close()
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata, stats_columns=plan, parquet_column_mapping=mapping)
        return DataFile.from_args(
            content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET,
            partition=key.partition if key else Record(), file_size_in_bytes=len(out), sort_order_id=None,
            spec_id=metadata.default_spec_id, equality_ids=None, key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    if len(groups) == 1:
        return [write_one((0, groups[0]))]
    with ThreadPoolExecutor(min(8, len(groups))) as pool:
        return list(pool.map(write_one, enumerate(groups)))


def _plain_types(schema: pa.Schema) -> pa.Schema:
    """large_string/large_binary → string/binary: the same Parquet types, no 64-bit offset copies."""
    swap = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    return pa.schema([f.with_type(swap.get(f.type, f.type)) for f in schema], metadata=schema.metadata)


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table's columns in the table's order and types (dictionary-encoded strings stay encoded: Parquet
    stores them as strings); columns the rows lack are null."""
    columns, fields = [], []
    for f in schema:
        if f.name not in rows.column_names:
            column = pa.nulls(rows.num_rows, f.type)
        else:
            column = rows[f.name]
            if pa.types.is_dictionary(column.type) and column.type.value_type == f.type:
                f = f.with_type(column.type)
            elif column.type != f.type:
                column = column.cast(f.type)
        columns.append(column)
        fields.append(f)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


def to_date(days: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + int(days))


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
    import time

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
