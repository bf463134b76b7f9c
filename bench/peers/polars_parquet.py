"""Polars peer: lazy CSV scan of the gzip file -> hive-partitioned Parquet by (ad_date, bucket).

Run by bench/.venvs/polars/bin/python: argv = source, output directory. The bucket is Iceberg's
bucket[64](campaign_id) (Murmur3 x86_32 of the UTF-8 bytes, & INT_MAX, mod 64), computed with mmh3 once per
distinct campaign of each batch (Polars' own hash is not Iceberg's). Prints one JSON line.
"""
import json
import sys

import mmh3
import polars as pl

BUCKETS = 64


def iceberg_bucket(s: pl.Series) -> pl.Series:
    distinct = s.unique().drop_nulls()
    buckets = [(mmh3.hash(v.encode(), signed=True) & 0x7FFFFFFF) % BUCKETS for v in distinct.to_list()]
    return s.replace_strict(distinct, pl.Series(buckets, dtype=pl.Int32), return_dtype=pl.Int32)


def main(src: str, out: str) -> None:
    lf = pl.scan_csv(src, has_header=False, schema={
        "ad_date": pl.String, "impression_id": pl.Int64, "campaign_id": pl.String, "video_id": pl.String,
        "viewing_percentage": pl.Float64})
    lf = lf.with_columns(
        pl.col("ad_date").str.strptime(pl.Date, "%m/%d/%Y"),
        pl.col("campaign_id").map_batches(iceberg_bucket, return_dtype=pl.Int32, is_elementwise=True).alias("bucket"),
    )
    lf.sink_parquet(pl.PartitionBy(out, key=["ad_date", "bucket"], include_key=True), mkdir=True)
    print(json.dumps({"engine": "polars", "version": pl.__version__, "threads": pl.thread_pool_size()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
