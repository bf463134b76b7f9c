"""The floors of the partition stage, one core each, on the whole file (run by the project's venv, whose
pyarrow, python-isal and rapidgzip are the ones impressions uses).

argv = source, scratch directory. Steps, each timed alone (wall and the process's user/system CPU):
  inflate  ISA-L inflate of the whole file into memory (`isal.igzip`)
  index    the rapidgzip index pass as impressions runs it: parallelization=1, a seek point every 4 MiB,
           every member's CRC checked, the index exported
  parse    `pyarrow.csv.read_csv` of the inflated bytes, one thread, typed (the date as a string, the ids
           dictionary-encoded, as impressions' typed path reads them)
  write    the parsed rows as ONE zstd(1) Parquet file
Prints one JSON line: the steps plus rows and the viewing_percentage moments (checked like every peer's output).
"""
import io
import json
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import rapidgzip
from isal import igzip

SPACING = 4 << 20


def clock():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime, ru.ru_stime


def step(steps, name, fn):
    w0, u0, s0 = clock()
    out = fn()
    w1, u1, s1 = clock()
    steps[name] = {"wall": w1 - w0, "cpu_user": u1 - u0, "cpu_sys": s1 - s0, "cpu": (u1 - u0) + (s1 - s0)}
    return out


def inflate(src):
    with igzip.open(src, "rb") as f:
        return f.read()


def index_pass(src):
    reader = rapidgzip._RapidgzipFile(src, parallelization=1, chunk_size=SPACING)
    try:
        buf = bytearray(4 << 20)
        while reader.readinto(buf):
            pass
        exported = io.BytesIO()
        reader.export_index(exported)
        return exported.getbuffer().nbytes
    finally:
        reader.close()


def parse(data):
    dictionary = pa.dictionary(pa.int32(), pa.string())
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=16 << 20, autogenerate_column_names=False,
                                       column_names=["ad_date", "impression_id", "campaign_id", "video_id",
                                                     "viewing_percentage"]),
        convert_options=pacsv.ConvertOptions(column_types={
            "ad_date": pa.string(), "impression_id": pa.int64(), "campaign_id": dictionary,
            "video_id": dictionary, "viewing_percentage": pa.float64()}))


def main(src: str, scratch: str) -> None:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    steps = {}
    data = step(steps, "inflate", lambda: inflate(src))
    index_bytes = step(steps, "index", lambda: index_pass(src))
    table = step(steps, "parse", lambda: parse(data))
    os.makedirs(scratch, exist_ok=True)
    out = os.path.join(scratch, "all.parquet")
    step(steps, "write", lambda: pq.write_table(table, out, compression="zstd", compression_level=1))
    vp = table.column("viewing_percentage").to_numpy()
    mean = float(vp.mean())
    print(json.dumps({"engine": "floors", "steps": steps, "csv_bytes": len(data), "index_bytes": index_bytes,
                      "rows": table.num_rows, "parquet_bytes": os.path.getsize(out),
                      "n": int(vp.size), "mean": mean, "m2": float(((vp - mean) ** 2).sum())}))
    os.unlink(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
