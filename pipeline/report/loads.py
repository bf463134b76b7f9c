"""Loads: their ids, their records, and the status lines they print.

stdout carries JSON lines only (status lines, EMF lines, and with --json the result as the last line); human
text goes to stderr. A load id is derived from the stage, the target table and the sources' fingerprints, so
rerunning the same load is recognised and never appends twice.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import Interrupted, LoadError, UsageError

EMF_NAMESPACE = "Impressions"


def load_id(stage: str, table: str, fingerprints: list[str]) -> str:
    raw = json.dumps([stage, table, sorted(fingerprints)]).encode()
    return f"{stage}-{hashlib.sha256(raw).hexdigest()[:16]}"


def emit(obj: dict, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, default=str, separators=(", ", ": ")) + "\n")
    stream.flush()


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

    def __post_init__(self):
        self.run_id = self.run_id or f"{self.load_id}.{uuid.uuid4().hex[:8]}"

    def record(self, status: str, **extra) -> dict:
        rec = {"event": "load_status", "load_id": self.load_id, "stage": self.stage, "table": self.table,
               "status": status}
        rec.update(self.fields)
        rec.update(extra)
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


def emf(rec: dict) -> dict:
    """The final statistics of a load as one CloudWatch Embedded Metric Format line.

    Dimensions stay low-cardinality (stage, table, status); load_id travels as a plain field.
    """
    metrics = {k: rec[k] for k in ("rows_read", "rows_written", "rows_quarantined", "files_written",
                                   "bytes_written", "seconds", "vp_std", "orphans", "files_rewritten",
                                   "bytes_rewritten") if isinstance(rec.get(k), (int, float))}
    units = {"seconds": "Seconds", "bytes_written": "Bytes", "bytes_rewritten": "Bytes"}
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [["stage", "table"], ["stage", "table", "status"]],
                "Metrics": [{"Name": k, "Unit": units.get(k, "Count" if k != "vp_std" else "None")} for k in metrics],
            }],
        },
        "event": "load_metrics",
        "stage": rec["stage"], "table": rec["table"], "status": rec["status"], "load_id": rec["load_id"],
        **metrics,
    }


FAILURES = (Exception, Interrupted, KeyboardInterrupt)  # what a stage reports as FAILED before passing it on


def fail(load: Load, e: BaseException) -> NoReturn:
    """Print the load's FAILED status line (and its EMF line), then raise what the CLI maps to an exit code:
    an interrupt stays an interrupt, a usage or load error stays itself, anything else becomes a LoadError."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        load.finish("FAILED", error="interrupted")
        raise e
    load.finish("FAILED", error=str(e))
    if isinstance(e, (LoadError, UsageError)):
        raise e
    raise LoadError(f"{type(e).__name__}: {e}") from e
