"""Every CloudWatch query and dashboard widget, in one module, and the lines they read.

The pipeline's JSON lines reach CloudWatch Logs either through stdout (AWS Batch's awslogs driver) or through
`cloudwatch.CloudWatchSink` (``--cloudwatch``). Logs Insights discovers their JSON fields (a nested object such
as ``quarantine`` becomes ``quarantine.bad_date``); the queries below read three kinds of line:

- ``load_status`` (`loads.Load.status/finish`): one per status change of a load; the last one of a load carries
  its counts, ``quarantine`` by reason, ``error`` when FAILED, and ``vp_mean``/``vp_std`` when computed;
- ``load_metrics`` (`loads.emf`): the EMF line of a finished load, whose metrics CloudWatch extracts (or which
  the sink sends with PutMetricData); the metric widgets read those metrics, never the line;
- ``file_rows`` (`file_rows_line` below): one per data file a load committed, with its partition, rows and
  bytes. Status lines carry only totals, and a single line listing every file would pass the 256 KB event
  limit on big loads (2,000+ files), so *rows per file* needs one line per file.

Insights computes its statistics over lines, so ``stddev()`` over ``file_rows`` would be a stddev of file
figures, not of rows: the row-level viewing_percentage stddev is the pipeline's own (``vp_std`` on the final
status line, exact by Chan's merge), and the dashboard shows that number as it was logged.

`dashboard_body(region, log_group, namespace)` is the PutDashboard body (also the CloudFormation template's
``DashboardBody``: ``python -m pipeline.report.queries --region '${AWS::Region}' --log-group …`` prints it,
ready for ``Fn::Sub``; the body contains no other ``${``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys

NAMESPACE = "Impressions"
QUARANTINE_REASONS = ("field_count", "bad_date", "bad_number", "out_of_range", "empty_campaign", "encoding",
                      "line_too_long")
# dimension sets of the metrics: the EMF line's (loads.emf), never a load id or a file key
DIMENSIONS = (("stage", "table"), ("stage", "table", "status"))

# the fields each line carries that a query may read (checked against the line builders by the tests)
LINES = {
    "load_status": frozenset(
        ["event", "load_id", "stage", "table", "status", "seconds", "rows_read", "rows_written",
         "rows_quarantined", "files_written", "bytes_written", "error", "orphans", "vp_mean", "vp_std"]
        + [f"quarantine.{r}" for r in QUARANTINE_REASONS]),
    "file_rows": frozenset(["event", "load_id", "stage", "table", "path", "ad_date", "bucket", "rows", "bytes"]),
}


def file_rows_line(load_id: str, stage: str, table: str, path: str, rows: int, nbytes: int,
                   ad_date: str | None = None, bucket: int | None = None) -> dict:
    """The line for one data file a load committed (read by the rows-per-file queries)."""
    return {"event": "file_rows", "load_id": load_id, "stage": stage, "table": table, "path": path,
            "ad_date": ad_date, "bucket": bucket, "rows": int(rows), "bytes": int(nbytes)}


def _query(*lines: str) -> str:
    return "\n| ".join(lines)


# ------------------------------------------------------------------------------------- Logs Insights
# name -> (the event it reads, the query without its SOURCE clause)
INSIGHTS = {
    "latest_status": ("load_status", _query(
        'filter event = "load_status"',
        "stats latest(status) as last_status, latest(stage) as load_stage, latest(table) as load_table, "
        "latest(rows_read) as read, latest(rows_written) as written, latest(rows_quarantined) as quarantined, "
        "latest(seconds) as secs, latest(vp_mean) as mean_vp, latest(vp_std) as std_vp, "
        "latest(error) as last_error, max(@timestamp) as last_seen by load_id",
        "sort last_seen desc",
        "limit 200")),
    "failed_loads": ("load_status", _query(
        'filter event = "load_status" and status = "FAILED"',
        "fields @timestamp, load_id, stage, table, error, seconds",
        "sort @timestamp desc",
        "limit 100")),
    "quarantine_by_reason": ("load_status", _query(
        'filter event = "load_status" and status = "SUCCEEDED"',
        "stats " + ", ".join(f"sum(quarantine.{r}) as {r}_rows" for r in QUARANTINE_REASONS)
        + ", sum(rows_quarantined) as all_rows by table")),
    "rows_per_file": ("file_rows", _query(
        'filter event = "file_rows"',
        "fields @timestamp, table, load_id, ad_date, bucket, path, rows, bytes",
        "sort @timestamp desc",
        "limit 1000")),
    "files_per_load": ("file_rows", _query(
        'filter event = "file_rows"',
        "stats count(*) as files, sum(rows) as total_rows, min(rows) as min_rows, avg(rows) as avg_rows, "
        "max(rows) as max_rows, sum(bytes) as total_bytes by table, load_id",
        "sort total_rows desc",
        "limit 200")),
    "rows_per_partition": ("file_rows", _query(
        'filter event = "file_rows"',
        "stats count(*) as files, sum(rows) as total_rows, sum(bytes) as total_bytes by table, ad_date, bucket",
        "sort total_rows desc",
        "limit 1000")),
}


def insights(name: str, log_group: str) -> str:
    """The Insights query `name` over `log_group`, as a dashboard log widget wants it."""
    return f"SOURCE '{log_group}' | " + INSIGHTS[name][1]


# ------------------------------------------------------------------------------------------- metrics
# widget title -> [(metric name, statistic, extra dimension filter)]; the EMF metric names of loads.emf
METRIC_WIDGETS = {
    "Rows per load": [("rows_read", "Sum", ""), ("rows_written", "Sum", ""), ("rows_quarantined", "Sum", "")],
    "viewing_percentage mean": [("vp_mean", "Average", "")],
    "viewing_percentage stddev (population, exact)": [("vp_std", "Average", "")],
    "Failed loads": [("seconds", "SampleCount", 'status="FAILED"')],
    "Load duration (s)": [("seconds", "Maximum", "")],
    "Bytes written": [("bytes_written", "Sum", ""), ("bytes_rewritten", "Sum", "")],
}


def _schema_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_./#:-]+", name) else '"' + name.replace('"', '\\"') + '"'


def metric_search(namespace: str, metric: str, stat: str, where: str = "", period: int = 3600) -> str:
    """A SEARCH expression over every stage and table (no table list to keep in step with the data)."""
    dims = DIMENSIONS[1] if "status=" in where else DIMENSIONS[0]
    schema = "{" + ",".join([_schema_name(namespace), *dims]) + "}"
    terms = f'MetricName="{metric}"' + (f" {where}" if where else "")
    return f"SEARCH('{schema} {terms}', '{stat}', {period})"


# --------------------------------------------------------------------------------------- dashboard
def dashboard_body(region: str, log_group: str, namespace: str = NAMESPACE, period: int = 3600) -> dict:
    """The PutDashboard body: log tables of the JSON lines and metric graphs of the EMF metrics (pure)."""
    widgets: list[dict] = []
    y = 0

    def log(title, name, x, w, h):
        widgets.append({"type": "log", "x": x, "y": y, "width": w, "height": h, "properties": {
            "title": title, "region": region, "view": "table", "query": insights(name, log_group)}})

    widgets.append({"type": "text", "x": 0, "y": y, "width": 24, "height": 2, "properties": {"markdown": (
        f"# impressions loads\nStatus lines of log group `{log_group}`, metrics of namespace `{namespace}`. "
        "The viewing_percentage stddev is the pipeline's exact row-level figure (`vp_std`), as `stats` prints it.")}})
    y += 2
    log("Loads: latest status", "latest_status", 0, 24, 7)
    y += 7
    log("Failed loads", "failed_loads", 0, 12, 6)
    log("Quarantined rows by reason", "quarantine_by_reason", 12, 12, 6)
    y += 6
    log("Rows per file (files committed, newest first)", "rows_per_file", 0, 12, 8)
    log("Files and rows per load", "files_per_load", 12, 12, 8)
    y += 8
    log("Rows per partition (written)", "rows_per_partition", 0, 24, 6)
    y += 6
    for i, (title, series) in enumerate(METRIC_WIDGETS.items()):
        metrics = [[{"expression": metric_search(namespace, m, stat, where, period), "id": f"e{i}_{j}",
                     "label": m}] for j, (m, stat, where) in enumerate(series)]
        widgets.append({"type": "metric", "x": 8 * (i % 3), "y": y + 6 * (i // 3), "width": 8, "height": 6,
                        "properties": {"title": title, "region": region, "view": "timeSeries", "stacked": False,
                                       "period": period, "metrics": metrics}})
    return {"start": "-P7D", "periodOverride": "inherit", "widgets": widgets}


def main(argv=None) -> int:
    """Print the dashboard body as JSON (for the CloudFormation template or `aws cloudwatch put-dashboard`)."""
    from .cloudwatch import CloudWatchConfig

    cfg = CloudWatchConfig.from_dask()
    p = argparse.ArgumentParser(prog="python -m pipeline.report.queries", description=main.__doc__)
    p.add_argument("--region", default=cfg.region, required=cfg.region is None,
                   help="the widgets' region (e.g. '${AWS::Region}' for Fn::Sub)")
    p.add_argument("--log-group", default=cfg.log_group, help=f"default {cfg.log_group}")
    p.add_argument("--namespace", default=cfg.namespace, help=f"default {cfg.namespace}")
    p.add_argument("--indent", type=int, default=None, help="pretty-print with this indent")
    args = p.parse_args(argv)
    sys.stdout.write(json.dumps(dashboard_body(args.region, args.log_group, args.namespace),
                                indent=args.indent) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
