"""CloudWatch: the sink, the metrics, the dashboard (against moto's server on 127.0.0.1, through boto3 exactly as
in production), the `impressions.cloudwatch.*` keys (each shown to have its effect), and the query strings.

moto stores log events, metrics and dashboards, but it does not run Logs Insights queries, extract EMF metrics
or validate dashboard widgets. So the Insights queries are checked here against the fields of the lines they
read, as the pipeline's own line builders make them -- not by running them.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import dask.config
import pytest
import yaml

import pipeline
from pipeline.errors import UsageError
from pipeline.report import cloudwatch as cw
from pipeline.report import queries
from pipeline.report.loads import Load, emf

ROOT = Path(__file__).resolve().parents[1]
YAML = yaml.safe_load(Path(pipeline.__file__).with_name("impressions.yaml").read_text())["impressions"]


def _final(status="SUCCEEDED", table="impressions.fact_partitioned", **extra) -> dict:
    """A final status line as the partition stage makes it (plus vp_mean, which load records carry)."""
    load = Load("partition", table, f"partition-{uuid.uuid4().hex[:16]}")
    fields = dict(rows_read=20, rows_written=16, rows_quarantined=4,
                  quarantine={"bad_date": 1, "field_count": 2, "out_of_range": 1}, files_written=8,
                  bytes_written=12345, vp_mean=0.152472, vp_std=0.116147)
    fields.update(extra)
    return load.record(status, **fields)


@pytest.fixture
def group(s3_endpoint):
    """A fresh log group name, configured as impressions.cloudwatch.log-group."""
    name = f"/impressions/test-{uuid.uuid4().hex[:8]}"
    with dask.config.set({"impressions.cloudwatch.log-group": name}):
        yield name


def _events(group: str, stream: str, region: str = "us-east-1") -> list[dict]:
    logs = boto3.client("logs", region_name=region)
    out, token = [], None
    while True:
        kw = {"nextToken": token} if token else {}
        r = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, **kw)
        out += r["events"]
        if not r["events"] or r["nextForwardToken"] == token:
            return out
        token = r["nextForwardToken"]


# ------------------------------------------------------------------------------------------- settings
def test_defaults_come_from_the_yaml():
    c = cw.CloudWatchConfig.from_dask()
    y = YAML["cloudwatch"]
    assert (c.log_group, c.stream_prefix, c.namespace, c.dashboard, c.region) == \
        (y["log-group"], y["stream-prefix"], y["namespace"], y["dashboard"], y["region"])
    assert c.namespace == queries.NAMESPACE == "Impressions"


@pytest.mark.parametrize("key,value", [("log-group", "bad group!"), ("stream-prefix", "a:b"),
                                       ("stream-prefix", ""), ("namespace", "AWS/EC2"), ("dashboard", "my board"),
                                       ("region", "Not A Region")])
def test_bad_settings_are_one_line_usage_errors(key, value):
    with dask.config.set({f"impressions.cloudwatch.{key}": value}), pytest.raises(UsageError) as e:
        cw.CloudWatchConfig.from_dask()
    assert f"impressions.cloudwatch.{key}" in str(e.value) and "\n" not in str(e.value)


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("DASK_IMPRESSIONS__CLOUDWATCH__LOG_GROUP", "/from/env")
    dask.config.refresh()
    try:
        assert cw.CloudWatchConfig.from_dask().log_group == "/from/env"
    finally:
        monkeypatch.undo()
        dask.config.refresh()


# ---------------------------------------------------------------------------------- logs (log-group, prefix)
def test_status_lines_reach_the_log_group_and_stream(group):
    with dask.config.set({"impressions.cloudwatch.stream-prefix": "nightly"}):
        sink = cw.CloudWatchSink()
    assert sink.stream.startswith("nightly/")
    running = Load("partition", "impressions.t", "partition-0123456789abcdef").record("RUNNING")
    sink.send(running)                                       # a status change is sent at once
    assert [json.loads(e["message"]) for e in _events(group, sink.stream)] == [running]
    files = [queries.file_rows_line("partition-0123456789abcdef", "partition", "impressions.t",
                                    f"s3://b/t/data/ad_date=2019-01-0{i}/f{i}.parquet", 100 * i, 999, "2019-01-01", i)
             for i in range(1, 4)]
    for line in files:
        sink.send(line)                                      # other lines wait for the next flush
    assert len(_events(group, sink.stream)) == 1
    final = _final()
    sink.send(final)
    sink.close()
    got = [json.loads(e["message"]) for e in _events(group, sink.stream)]
    assert got == [running, *files, final]
    streams = boto3.client("logs").describe_log_streams(logGroupName=group, logStreamNamePrefix="nightly/")
    assert [s["logStreamName"] for s in streams["logStreams"]] == [sink.stream]


def test_an_existing_group_and_a_second_sink(group):
    boto3.client("logs").create_log_group(logGroupName=group)  # made by the infrastructure, say
    a, b = cw.CloudWatchSink(stream="a"), cw.CloudWatchSink(stream="b")
    a.send(_final()), b.send(_final(status="FAILED", error="corrupt gzip"))
    assert a.enabled and b.enabled and a.sent_events == b.sent_events == 1
    assert json.loads(_events(group, "b")[0]["message"])["error"] == "corrupt gzip"


def test_more_lines_than_one_batch_holds(group):
    sink = cw.CloudWatchSink()
    for i in range(cw.MAX_BATCH_EVENTS + 5):
        sink.send({"event": "file_rows", "rows": i})
    sink.close()
    got = _events(group, sink.stream)
    assert sink.sent_events == len(got) == cw.MAX_BATCH_EVENTS + 5
    assert [json.loads(e["message"])["rows"] for e in got] == list(range(cw.MAX_BATCH_EVENTS + 5))


def test_batches_obey_the_putlogevents_limits():
    now = 1_700_000_000_000
    small = [{"timestamp": now + i, "message": "x"} for i in range(25_000)]
    assert [len(b) for b in cw.batches(small)] == [10_000, 10_000, 5_000]
    big = [{"timestamp": now, "message": "y" * 200_000} for _ in range(12)]
    for b in cw.batches(big):
        assert sum(len(e["message"]) + 26 for e in b) <= cw.MAX_BATCH_BYTES
    assert sum(len(b) for b in cw.batches(big)) == 12
    day = 24 * 3600 * 1000
    spread = [{"timestamp": now + 2 * day, "message": "c"}, {"timestamp": now, "message": "a"},
              {"timestamp": now + day, "message": "b"}]
    out = cw.batches(spread)                                   # sorted, and no batch spans more than 24 h
    assert [[e["message"] for e in b] for b in out] == [["a", "b"], ["c"]]


def test_an_oversized_line_becomes_a_short_note(group):
    huge = {"event": "load_status", "load_id": "l", "status": "RUNNING", "blob": "z" * 300_000}
    assert len(cw.log_message(huge)) < 1000
    sink = cw.CloudWatchSink()
    sink.send(huge)
    assert sink.enabled
    assert json.loads(_events(group, sink.stream)[0]["message"]) == \
        {"event": "load_status", "load_id": "l", "status": "RUNNING", "truncated": True,
         "bytes": len(json.dumps(huge, separators=(", ", ": ")))}


# ------------------------------------------------------------------------------------- metrics (namespace)
def test_final_figures_are_the_emf_metrics(group):
    namespace = f"ImpressionsTest{uuid.uuid4().hex[:6]}"
    with dask.config.set({"impressions.cloudwatch.namespace": namespace}):
        sink = cw.CloudWatchSink()
    final = _final(table="impressions.fact_joined")
    line = emf(final)
    sink.send(final)
    sink.send(line)                                          # the EMF line: PutMetricData, not a log event
    sink.close()
    assert [json.loads(e["message"])["event"] for e in _events(group, sink.stream)] == ["load_status"]
    client = boto3.client("cloudwatch")
    listed = client.list_metrics(Namespace=namespace)["Metrics"]
    directive = line["_aws"]["CloudWatchMetrics"][0]
    names = {m["Name"] for m in directive["Metrics"]}
    assert {m["MetricName"] for m in listed} == names
    assert {tuple(d["Name"] for d in m["Dimensions"]) for m in listed} == {tuple(d) for d in directive["Dimensions"]}
    for m in listed:                                         # never a load id or a file as a dimension
        assert not {d["Name"] for d in m["Dimensions"]} & {"load_id", "path", "source"}
    assert sink.sent_metrics == len(names) * len(directive["Dimensions"])
    # all three dimensions: moto (unlike CloudWatch) also matches metrics that have more dimensions than asked
    stats = client.get_metric_statistics(
        Namespace=namespace, MetricName="rows_written", Statistics=["Sum"], Period=60,
        Dimensions=[{"Name": "stage", "Value": "partition"}, {"Name": "table", "Value": "impressions.fact_joined"},
                    {"Name": "status", "Value": "SUCCEEDED"}],
        StartTime=time.time() - 600, EndTime=time.time() + 600)
    assert sum(p["Sum"] for p in stats["Datapoints"]) == final["rows_written"] == 16
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert {d["MetricName"]: d["Unit"] for d in cw.metric_data(line)} == units


def test_put_metrics_is_the_emf_line(group):
    sink = cw.CloudWatchSink()
    sink.put_metrics(_final(vp_std=None))                   # a null stddev (empty load) is left out, not sent
    assert sink.enabled and sink.sent_metrics == 2 * (len(emf(_final())["_aws"]["CloudWatchMetrics"][0]["Metrics"]) - 1)


def test_a_high_cardinality_dimension_is_refused():
    line = emf(_final())
    line["_aws"]["CloudWatchMetrics"][0]["Dimensions"].append(["stage", "load_id"])
    with pytest.raises(ValueError, match="load_id"):
        cw.metric_data(line)


# ------------------------------------------------------------------------------------------------ region
def test_region_setting(group):
    with dask.config.set({"impressions.cloudwatch.region": "eu-west-1"}):
        sink = cw.CloudWatchSink()
        sink.send(_final())
        published = cw.publish_dashboard()
    assert sink.enabled
    assert [g["logGroupName"] for g in boto3.client("logs", region_name="eu-west-1").describe_log_groups(
        logGroupNamePrefix=group)["logGroups"]] == [group]
    assert boto3.client("logs", region_name="us-east-1").describe_log_groups(
        logGroupNamePrefix=group)["logGroups"] == []
    assert published["region"] == "eu-west-1"
    body = json.loads(boto3.client("cloudwatch", region_name="eu-west-1").get_dashboard(
        DashboardName=published["dashboard"])["DashboardBody"])
    assert {w["properties"]["region"] for w in body["widgets"] if "region" in w["properties"]} == {"eu-west-1"}


# ------------------------------------------------------------------------------------ CloudWatch is away
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cloudwatch_warns_once_and_never_raises(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    sink = cw.CloudWatchSink()
    t0 = time.monotonic()
    for status in ("RUNNING", "SUCCEEDED"):
        final = _final(status=status)
        sink.send(final)
        sink.send(emf(final))
    sink.close()
    assert time.monotonic() - t0 < 15
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("impressions: warning: CloudWatch Logs failed (")
    assert not sink.enabled


def test_no_region_warns_in_the_sink_and_is_a_usage_error_for_the_dashboard(monkeypatch, capsys, tmp_path):
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    sink = cw.CloudWatchSink()
    sink.send(_final())
    assert not sink.enabled and "NoRegionError" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no AWS region"):
        cw.publish_dashboard()


# ------------------------------------------------------------------------------------- dashboard (name)
def test_publish_dashboard_round_trip(s3_endpoint):
    name = f"impressions-{uuid.uuid4().hex[:6]}"
    with dask.config.set({"impressions.cloudwatch.dashboard": name,
                          "impressions.cloudwatch.log-group": "/custom/group"}):
        out = cw.publish_dashboard()
    assert out["dashboard"] == name and out["validation"] == []
    assert out["url"].endswith(f"#dashboards:name={name}")
    body = json.loads(boto3.client("cloudwatch").get_dashboard(DashboardName=name)["DashboardBody"])
    assert body == queries.dashboard_body("us-east-1", "/custom/group", "Impressions")
    assert all("SOURCE '/custom/group' | " in w["properties"]["query"] for w in body["widgets"] if w["type"] == "log")


def test_publish_failure_is_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(cw.PublishError) as e:
        cw.publish_dashboard("board")
    assert "PutDashboard 'board' in us-east-1 failed" in str(e.value) and "\n" not in str(e.value)


def test_queries_module_prints_the_body_for_a_template():
    r = subprocess.run([sys.executable, "-m", "pipeline.report.queries", "--region", "${AWS::Region}",
                        "--log-group", "/aws/batch/impressions"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body == queries.dashboard_body("${AWS::Region}", "/aws/batch/impressions", "Impressions")
    assert r.stdout.count("${") == sum(1 for w in body["widgets"] if "region" in w["properties"])  # Fn::Sub-safe


# -------------------------------------------------------------------------------- queries vs. line schemas
INSIGHTS_WORDS = {"fields", "filter", "stats", "sort", "limit", "by", "as", "desc", "asc", "and", "or", "not",
                  "in", "like"}


def referenced_fields(query: str) -> set[str]:
    """The log fields an Insights query reads: identifiers that are not keywords, functions or aliases."""
    q = re.sub(r'"[^"]*"|\'[^\']*\'', "''", query)
    aliases = set(re.findall(r"\bas\s+([A-Za-z_][\w.]*)", q))
    functions = set(re.findall(r"([A-Za-z_]\w*)\s*\(", q))
    names = set(re.findall(r"(?<![\w@.])[A-Za-z_][\w.]*", q))
    return names - INSIGHTS_WORDS - aliases - functions


def _flat(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_the_field_extractor_reads_what_it_should():
    assert referenced_fields('filter event = "x and y" | stats sum(quarantine.bad_date) as q, max(@timestamp) '
                             'as t by table | sort q desc') == {"event", "quarantine.bad_date", "table"}


def test_line_schemas_are_what_the_builders_make():
    status = _flat(_final(quarantine={r: 1 for r in queries.QUARANTINE_REASONS}))  # any reason may occur
    failed = _flat(Load("join", "impressions.fact_joined", "join-1").record("FAILED", error="boom", orphans=3))
    assert queries.LINES["load_status"] - status - failed == set()
    line = queries.file_rows_line("l", "partition", "impressions.t", "s3://b/f.parquet", 5, 10, "2019-01-01", 3)
    assert set(line) == queries.LINES["file_rows"] and line["event"] == "file_rows"
    assert json.loads(json.dumps(line)) == line


@pytest.mark.parametrize("name", sorted(queries.INSIGHTS))
def test_every_insights_query_reads_fields_its_line_has(name):
    event, query = queries.INSIGHTS[name]
    assert query.startswith(f'filter event = "{event}"')
    missing = referenced_fields(query) - queries.LINES[event]
    assert not missing, f"{name} reads fields no {event} line carries: {sorted(missing)}"
    assert "SOURCE '/g' | " + query == queries.insights(name, "/g")


def test_quarantine_reasons_are_the_documented_ones():
    doc = (ROOT / "docs" / "interface.md").read_text()
    documented = re.search(r"Reasons: (.*?)\.\n", doc, re.S).group(1)
    assert tuple(re.findall(r"`(\w+)`", documented)) == queries.QUARANTINE_REASONS


def test_metric_widgets_use_the_emf_names_and_dimensions():
    directive = emf(_final(orphans=3, files_rewritten=2, bytes_rewritten=9))["_aws"]["CloudWatchMetrics"][0]
    assert [list(d) for d in queries.DIMENSIONS] == directive["Dimensions"]
    names = {m["Name"] for m in directive["Metrics"]}
    used = {m for series in queries.METRIC_WIDGETS.values() for m, _, _ in series}
    assert used - names <= {"vp_mean"}                      # vp_mean: see the strict xfail below
    body = queries.dashboard_body("us-east-1", "/g", "Impressions")
    expressions = [m[0]["expression"] for w in body["widgets"] if w["type"] == "metric"
                   for m in w["properties"]["metrics"]]
    assert "SEARCH('{Impressions,stage,table,status} MetricName=\"seconds\" status=\"FAILED\"', " \
           "'SampleCount', 3600)" in expressions
    for e in expressions:
        assert "load_id" not in e and "path" not in e
    assert queries.metric_search("My App", "rows_read", "Sum").startswith("SEARCH('{\"My App\",stage,table} ")


def test_vp_mean_is_an_emf_metric():
    assert "vp_mean" in {m["Name"] for m in emf(_final())["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


def test_dashboard_body_layout():
    body = queries.dashboard_body("us-east-1", "/g", "Impressions")
    assert json.loads(json.dumps(body)) == body
    assert len(json.dumps(body)) < 1_000_000                # PutDashboard's body limit is 1 MB
    for w in body["widgets"]:
        assert 0 <= w["x"] and w["x"] + w["width"] <= 24 and w["height"] > 0
    titles = [w["properties"].get("title") for w in body["widgets"]]
    for wanted in ("Loads: latest status", "Failed loads", "Quarantined rows by reason", "viewing_percentage mean",
                   "viewing_percentage stddev (population, exact)", "Rows per load"):
        assert wanted in titles
