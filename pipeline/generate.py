"""`impressions generate`: deterministic synthetic inputs in the users' format.

Impressions: header-less CSV, several gzip members (one per chunk, compressed by ISA-L in parallel threads),
dates over `days` days, Zipf-skewed campaigns, 4-decimal viewing_percentage. The same seed gives the same
bytes whatever the thread count. The dimension has a header; the updated dimension holds `changed` changed
campaigns plus one campaign that occurs in the impressions but is new in the update.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from isal import isal_zlib

from .errors import UsageError

CHUNK_ROWS = 1_000_000
START = dt.date(2019, 1, 1)
CHANNELS = ["social", "search", "display", "video", "ctv"]
OBJECTIVES = ["awareness", "consideration", "conversion"]


def campaign_ids(campaigns: int) -> list[str]:
    """campaign_00 … plus one extra id (index `campaigns`) that only the updated dimension describes."""
    width = max(2, len(str(campaigns)))
    return [f"campaign_{i:0{width}d}" for i in range(campaigns + 1)]


def _gzip_member(data: bytes) -> bytes:
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 16 + 15)
    return c.compress(data) + c.flush()


def _chunk_csv(seed: int, index: int, rows: int, first_id: int, days: int, ids: list[str],
               weights: np.ndarray, videos: int) -> bytes:
    rng = np.random.default_rng([seed, index])
    dates = pa.array([(START + dt.timedelta(d)).strftime("%m/%d/%Y") for d in range(days)])
    vps = pa.array([f"{v / 10000:.4f}".rstrip("0").rstrip(".") if v not in (0, 10000) else str(v // 10000)
                    for v in range(10001)])
    campaigns = pa.array(ids)
    video_names = pa.array([f"video_{v}" for v in range(videos)])
    table = pa.table({
        "ad_date": dates.take(pa.array(rng.integers(0, days, rows))),
        "impression_id": pa.array(np.arange(first_id, first_id + rows, dtype=np.int64)),
        "campaign_id": campaigns.take(pa.array(_campaign_draws(rng, index, rows, weights))),
        "video_id": video_names.take(pa.array(rng.integers(0, videos, rows))),
        "viewing_percentage": vps.take(pa.array(rng.integers(0, 10001, rows))),
    })
    out = io.BytesIO()
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return out.getvalue()


def _campaign_draws(rng, index: int, rows: int, weights: np.ndarray) -> np.ndarray:
    """Zipf-skewed campaign indices; the first chunk's first row is the campaign new in the update, so that
    campaign always occurs in the impressions (an orphan until the update describes it)."""
    draws = rng.choice(len(weights), size=rows, p=weights)
    if index == 0 and rows:
        draws[0] = len(weights) - 1
    return draws


def _write_dimension(path: str, rows: list[dict]) -> None:
    # mtime=0: the same inputs give the same bytes (gzip headers carry a timestamp otherwise)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["campaign_id", "campaign_name", "advertiser", "channel", "objective"])
        w.writeheader()
        w.writerows(rows)


def generate(outdir: str, rows: int = 1_000_000, days: int = 30, campaigns: int = 50, changed: int = 3,
             seed: int = 0, videos: int = 20, threads: int | None = None) -> dict:
    if rows < 0 or days < 1 or campaigns < 1 or not 0 <= changed <= campaigns:
        raise UsageError("generate needs rows >= 0, days >= 1, campaigns >= 1 and 0 <= changed <= campaigns")
    os.makedirs(outdir, exist_ok=True)
    ids = campaign_ids(campaigns)
    weights = 1.0 / np.arange(1, campaigns + 1) ** 1.1
    weights = np.append(weights, weights[-1])  # the campaign new in the update is as rare as the rarest
    weights /= weights.sum()

    impressions = os.path.join(outdir, "impressions.csv.gz")
    chunks = [(i, min(CHUNK_ROWS, rows - start), 50000 + start)
              for i, start in enumerate(range(0, rows, CHUNK_ROWS))]
    with open(impressions, "wb") as f, ThreadPoolExecutor(threads or os.cpu_count() or 2) as pool:
        def job(c):
            return _gzip_member(_chunk_csv(seed, c[0], c[1], c[2], days, ids, weights, videos))
        for member in pool.map(job, chunks):
            f.write(member)
        if not chunks:
            f.write(_gzip_member(b""))

    rng = np.random.default_rng([seed, 1_000_003])
    dim = [{"campaign_id": cid, "campaign_name": f"Campaign {i}", "advertiser": f"advertiser_{i % 7}",
            "channel": CHANNELS[int(rng.integers(len(CHANNELS)))],
            "objective": OBJECTIVES[int(rng.integers(len(OBJECTIVES)))]}
           for i, cid in enumerate(ids[:-1])]
    chosen = sorted(int(i) for i in rng.choice(campaigns, size=changed, replace=False))
    updated = [{**dim[i], "campaign_name": f"Campaign {i} (renamed)",
                "objective": OBJECTIVES[(OBJECTIVES.index(dim[i]["objective"]) + 1) % len(OBJECTIVES)]}
               for i in chosen]
    updated.append({"campaign_id": ids[-1], "campaign_name": f"Campaign {campaigns} (new)",
                    "advertiser": "advertiser_new", "channel": "video", "objective": "awareness"})
    campaigns_path = os.path.join(outdir, "campaigns.csv.gz")
    updated_path = os.path.join(outdir, "campaigns_updated.csv.gz")
    _write_dimension(campaigns_path, dim)
    _write_dimension(updated_path, updated)
    return {"impressions": impressions, "campaigns": campaigns_path, "campaigns_updated": updated_path,
            "rows": rows, "changed": [ids[i] for i in chosen], "new": [ids[-1]]}
