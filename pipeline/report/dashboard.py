"""`impressions dashboard --out FILE.html`: the figures of the warehouse, gathered and handed to html.py.

Everything comes from the table format and the load history, not from logs: the loads (records.history), and for
each table its `stats` result (stored figures where the lineage has them), its rows, files and bytes per
partition, and its totals after each snapshot (the snapshot summaries' total-* fields).
"""
from __future__ import annotations

import os
from collections import defaultdict
from datetime import datetime, timezone

from ..stages.table_stats import finish_stats, plan_stats
from ..table.catalog import open_catalog
from ..table.write import to_date
from ..storage import is_remote, upload
from .html import dashboard_html, render_dashboard
from .records import history


def gather(settings) -> dict:
    catalog = open_catalog(settings.warehouse, settings.catalog, create=False)
    internal = {settings.loads_table, settings.quarantine_table, settings.dimension_table}
    tables = []
    names = sorted(name for _, name in catalog.list_tables(settings.namespace)) \
        if (settings.namespace,) in catalog.list_namespaces() else []
    for name in names:
        if name in internal:
            continue
        plan = plan_stats(settings, name)
        stats = finish_stats(plan, None)
        tables.append({"table": stats["table"], "stats": stats, "partitions": _partitions(plan.table),
                       "history": _history(plan.table)})
    return {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "warehouse": settings.warehouse, "loads": history(settings, limit=500), "tables": tables}


def _partitions(table) -> list[dict]:
    """Files, rows and bytes per (ad_date, bucket) partition."""
    names = [f.name for f in table.spec().fields]
    if table.current_snapshot() is None or names[:1] != ["ad_date"]:
        return []
    out = defaultdict(lambda: {"files": 0, "rows": 0, "bytes": 0})
    for task in table.scan().plan_files():
        f = task.file
        day = f.partition[0]
        key = (to_date(day).isoformat() if isinstance(day, int) else str(day),
               int(f.partition[1]) if len(names) > 1 else 0)
        part = out[key]
        part["files"] += 1
        part["rows"] += f.record_count
        part["bytes"] += f.file_size_in_bytes
    return [{"ad_date": d, "bucket": b, **v} for (d, b), v in sorted(out.items())]


def _history(table) -> list[dict]:
    """The table's totals after each snapshot still in its metadata, oldest first."""
    out = []
    for s in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms):
        summary = s.summary.additional_properties if s.summary else {}
        out.append({"snapshot_id": s.snapshot_id, "timestamp_ms": s.timestamp_ms,
                    "operation": str(s.summary.operation.value) if s.summary else "",
                    "load_id": summary.get("impressions.load-id"),
                    "files": int(summary.get("total-data-files", 0)), "rows": int(summary.get("total-records", 0)),
                    "bytes": int(summary.get("total-files-size", 0))})
    return out


def write_dashboard(settings, out_path: str) -> str:
    """Write the page to a local file, or to an s3:// object (served as text/html); returns where it went."""
    if is_remote(out_path):
        upload(out_path, dashboard_html(gather(settings)).encode(), {}, content_type="text/html; charset=utf-8")
        return out_path
    return render_dashboard(gather(settings), os.path.abspath(out_path))
