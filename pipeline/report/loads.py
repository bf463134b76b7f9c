"""Loads: their ids, their records, and the status lines they print.

stdout carries JSON lines only (status lines, EMF lines, and with --json the result as the last line); human
text goes to stderr. A load id is derived from the stage, the target table and the sources' fingerprints, so
rerunning the same load is recognised and never appends twice.

Every line printed also goes to the *sinks* the command set up with `reporting(...)` — CloudWatch, the live Dask
page, the durable load history — each of which picks the lines it wants and never fails a load. `detail` lines
(one per data file) go to the sinks, and to stdout only on AWS Batch, where stdout is how lines reach CloudWatch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NoReturn

import dask.config

from ..errors import Interrupted, LoadError, UsageError

EMF_NAMESPACE = "Impressions"


def load_id(stage: str, table: str, fingerprints: list[str]) -> str:
    raw = json.dumps([stage, table, sorted(fingerprints)]).encode()
    return f"{stage}-{hashlib.sha256(raw).hexdigest()[:16]}"


_SINKS: ContextVar[tuple] = ContextVar("impressions_sinks", default=())


@contextlib.contextmanager
def reporting(*sinks):
    """Send every emitted line to these sinks too (objects with `send(line)`), for the duration of a command."""
    token = _SINKS.set(_SINKS.get() + tuple(s for s in sinks if s is not None))
    try:
        yield
    finally:
        _SINKS.reset(token)


def emit(obj: dict, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, default=str, separators=(", ", ": ")) + "\n")
    stream.flush()
    for sink in _SINKS.get():
        sink.send(obj)


def notify(obj: dict) -> None:
    """An event for the sinks only (progress for the live page): never on stdout."""
    for sink in _SINKS.get():
        sink.send(obj)


def detail(obj: dict) -> None:
    """A line for the sinks (and, on AWS Batch, for CloudWatch through stdout) but not for a person's terminal."""
    if os.environ.get("AWS_BATCH_JOB_ID"):
        emit(obj)
    else:
        notify(obj)


def say(text: str) -> None:
    """Human-readable progress on stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@dataclass
class Load:
    """The record of one stage run; `status()` prints a status line, `finish()` the final one and EMF."""

    stage: str
    table: str
    load_id: str
    sources: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    fields: dict = field(default_factory=dict)
    run_id: str = ""  # this run of the load: two runs of one load id on one cluster never share state

    started_at: str = ""

    def __post_init__(self):
        self.run_id = self.run_id or f"{self.load_id}.{uuid.uuid4().hex[:8]}"
        self.started_at = self.started_at or _now()

    def record(self, status: str, **extra) -> dict:
        rec = {"event": "load_status", "load_id": self.load_id, "stage": self.stage, "table": self.table,
               "status": status, "run_id": self.run_id, "started": self.started_at,
               "sources": [s.get("path") for s in self.sources if s] if self.sources else []}
        rec.update(self.fields)
        rec.update(extra)
        if status != "RUNNING":
            rec["finished"] = _now()
        rec["seconds"] = round(time.monotonic() - self.started, 3)
        return rec

    def status(self, status: str, **extra) -> dict:
        rec = self.record(status, **extra)
        emit(rec)
        return rec

    def finish(self, status: str, **extra) -> dict:
        self.fields.update(extra)
        rec = self.status(status)
        emit(emf(rec))
        return rec


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emf(rec: dict) -> dict:
    """The final statistics of a load as one CloudWatch Embedded Metric Format line.

    Dimensions stay low-cardinality (stage, table, status); load_id travels as a plain field.
    """
    metrics = {k: rec[k] for k in ("rows_read", "rows_written", "rows_quarantined", "files_written",
                                   "bytes_written", "seconds", "vp_mean", "vp_std", "orphans", "files_rewritten",
                                   "bytes_rewritten") if isinstance(rec.get(k), (int, float))}
    units = {"seconds": "Seconds", "bytes_written": "Bytes", "bytes_rewritten": "Bytes"}
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": dask.config.get("impressions.cloudwatch.namespace", EMF_NAMESPACE),
                "Dimensions": [["stage", "table"], ["stage", "table", "status"]],
                "Metrics": [{"Name": k, "Unit": units.get(k, "None" if k.startswith("vp_") else "Count")}
                            for k in metrics],
            }],
        },
        "event": "load_metrics",
        "stage": rec["stage"], "table": rec["table"], "status": rec["status"], "load_id": rec["load_id"],
        **metrics,
    }


def report_files(load: Load, data_files) -> None:
    """One `file_rows` line per committed data file (the rows-per-file figures of the CloudWatch dashboard)."""
    from datetime import date, timedelta

    from .queries import file_rows_line

    for f in data_files:
        values = list(f.partition) if len(f.partition) else []
        day = values[0] if values else None
        if isinstance(day, int):
            day = date(1970, 1, 1) + timedelta(days=day)
        detail(file_rows_line(load.load_id, load.stage, load.table, f.file_path, f.record_count,
                              f.file_size_in_bytes, day.isoformat() if isinstance(day, date) else day,
                              values[1] if len(values) > 1 else None))


FAILURES = (Exception, Interrupted, KeyboardInterrupt)  # what a stage reports as FAILED before passing it on


def fail(load: Load, e: BaseException) -> NoReturn:
    """Print the load's FAILED status line (and its EMF line), then raise what the CLI maps to an exit code:
    an interrupt stays an interrupt, a usage or load error stays itself, anything else becomes a LoadError."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        load.finish("FAILED", error="interrupted")
        raise e
    from ..storage import translate_error

    e = translate_error(e)  # a storage error becomes one line naming the object (and what the role lacks)
    load.finish("FAILED", error=str(e))
    if isinstance(e, (LoadError, UsageError)):
        raise e
    raise LoadError(f"{type(e).__name__}: {e}") from e
