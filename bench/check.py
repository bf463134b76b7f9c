"""What a peer wrote, read back independently (untimed; run by the project's venv: pyarrow, pyiceberg).

  check.py parquet DIR                                   every *.parquet under DIR (hive directories)
  check.py iceberg WAREHOUSE CATALOG_NAME TABLE          the data files of the table's current snapshot
  check.py reference FILE.csv.gz                         the input file itself (streamed, any size)

Prints one JSON line: rows, files, bytes, partitions (distinct directories / partition tuples), the largest and
mean files per partition, and the viewing_percentage moments (n, mean, M2) merged with Chan's formula from
per-file numpy sums, so it does not share code with any engine's statistics.
"""
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

VP = "viewing_percentage"


def moments(values: np.ndarray) -> tuple[int, float, float]:
    n = int(values.size)
    if not n:
        return 0, 0.0, 0.0
    mean = float(values.mean())
    return n, mean, float(((values - mean) ** 2).sum())


def merge(a, b):
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    if not n:
        return a
    delta = mb - ma
    return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def summarise(files: list[str], partition_of) -> dict:
    total, rows, size = (0, 0.0, 0.0), 0, 0
    per_partition = Counter()
    for path in files:
        local = path.removeprefix("file://")
        pf = pq.ParquetFile(local)
        rows += pf.metadata.num_rows
        size += os.path.getsize(local)
        for batch in pf.iter_batches(columns=[VP], batch_size=1 << 22):
            total = merge(total, moments(batch.column(0).to_numpy(zero_copy_only=False)))
        per_partition[partition_of(path)] += 1
    n, mean, m2 = total
    return {"rows": rows, "files": len(files), "bytes": size, "partitions": len(per_partition),
            "max_files_per_partition": max(per_partition.values(), default=0),
            "files_per_partition": len(files) / len(per_partition) if per_partition else 0.0,
            "n": n, "mean": mean, "m2": m2, "std": (m2 / n) ** 0.5 if n else None}


def parquet_dir(directory: str) -> dict:
    files = sorted(str(p) for p in Path(directory).rglob("*.parquet"))
    return summarise(files, lambda p: str(Path(p).parent))


def iceberg(warehouse: str, catalog_name: str, table: str) -> dict:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(catalog_name, uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}")
    t = catalog.load_table(table)
    tasks = list(t.scan().plan_files()) if t.current_snapshot() else []
    partition = {task.file.file_path: tuple(task.file.partition) for task in tasks}
    out = summarise([task.file.file_path for task in tasks], partition.__getitem__)
    out["snapshot_summary"] = dict(t.current_snapshot().summary.additional_properties) if t.current_snapshot() else {}
    return out


def reference(path: str) -> dict:
    """The input's rows and moments, parsed by pyarrow's streaming CSV reader from an ISA-L stream."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from isal import igzip

    total, rows = (0, 0.0, 0.0), 0
    names = ["ad_date", "impression_id", "campaign_id", "video_id", VP]
    with igzip.open(path, "rb") as f:
        reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(column_names=names, block_size=64 << 20),
                                convert_options=pacsv.ConvertOptions(column_types={VP: pa.float64()},
                                                                     include_columns=[VP]))
        for batch in reader:
            rows += batch.num_rows
            total = merge(total, moments(batch.column(0).to_numpy(zero_copy_only=False)))
        csv_bytes = f.tell()
    n, mean, m2 = total
    return {"rows": rows, "csv_bytes": csv_bytes, "n": n, "mean": mean, "m2": m2, "std": (m2 / n) ** 0.5 if n else None}


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    print(json.dumps({"parquet": parquet_dir, "iceberg": iceberg, "reference": reference}[kind](*args)))
