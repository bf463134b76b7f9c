"""The one CloudWatch adapter: status lines to CloudWatch Logs, final figures to metrics, the dashboard.

For runs outside AWS Batch (``--cloudwatch``), where stdout does not reach CloudWatch by itself. Inside Batch
the awslogs driver already ships stdout, and CloudWatch extracts the EMF line's metrics: do not use both, or
every line and metric arrives twice.

- `CloudWatchSink.send(line)` takes every JSON line the CLI prints. A status line goes to PutLogEvents (a
  ``load_status`` line is sent at once, others are batched); an EMF line (``_aws`` key) is turned into
  PutMetricData with the same metric names, units and dimension sets (`metric_data`), and is *not* sent to
  Logs, where CloudWatch would extract its metrics a second time.
- CloudWatch never fails a load: the first error (endpoint unreachable, no region or credentials, access
  denied, rejected events) prints one warning on stderr and switches the sink off for the rest of the run.
- `publish_dashboard()` does PutDashboard with `queries.dashboard_body`.

Endpoints come from boto3 itself (``AWS_ENDPOINT_URL``), so the tests talk to a loopback server exactly as
production talks to AWS. Settings: ``impressions.cloudwatch.*`` in dask.config (docs/monitoring.md).
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import dask.config

from .. import config as _config  # noqa: F401 - loads the shipped defaults into dask.config
from ..errors import UsageError
from .loads import say
from .queries import LINES, dashboard_body

LOGGED_EVENTS = tuple(LINES)  # the lines the dashboard's queries read
# PutLogEvents limits (CloudWatch Logs quotas): a batch holds at most 10,000 events and 1,048,576 bytes,
# counted as each message's UTF-8 bytes + 26; one event at most 256 KiB; a batch spans at most 24 hours and
# its events are in timestamp order. Sequence tokens are ignored by the service since 2023 and not sent.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 262_144 - EVENT_OVERHEAD
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
FLUSH_SECONDS = 5.0              # lines other than load_status wait at most this long (checked on send)
METRICS_PER_CALL = 20            # within PutMetricData's per-request limit, old or new
HIGH_CARDINALITY = frozenset({"load_id", "path", "file", "source", "sources", "key"})


@dataclass(frozen=True)
class CloudWatchConfig:
    """``impressions.cloudwatch.*``: where the lines, metrics and dashboard go."""

    log_group: str
    stream_prefix: str
    namespace: str
    dashboard: str
    region: str | None

    @classmethod
    def from_dask(cls) -> "CloudWatchConfig":
        def get(key):
            return dask.config.get(f"impressions.cloudwatch.{key}")

        cfg = cls(log_group=str(get("log-group")), stream_prefix=str(get("stream-prefix")),
                  namespace=str(get("namespace")), dashboard=str(get("dashboard")),
                  region=get("region") or None)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not re.fullmatch(r"[.\-_/#A-Za-z0-9]{1,512}", self.log_group):
            raise UsageError(f"impressions.cloudwatch.log-group: not a log group name: {self.log_group!r}")
        if not self.stream_prefix or len(self.stream_prefix) > 400 or re.search(r"[:*]", self.stream_prefix):
            raise UsageError("impressions.cloudwatch.stream-prefix: 1-400 characters, no ':' or '*', got "
                             f"{self.stream_prefix!r}")
        if not self.namespace or len(self.namespace) > 255 or self.namespace.startswith("AWS/"):
            raise UsageError(f"impressions.cloudwatch.namespace: 1-255 characters, not AWS/…, got "
                             f"{self.namespace!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.dashboard):
            raise UsageError(f"impressions.cloudwatch.dashboard: letters, digits, '-' and '_' only, got "
                             f"{self.dashboard!r}")
        if self.region is not None and not re.fullmatch(r"[a-z0-9-]{2,40}", self.region):
            raise UsageError(f"impressions.cloudwatch.region: not a region name: {self.region!r}")

    def stream_name(self) -> str:
        """One stream per process: prefix/host/UTC start time-pid."""
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
        host = re.sub(r"[:*]", "-", socket.gethostname())
        return f"{self.stream_prefix}/{host}/{started}-{os.getpid()}"


def _client(service: str, region: str | None):
    """A boto3 client with short timeouts and few retries: monitoring must not stall a load for minutes."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
    return boto3.session.Session(region_name=region).client(service, config=cfg)


# ------------------------------------------------------------------------------------------- pure parts
def log_message(line: dict) -> str:
    """A line as the message of one log event (an oversized line is replaced by a short note)."""
    text = json.dumps(line, default=str, separators=(", ", ": "))
    if len(text.encode()) <= MAX_EVENT_BYTES:
        return text
    keep = {k: line[k] for k in ("event", "load_id", "stage", "table", "status") if k in line}
    return json.dumps({**keep, "truncated": True, "bytes": len(text.encode())})


def batches(events: list[dict]) -> list[list[dict]]:
    """Events ({timestamp, message}) in timestamp order, cut into batches PutLogEvents accepts."""
    out: list[list[dict]] = []
    size = 0
    for ev in sorted(events, key=lambda e: e["timestamp"]):
        n = len(ev["message"].encode()) + EVENT_OVERHEAD
        if (not out or len(out[-1]) >= MAX_BATCH_EVENTS or size + n > MAX_BATCH_BYTES
                or ev["timestamp"] - out[-1][0]["timestamp"] > MAX_BATCH_SPAN_MS):
            out.append([])
            size = 0
        out[-1].append(ev)
        size += n
    return out


def metric_data(emf_line: dict) -> list[dict]:
    """The PutMetricData entries equal to an EMF line: each metric under each of its dimension sets."""
    aws = emf_line["_aws"]
    when = datetime.fromtimestamp(aws["Timestamp"] / 1000, tz=timezone.utc)
    out = []
    for directive in aws["CloudWatchMetrics"]:
        for dims in directive["Dimensions"]:
            bad = HIGH_CARDINALITY.intersection(dims)
            if bad:
                raise ValueError(f"high-cardinality dimension(s) {sorted(bad)}: every value is a billed metric")
            dimensions = [{"Name": d, "Value": str(emf_line[d])} for d in dims]
            for m in directive["Metrics"]:
                value = emf_line.get(m["Name"])
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                        or value in (float("inf"), float("-inf")):
                    continue
                out.append({"MetricName": m["Name"], "Dimensions": dimensions, "Timestamp": when,
                            "Value": float(value), "Unit": m.get("Unit", "None")})
    return out


# ------------------------------------------------------------------------------------------------ sink
class CloudWatchSink:
    """Sends the JSON lines of a run to CloudWatch Logs and its EMF figures to CloudWatch metrics.

    ``sink = CloudWatchSink()`` (settings from dask.config), then ``sink.send(line)`` for every line printed
    and ``sink.close()`` at the end (or use it as a context manager). Never raises for CloudWatch's sake.
    """

    def __init__(self, config: CloudWatchConfig | None = None, stream: str | None = None):
        self.config = config or CloudWatchConfig.from_dask()
        self.stream = stream or self.config.stream_name()
        self.enabled = True
        self.sent_events = 0
        self.sent_metrics = 0
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._stream_ready = False
        self._logs = self._metrics = None

    # -------------------------------------------------------------------------------------- interface
    def send(self, line: dict) -> None:
        """One JSON line: an EMF line becomes metrics, any other line a log event."""
        if not self.enabled:
            return
        if "_aws" in line:
            self._put_metrics(line)
            return
        if line.get("event") not in LOGGED_EVENTS:  # progress, command results: stdout and the live page only
            return
        self._pending.append({"timestamp": int(time.time() * 1000), "message": log_message(line)})
        if line.get("event") == "load_status" or len(self._pending) >= MAX_BATCH_EVENTS \
                or time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def put_metrics(self, final_record: dict) -> None:
        """A finished load's record as metrics (the same as sending its EMF line)."""
        from .loads import emf

        self.send(emf(final_record))

    def flush(self) -> None:
        """Send the pending log events now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending or not self.enabled:
            return
        try:
            self._ensure_stream()
            for batch in batches(pending):
                self._put_batch(batch)
        except Exception as e:  # noqa: BLE001 - CloudWatch never fails a load
            self._fail("CloudWatch Logs", e)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "CloudWatchSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- internals
    def _fail(self, what: str, e: Exception) -> None:
        if self.enabled:
            say(f"impressions: warning: {what} failed ({type(e).__name__}: {e}); "
                "continuing without CloudWatch (the lines stay on stdout)")
        self.enabled = False
        self._pending = []

    def _logs_client(self):
        if self._logs is None:
            self._logs = _client("logs", self.config.region)
        return self._logs

    def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        logs = self._logs_client()
        try:
            logs.create_log_stream(logGroupName=self.config.log_group, logStreamName=self.stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        except logs.exceptions.ResourceNotFoundException:  # no group yet (none made by the infrastructure)
            try:
                logs.create_log_group(logGroupName=self.config.log_group)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
            logs.create_log_stream(logGroupName=self.config.log_group, logStreamName=self.stream)
        self._stream_ready = True

    def _put_batch(self, batch: list[dict]) -> None:
        resp = self._logs_client().put_log_events(logGroupName=self.config.log_group,
                                                  logStreamName=self.stream, logEvents=batch)
        rejected = resp.get("rejectedLogEventsInfo")
        if rejected:
            raise RuntimeError(f"events rejected: {rejected}")
        self.sent_events += len(batch)

    def _put_metrics(self, emf_line: dict) -> None:
        try:
            data = metric_data(emf_line)
            if self._metrics is None:
                self._metrics = _client("cloudwatch", self.config.region)
            for i in range(0, len(data), METRICS_PER_CALL):
                self._metrics.put_metric_data(Namespace=self.config.namespace,
                                              MetricData=data[i:i + METRICS_PER_CALL])
            self.sent_metrics += len(data)
        except Exception as e:  # noqa: BLE001 - CloudWatch never fails a load
            self._fail("CloudWatch metrics", e)


# ------------------------------------------------------------------------------------------- dashboard
class PublishError(Exception):
    """PutDashboard failed (the message names the dashboard and the reason)."""


def resolve_region(region: str | None = None) -> str:
    """The region given, configured, or boto3's own (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    import boto3

    region = region or CloudWatchConfig.from_dask().region or boto3.session.Session().region_name
    if not region:
        raise UsageError("no AWS region: set impressions.cloudwatch.region or AWS_REGION")
    return region


def publish_dashboard(name: str | None = None, *, region: str | None = None, log_group: str | None = None,
                      namespace: str | None = None) -> dict:
    """PutDashboard with `queries.dashboard_body`; returns {dashboard, region, url, validation messages}.

    Arguments left out come from ``impressions.cloudwatch.*``. A bad setting is a UsageError; a refused or
    failed call a PublishError with one readable line.
    """
    cfg = CloudWatchConfig.from_dask()
    name, region = name or cfg.dashboard, resolve_region(region)
    CloudWatchConfig(log_group or cfg.log_group, cfg.stream_prefix, namespace or cfg.namespace, name,
                     region).validate()
    body = dashboard_body(region, log_group or cfg.log_group, namespace or cfg.namespace)
    try:
        resp = _client("cloudwatch", region).put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    except Exception as e:  # noqa: BLE001 - one readable line for the CLI
        raise PublishError(f"PutDashboard {name!r} in {region} failed: {type(e).__name__}: {e}") from None
    messages = [m.get("Message", str(m)) for m in resp.get("DashboardValidationMessages", [])]
    return {"dashboard": name, "region": region, "widgets": len(body["widgets"]), "validation": messages,
            "url": f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name={name}"}
