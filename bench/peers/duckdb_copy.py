"""DuckDB peer: `COPY (SELECT … FROM read_csv(gzip file)) TO DIR (FORMAT PARQUET, PARTITION_BY (ad_date, bucket))`.

Run by bench/.venvs/duckdb/bin/python: argv = source, output directory. Default threads (all cores). The bucket
is DuckDB's own `hash(campaign_id) % 64`, not Iceberg's Murmur3 (DuckDB has no Murmur3; a Python UDF would slow
it down for nothing): the same number of buckets, a different assignment of campaigns to them. zstd like every
other peer. Prints one JSON line.
"""
import json
import sys

import duckdb

COLUMNS = ("{'ad_date': 'VARCHAR', 'impression_id': 'BIGINT', 'campaign_id': 'VARCHAR', 'video_id': 'VARCHAR', "
           "'viewing_percentage': 'DOUBLE'}")


def main(src: str, out: str) -> None:
    con = duckdb.connect()
    copied = con.execute(f"""
COPY (SELECT strptime(ad_date, '%m/%d/%Y')::DATE AS ad_date, impression_id, campaign_id, video_id,
             viewing_percentage, hash(campaign_id) % 64 AS bucket
      FROM read_csv('{src}', header = false, columns = {COLUMNS}))
TO '{out}' (FORMAT PARQUET, COMPRESSION zstd, PARTITION_BY (ad_date, bucket))""").fetchall()
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(json.dumps({"engine": "duckdb", "version": duckdb.__version__, "threads": threads,
                      "rows_copied": copied[0][0] if copied else None}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
