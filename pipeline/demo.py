"""`impressions demo`: generate inputs, run the pipeline on a LocalCluster, print the statistics."""
from __future__ import annotations

import os

from .loads import emit, say


def demo(settings, rows: int = 3_000_000, data_dir: str = "demo-data") -> int:
    from cluster import connect

    from .generate import generate
    from .jobfile import run_steps

    say(f"generating {rows:,} impressions into {data_dir}/ ...")
    files = generate(data_dir, rows=rows, days=30, campaigns=50, changed=3, seed=0)
    steps = [
        {"partition": {"sources": [files["impressions"]], "table": "FACT_PARTITIONED"}},
        {"join": {"dimension": files["campaigns"], "source": "FACT_PARTITIONED", "table": "FACT_JOINED"}},
        {"update": {"dimension": files["campaigns_updated"], "source": "FACT_JOINED", "table": "FACT_UPDATED"}},
        {"stats": {"table": "FACT_UPDATED"}},
    ]
    with connect(settings.scheduler, settings.workers, settings.threads_per_worker) as client:
        results = run_steps(client, settings, steps, base_dir=os.getcwd())
    final = results[-1]
    say(f"warehouse: {settings.warehouse} (catalog: {settings.catalog or 'sqlite in the warehouse'})")
    emit(final)
    return 0
