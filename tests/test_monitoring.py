"""Monitoring end to end through the CLI: the durable load history (`loads`), the HTML dashboard in a real headless
Chromium, and CloudWatch (`--cloudwatch`, `dashboard --cloudwatch`) against moto's server on loopback.

A SUCCEEDED, a SKIPPED, a FAILED and a killed (ABANDONED) load are made by running the CLI as users do.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_gz
from test_html_dashboard import BOKEH_EXTRACT, BOKEH_READY, browser, chromium, problems  # noqa: F401 (fixtures)
from test_integrity import lines

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"DASK_IMPRESSIONS__READ__RANGE_SIZE": "256 KiB", "DASK_IMPRESSIONS__READ__INDEX_SPACING": "64 KiB",
         "DASK_IMPRESSIONS__READ__SMALL_FILE": "16 KiB", "DASK_IMPRESSIONS__READ__BLOCK_SIZE": "64 KiB",
         "DASK_IMPRESSIONS__BUCKETS": "8"}


def cli(*args, extra_env=None, timeout=240, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_") and k != "IMPRESSIONS_DEBUG"}
    env.update(SMALL)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def last_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """One warehouse with a SUCCEEDED, a SKIPPED, a FAILED and an ABANDONED partition load."""
    d = tmp_path_factory.mktemp("monitoring")
    wh = str(d / "wh")
    good = write_gz(d / "good.csv.gz", lines(20_000, 31, bad_every=400))
    assert cli("--warehouse", wh, "--workers", "2", "partition", good, "FACT").returncode == 0
    assert cli("--warehouse", wh, "--workers", "2", "partition", good, "FACT").returncode == 0  # SKIPPED
    broken = d / "broken.csv.gz"
    broken.write_bytes(Path(good).read_bytes()[:-5000])  # a truncated upload
    assert cli("--warehouse", wh, "--workers", "2", "partition", str(broken), "FACT").returncode == 1
    # a load killed with its whole process group while it runs: its RUNNING record stays behind
    big = write_gz(d / "big.csv.gz", lines(400_000, 32, first_id=10**7))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update({**SMALL, "DASK_IMPRESSIONS__READ__RANGE_SIZE": "64 KiB"})
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "--warehouse", wh, "--workers", "2", "partition", big,
                             "FACT"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if '"RUNNING"' in line or time.time() > deadline:
            break
    time.sleep(2)  # the RUNNING record is committed right after the line is printed
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return wh


def test_loads_lists_every_load_newest_first_with_its_status(warehouse):
    out = last_json(cli("--warehouse", warehouse, "loads", "--json"))["loads"]
    assert [r["status"] for r in out] == ["ABANDONED", "FAILED", "SKIPPED", "SUCCEEDED"], out
    ok = out[-1]
    assert ok["rows_read"] == 20_000 and ok["rows_written"] == 20_000 - 50 and ok["rows_quarantined"] == 50
    assert ok["quarantine"] == {"bad_number": 50} and ok["files_written"] > 0 and ok["finished"]
    assert "truncated" in out[1]["error"] and out[0]["finished"] is None
    assert all(r["table"] == "impressions.fact" and r["stage"] == "partition" for r in out)
    assert [r["status"] for r in last_json(cli("--warehouse", warehouse, "loads", "FACT", "--limit", "2",
                                               "--json"))["loads"]] == ["ABANDONED", "FAILED"]
    assert last_json(cli("--warehouse", warehouse, "loads", "OTHER", "--json"))["loads"] == []


def test_the_html_dashboard_shows_every_load_and_the_stats_stddev(warehouse, browser, tmp_path):  # noqa: F811
    stats = last_json(cli("--warehouse", warehouse, "stats", "FACT", "--json"))
    out = last_json(cli("--warehouse", warehouse, "dashboard", "--out", str(tmp_path / "d.html")))
    page = browser.visit(Path(out["path"]).as_uri(), BOKEH_READY, BOKEH_EXTRACT)
    assert problems(page) == []
    doc = json.loads(page["value"])
    assert doc["sources"]["loads"]["status"] == ["ABANDONED", "FAILED", "SKIPPED", "SUCCEEDED"]
    overall = doc["sources"]["overall"]
    i = overall["table"].index("impressions.fact")
    assert overall["vp_std"][i] == stats["vp_std"] and overall["rows"][i] == stats["rows"]
    assert overall["files"][i] == len(stats["files"])


def test_cloudwatch_gets_the_lines_the_metrics_and_the_dashboard(s3_endpoint, tmp_path):
    import boto3

    group = f"/impressions/test-{os.getpid()}-{int(time.time())}"
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "DASK_IMPRESSIONS__CLOUDWATCH__LOG_GROUP": group,
           "DASK_IMPRESSIONS__CLOUDWATCH__DASHBOARD": "impressions-test", "AWS_DEFAULT_REGION": "us-east-1"}
    src = write_gz(tmp_path / "f.csv.gz", lines(5_000, 33))
    wh = str(tmp_path / "wh")
    proc = cli("--warehouse", wh, "--workers", "1", "--cloudwatch", "partition", src, "FACT", extra_env=env)
    final = [json.loads(x) for x in proc.stdout.splitlines() if '"load_status"' in x][-1]
    assert proc.returncode == 0 and final["status"] == "SUCCEEDED", proc.stderr[-2000:]

    logs = boto3.client("logs", endpoint_url=s3_endpoint, region_name="us-east-1")
    messages = [json.loads(e["message"]) for e in logs.filter_log_events(logGroupName=group)["events"]]
    statuses = [m["status"] for m in messages if m.get("event") == "load_status"]
    assert statuses == ["RUNNING", "SUCCEEDED"]
    files = [m for m in messages if m.get("event") == "file_rows"]
    assert sum(m["rows"] for m in files) == 5_000 and len(files) == final["files_written"]

    cw = boto3.client("cloudwatch", endpoint_url=s3_endpoint, region_name="us-east-1")
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="Impressions")["Metrics"]}
    assert {"rows_written", "vp_std", "vp_mean", "files_written"} <= names

    out = last_json(cli("--warehouse", wh, "dashboard", "--cloudwatch", extra_env=env))
    body = json.loads(cw.get_dashboard(DashboardName="impressions-test")["DashboardBody"])
    text = json.dumps(body)
    assert out["event"] == "cloudwatch_dashboard"
    assert group in text and "load_status" in text and "file_rows" in text and "vp_std" in text
