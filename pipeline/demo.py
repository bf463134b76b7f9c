"""`impressions demo`: generate inputs, run the pipeline on a LocalCluster, print the statistics."""
from __future__ import annotations

import json
import os

from .report.loads import emit, say


def _inputs(data_dir: str, rows: int) -> dict:
    """Generate the demo inputs once; a rerun reuses them, so its loads are SKIPPED rather than duplicated."""
    from .generate import generate

    params = {"rows": rows, "days": 30, "campaigns": 50, "changed": 3, "seed": 0}
    marker = os.path.join(data_dir, "generated.json")
    try:
        with open(marker) as f:
            done = json.load(f)
        if done["params"] == params and all(os.path.exists(done["files"][k]) for k in
                                            ("impressions", "campaigns", "campaigns_updated")):
            say(f"reusing the inputs in {data_dir}/ (delete it to generate new ones)")
            return done["files"]
    except (OSError, ValueError, KeyError):
        pass
    say(f"generating {rows:,} impressions into {data_dir}/ ...")
    files = generate(data_dir, **params)
    with open(marker, "w") as f:
        json.dump({"params": params, "files": files}, f)
    return files


def demo(settings, rows: int = 3_000_000, data_dir: str = "demo-data") -> int:
    from cluster import connect

    from .jobfile import check_steps, run_steps
    from .stages import WORKER_MODULES
    from .stages.table_stats import say_stats, summary

    files = _inputs(data_dir, rows)
    steps = [
        {"partition": {"sources": [files["impressions"]], "table": "FACT_PARTITIONED"}},
        {"join": {"dimension": files["campaigns"], "source": "FACT_PARTITIONED", "table": "FACT_JOINED"}},
        {"update": {"dimension": files["campaigns_updated"], "source": "FACT_JOINED", "table": "FACT_UPDATED"}},
        {"stats": {"table": "FACT_UPDATED"}},
    ]
    checked = check_steps(steps, settings, os.getcwd())
    with connect(settings.scheduler, settings.workers, settings.threads_per_worker,
                 preload=WORKER_MODULES) as client:
        results = run_steps(client, settings, checked)
    final = results[-1]
    say("")
    say_stats(final)
    say(f"warehouse: {settings.warehouse} (catalog: {settings.catalog or 'sqlite:///' + settings.warehouse + '/catalog.db'})")
    from .report.dashboard import write_dashboard

    path = write_dashboard(settings, os.path.join(settings.warehouse, "dashboard.html"))
    say(f"dashboard: {path} (open it in a browser; `impressions loads` lists the load history)")
    emit({**summary(final), "dashboard": path})
    return 0
