"""Input files shaped unlike the bench's own: many Zipf-distributed campaigns, many video ids, 40-bit ids and
full-precision viewing percentages — the shapes README's *Held-out-style files again* measured.

  .venv/bin/python bench/unlike.py OUTDIR [--rows 16000000] [--days 60] [--campaigns 3000] [--videos 70000]
                                          [--seed 11]

Writes OUTDIR/impressions.csv.gz (header-less, MM/DD/YYYY dates, unquoted), OUTDIR/campaigns.csv.gz (a header, one
row per campaign) and OUTDIR/campaigns_updated.csv.gz (3 campaigns renamed, 1 new: what an `update` reads). The
bench's generator (`impressions generate`) has 50 campaigns, a few video ids and 2-decimal percentages; these files
cost per partition and per distinct value instead. Rows are built with numpy and written with pyarrow's CSV
writer 2 M at a time, then compressed by the system's `gzip -6` (what a platform dropping files would use).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

CHUNK = 2_000_000
CHANNELS = ["video", "social", "display", "search"]
OBJECTIVES = ["awareness", "conversion", "consideration"]


def impressions(path: Path, rows: int, days: int, campaigns: int, videos: int, rng: np.random.Generator) -> None:
    base = dt.date(2024, 3, 1)
    dates = pa.array([(base + dt.timedelta(days=int(d))).strftime("%m/%d/%Y")
                      for d in sorted(rng.choice(400, days, replace=False))])
    names = pa.array([f"cmp_{i:05d}" for i in range(campaigns)])
    video_ids = pa.array([f"v{i}" for i in range(videos)])
    weights = 1.0 / np.arange(1, campaigns + 1) ** 1.1  # Zipf-like: a few campaigns hold most rows
    weights /= weights.sum()
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with pa.OSFile(str(path), "wb") as f:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            pacsv.write_csv(pa.table({
                "ad_date": pc.take(dates, rng.integers(0, days, n)),
                "impression_id": pa.array(rng.integers(0, 1 << 40, n)),
                "campaign_id": pc.take(names, rng.choice(campaigns, n, p=weights)),
                "video_id": pc.take(video_ids, rng.integers(0, videos, n)),
                "viewing_percentage": pa.array(rng.random(n)),
            }), f, options)
    subprocess.run(["gzip", "-6", "-f", str(path)], check=True)


def dimensions(outdir: Path, campaigns: int) -> None:
    header = "campaign_id,campaign_name,advertiser,channel,objective\n"
    rows = [[f"cmp_{i:05d}", f"Campaign {i}", f"advertiser_{i % 97}", CHANNELS[i % 4], OBJECTIVES[i % 3]]
            for i in range(campaigns)]
    with gzip.open(outdir / "campaigns.csv.gz", "wt") as f:
        f.write(header + "".join(",".join(r) + "\n" for r in rows))
    # with 3,000 campaigns: 17, 1234 and 2900 renamed, cmp_09999 new (the README's figures)
    changed = [rows[i][:1] + [rows[i][1] + " (renamed)"] + rows[i][2:]
               for i in (17, campaigns * 1234 // 3000, campaigns * 2900 // 3000)]
    with gzip.open(outdir / "campaigns_updated.csv.gz", "wt") as f:
        f.write(header + "".join(",".join(r) + "\n" for r in changed)
                + f"cmp_{max(9999, campaigns):05d},New,advertiser_1,video,awareness\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--rows", type=int, default=16_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--campaigns", type=int, default=3_000)
    ap.add_argument("--videos", type=int, default=70_000)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)
    if not 1 <= a.days <= 400 or a.campaigns < 101 or a.rows < 1 or a.videos < 1:
        ap.error("need 1 <= --days <= 400, --campaigns >= 101, --rows >= 1, --videos >= 1")
    a.outdir.mkdir(parents=True, exist_ok=True)
    impressions(a.outdir / "impressions.csv", a.rows, a.days, a.campaigns, a.videos, np.random.default_rng(a.seed))
    dimensions(a.outdir, a.campaigns)
    print(f"wrote {a.outdir}/impressions.csv.gz, campaigns.csv.gz, campaigns_updated.csv.gz")


if __name__ == "__main__":
    main()
