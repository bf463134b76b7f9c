"""dask.dataframe peer: `dd.read_csv` of the gzip file -> `to_parquet(partition_on=["ad_date", "bucket"])`.

Run by bench/.venvs/dask/bin/python: argv = source, output directory. What a Dask user writes first: the default
(threaded) scheduler, pyarrow strings, the bucket = Iceberg's bucket[64](campaign_id) computed with mmh3 once per
distinct campaign (and the date once per distinct value) of each partition. Dask cannot split a gzip file: `read_csv(compression="gzip")` makes ONE
partition of the whole file (blocksize=None), so the work is one pandas frame on one core, and memory grows with
the file. Prints one JSON line.
"""
import json
import sys

import dask
import dask.dataframe as dd
import mmh3
import pandas as pd

BUCKETS = 64
NAMES = ["ad_date", "impression_id", "campaign_id", "video_id", "viewing_percentage"]


def with_bucket(df: pd.DataFrame) -> pd.DataFrame:
    codes, distinct = pd.factorize(df["campaign_id"])
    table = [(mmh3.hash(str(v).encode(), signed=True) & 0x7FFFFFFF) % BUCKETS for v in distinct]
    buckets = pd.Series(table, dtype="int32").to_numpy()[codes]
    # the date is parsed once per distinct value too (the partition value is a string in the directory name anyway)
    dcodes, dates = pd.factorize(df["ad_date"])
    iso = pd.to_datetime(pd.Series(dates, dtype="string"), format="%m/%d/%Y").dt.strftime("%Y-%m-%d")
    return df.assign(ad_date=pd.Series(iso.to_numpy()[dcodes] if len(df) else [], index=df.index, dtype="string"),
                     bucket=buckets)


def main(src: str, out: str) -> None:
    df = dd.read_csv(src, header=None, names=NAMES, compression="gzip", blocksize=None,
                     dtype={"ad_date": "string", "impression_id": "int64", "campaign_id": "string",
                            "video_id": "string", "viewing_percentage": "float64"})
    meta = with_bucket(df._meta)
    df = df.map_partitions(with_bucket, meta=meta)
    df.to_parquet(out, partition_on=["ad_date", "bucket"], write_index=False, compression="zstd")
    print(json.dumps({"engine": "dask", "version": dask.__version__, "pandas": pd.__version__,
                      "partitions": df.npartitions, "scheduler": "threads (default)"}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
