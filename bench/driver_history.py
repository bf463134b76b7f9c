"""The driver's memory as a table's history grows (issue 11, item 5): small daily loads into one table, one
after another on one long-lived cluster, and at a few points along the way the peak RSS of the CLI process
(`/usr/bin/time`, the driver alone: `--scheduler` is given, so it starts no LocalCluster) for `stats`, a skipped
rerun of a loaded source, and a new load.

    .venv/bin/python bench/driver_history.py [--loads 10,50,150] [--rows 2000] [--out bench/results/driver_history.json]

Every load adds a snapshot, ~30 data files and one lineage entry. What must not happen: memory growing with
files × history. Expected: a little growth with the current file count (stats lists every file) and the
metadata's snapshot list, nothing per snapshot's manifests.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PY = os.path.join(ROOT, ".venv", "bin", "python")


def lines(i: int, n: int) -> bytes:
    """Load i: n rows on one date (a new date per load), ids i*n+1 …, 40 campaigns."""
    return "".join(f"{1 + (i // 28) % 12:02d}/{1 + i % 28:02d}/{2019 + i // 336},{i * n + k + 1},"
                   f"campaign_{(i * 7 + k) % 40:02d},video_{k % 7},{(k * 37 % 10001) / 10000}\n"
                   for k in range(n)).encode()


def cli(address: str, warehouse: str, *args: str) -> tuple[float, float, str]:
    """(peak RSS MiB, wall s, stdout) of one CLI run."""
    p = subprocess.run(["/usr/bin/time", "-f", "%M %e", PY, "-m", "pipeline", "--warehouse", warehouse,
                        "--scheduler", address, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss, wall = p.stderr.strip().splitlines()[-1].split()
    return int(rss) / 1024, float(wall), p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", default="10,50,150", help="measure after this many loads (comma-separated)")
    ap.add_argument("--rows", type=int, default=2000, help="rows per load")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "driver_history.json"))
    a = ap.parse_args()
    points = sorted(int(x) for x in a.loads.split(","))

    from distributed import LocalCluster

    tmp = tempfile.mkdtemp(prefix="driver-history-")
    warehouse, results, done = os.path.join(tmp, "wh"), [], 0
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
            address = cluster.scheduler_address
            for target in points:
                while done < target:
                    path = os.path.join(tmp, f"day{done:04d}.csv.gz")
                    with open(path, "wb") as f:
                        f.write(gzip.compress(lines(done, a.rows), 1))
                    cli(address, warehouse, "partition", path, "FACT")
                    done += 1
                skip_rss, skip_s, _ = cli(address, warehouse, "partition", os.path.join(tmp, "day0000.csv.gz"), "FACT")
                path = os.path.join(tmp, f"day{done:04d}.csv.gz")
                with open(path, "wb") as f:
                    f.write(gzip.compress(lines(done, a.rows), 1))
                load_rss, load_s, _ = cli(address, warehouse, "partition", path, "FACT")
                done += 1
                stats_rss, stats_s, out = cli(address, warehouse, "stats", "FACT", "--json")
                st = json.loads(out.strip().splitlines()[-1])
                row = {"loads": done, "snapshots": done, "files": len(st["files"]), "rows": st["rows"],
                       "stats_rss_mib": round(stats_rss, 1), "stats_s": stats_s,
                       "skipped_rerun_rss_mib": round(skip_rss, 1), "skipped_rerun_s": skip_s,
                       "new_load_rss_mib": round(load_rss, 1), "new_load_s": load_s}
                assert st["rows"] == done * a.rows, st["rows"]
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first, last = results[0], results[-1]
    doc = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "rows_per_load": a.rows,
           "results": results,
           "growth": {k: round(last[k] / first[k], 3) for k in ("files", "stats_rss_mib", "new_load_rss_mib")}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps(doc["growth"]))


if __name__ == "__main__":
    sys.exit(main())
