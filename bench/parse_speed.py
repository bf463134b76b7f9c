"""Parse speed of `parse_block` on clean, all-quoted and dirty blocks (one core, no I/O).

    .venv/bin/python bench/parse_speed.py [--rows N] [--repeat R] [--out bench/results/parse_speed.json]

Target (issue: quoted fields must not fall off a cliff): a file whose fields are all quoted parses at no less
than half the speed of the same rows unquoted. "dirty" blocks hold one bad line per block, which sends the block
down the careful path; "dirty quoted" is the same with every field quoted. Rows per second are medians.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from pipeline.read.parse import parse_block  # noqa: E402

BLOCK = 16 << 20


def lines(n: int, quoted: bool) -> list[bytes]:
    rng = np.random.default_rng(0)
    dates = [f"{m:02d}/{d:02d}/2019" for m in (1, 2) for d in range(1, 29)]
    out = []
    for i in range(n):
        fields = [dates[rng.integers(len(dates))], str(50000 + i), f"campaign_{rng.integers(50):02d}",
                  f"video_{rng.integers(20)}", f"{rng.integers(10001) / 10000:g}"]
        if quoted:
            fields = [f'"{f}"' for f in fields]
        out.append(",".join(fields).encode() + b"\n")
    return out


def blocks(data: list[bytes], dirty: bool) -> list[bytes]:
    out, cur, size = [], [], 0
    for ln in data:
        cur.append(ln)
        size += len(ln)
        if size >= BLOCK:
            if dirty:
                cur.insert(len(cur) // 2, b"this line is bad\n")
            out.append(b"".join(cur))
            cur, size = [], 0
    if cur:
        if dirty:
            cur.insert(len(cur) // 2, b"this line is bad\n")
        out.append(b"".join(cur))
    return out


def rate(bs: list[bytes], repeat: int) -> dict:
    rows = sum(parse_block(b, 0).rows.num_rows for b in bs)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in bs:
            parse_block(b, 0)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    nbytes = sum(len(b) for b in bs)
    return {"rows": rows, "bytes": nbytes, "seconds_median": round(med, 4),
            "rows_per_s": round(rows / med), "mb_per_s": round(nbytes / med / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "parse_speed.json"))
    a = ap.parse_args()
    plain, quoted = lines(a.rows, False), lines(a.rows, True)
    results = {
        "clean": rate(blocks(plain, False), a.repeat),
        "all_quoted": rate(blocks(quoted, False), a.repeat),
        "dirty": rate(blocks(plain, True), a.repeat),
        "dirty_quoted": rate(blocks(quoted, True), a.repeat),
    }
    ratio = results["all_quoted"]["rows_per_s"] / results["clean"]["rows_per_s"]
    doc = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or
           platform.machine(), "cores": os.cpu_count(), "rows": a.rows, "results": results,
           "quoted_over_clean_rows_per_s": round(ratio, 3), "target": ">= 0.5", "meets_target": ratio >= 0.5}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    for name, r in results.items():
        print(f"{name:13s} {r['rows_per_s']:>12,} rows/s {r['mb_per_s']:>8} MB/s", file=sys.stderr)
    print(f"all quoted / clean = {ratio:.2f} (target >= 0.5)", file=sys.stderr)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
