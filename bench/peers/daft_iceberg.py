"""Daft peer: read the gzip CSV, parse the date, `write_iceberg` into a pyiceberg SqlCatalog table with the same
partition spec as impressions: identity(ad_date) + bucket[64](campaign_id) (Daft computes Iceberg's Murmur3
bucket itself). Table properties as impressions sets them: zstd Parquet.

Run by bench/.venvs/daft/bin/python: argv = source, warehouse directory (created). Prints one JSON line.
"""
import json
import os
import sys

import daft
import pyiceberg
from daft import col
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType

CATALOG, TABLE, BUCKETS = "bench", "bench.fact_partitioned", 64


def main(src: str, warehouse: str) -> None:
    os.makedirs(warehouse, exist_ok=True)
    catalog = SqlCatalog(CATALOG, uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}")
    catalog.create_namespace_if_not_exists("bench")
    schema = Schema(
        NestedField(1, "ad_date", DateType(), required=False),
        NestedField(2, "impression_id", LongType(), required=False),
        NestedField(3, "campaign_id", StringType(), required=False),
        NestedField(4, "video_id", StringType(), required=False),
        NestedField(5, "viewing_percentage", DoubleType(), required=False),
    )
    spec = PartitionSpec(
        PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="ad_date"),
        PartitionField(source_id=3, field_id=1001, transform=BucketTransform(BUCKETS), name="campaign_id_bucket"),
    )
    table = catalog.create_table(TABLE, schema, partition_spec=spec,
                                 properties={"write.parquet.compression-codec": "zstd"})
    df = daft.read_csv(src, has_headers=False, infer_schema=False, schema={
        "ad_date": daft.DataType.string(), "impression_id": daft.DataType.int64(),
        "campaign_id": daft.DataType.string(), "video_id": daft.DataType.string(),
        "viewing_percentage": daft.DataType.float64()})
    df = df.with_column("ad_date", col("ad_date").to_date("%m/%d/%Y"))
    written = df.write_iceberg(table, mode="append").to_pydict()
    print(json.dumps({"engine": "daft", "version": daft.__version__, "pyiceberg": pyiceberg.__version__,
                      "data_files": len(written.get("file_name", written.get("path", [])))}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
