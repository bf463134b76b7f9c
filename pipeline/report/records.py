"""Load records that survive the process: every status change of every load, in an Iceberg table of the warehouse.

`RecordSink` (a reporting sink, see loads.reporting) appends each `load_status` line to the table
`<namespace>.<tables.loads>` with the time, host and process id, and while a load is RUNNING touches a small
heartbeat object under `<warehouse>/_loads/` every `records.heartbeat` seconds. `history` folds the rows into one
record per run, newest first; a run whose last status is RUNNING is `ABANDONED` once its process is gone (same
host) or its heartbeat is older than `records.stale-after`. Writing the history never fails a load: the first
failure is one warning on stderr, and the sink stops.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from ..storage import filesystem
from .loads import say

FINAL = ("SUCCEEDED", "FAILED", "SKIPPED")


def heartbeat_url(warehouse: str, run_id: str) -> str:
    return f"{warehouse.rstrip('/')}/_loads/{run_id}.alive"


class RecordSink:
    """Appends status lines to the load history table; keeps a heartbeat for each RUNNING load."""

    def __init__(self, settings, catalog=None):
        self.settings = settings
        self._catalog = catalog
        self._table = None
        self._beats: dict[str, threading.Event] = {}
        self._failed = False
        self.host, self.pid = socket.gethostname(), os.getpid()

    def send(self, line: dict) -> None:
        if line.get("event") != "load_status" or self._failed:
            return
        run = line.get("run_id") or line["load_id"]
        try:
            from ..table.events import append

            append(self._events(), [{"run_id": run, "load_id": line["load_id"], "stage": line.get("stage"),
                                     "table": line.get("table"), "status": line["status"],
                                     "time": datetime.now(timezone.utc), "host": self.host, "pid": self.pid,
                                     "line": json.dumps(line, default=str)}])
        except Exception as e:  # noqa: BLE001 - the history never fails a load
            self._failed = True
            say(f"warning: the load history could not be written ({type(e).__name__}: {e}); loads go on")
            return
        if line["status"] == "RUNNING" and run not in self._beats:
            self._start_heartbeat(run)
        elif line["status"] in FINAL and run in self._beats:
            self._beats.pop(run).set()

    def close(self) -> None:
        for stop in self._beats.values():
            stop.set()
        self._beats.clear()

    def _events(self):
        if self._table is None:
            from ..table.catalog import open_catalog, table_properties
            from ..table.events import open_events

            catalog = self._catalog or open_catalog(self.settings.warehouse, self.settings.catalog)
            self._table = open_events(catalog, (self.settings.namespace, self.settings.loads_table),
                                      table_properties(self.settings))
        return self._table

    def _start_heartbeat(self, run: str) -> None:
        stop = threading.Event()
        self._beats[run] = stop
        url = heartbeat_url(self.settings.warehouse, run)
        every = self.settings.records.heartbeat

        def beat():
            fs, path = filesystem(url)
            try:
                fs.makedirs(fs._parent(path), exist_ok=True)
                while True:
                    with fs.open(path, "wb") as f:
                        f.write(json.dumps({"host": self.host, "pid": self.pid, "time": time.time()}).encode())
                    if stop.wait(every):
                        fs.rm(path)
                        return
            except Exception:  # noqa: BLE001 - a missing heartbeat only makes a live load look stale later
                return

        threading.Thread(target=beat, name=f"heartbeat-{run}", daemon=True).start()


def history(settings, table: str | None = None, limit: int = 50) -> list[dict]:
    """One record per load run, newest first (the fields of `loads --json`)."""
    from ..table.catalog import open_catalog, qualified, table_name
    from ..table.events import read

    catalog = open_catalog(settings.warehouse, settings.catalog, create=False)
    ident = (settings.namespace, settings.loads_table)
    if not catalog.table_exists(ident):
        return []
    rows = read(catalog.load_table(ident)).to_pylist()
    runs: dict = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        runs.setdefault(r["run_id"], []).append(r)
    want = qualified(table_name(table, settings.namespace)) if table else None
    out = []
    for run_id, events in runs.items():
        first, last = events[0], events[-1]
        line = json.loads(last["line"])
        if want and line.get("table") != want:
            continue
        status = last["status"]
        if status == "RUNNING" and _abandoned(settings, run_id, last):
            status = "ABANDONED"
        rec = {k: v for k, v in line.items() if k not in ("event",)}
        rec.update({"load_id": line["load_id"], "run_id": run_id, "status": status,
                    "started": line.get("started") or _iso(first["time"]),
                    "finished": line.get("finished") if status in FINAL else None,
                    "host": last["host"], "pid": last["pid"]})
        for key in ("rows_read", "rows_written", "rows_quarantined", "files_written", "error"):
            rec.setdefault(key, None)
        rec.setdefault("quarantine", {})
        out.append(rec)
    out.sort(key=lambda r: r["started"] or "", reverse=True)
    return out[:limit] if limit else out


def _abandoned(settings, run_id: str, last: dict) -> bool:
    """The process that wrote the RUNNING line is gone (same host), or its heartbeat is stale."""
    if last["host"] == socket.gethostname() and last["pid"] and not _alive(int(last["pid"])):
        return True
    fs, path = filesystem(heartbeat_url(settings.warehouse, run_id))
    try:
        beat = json.loads(fs.cat_file(path))["time"]
    except (FileNotFoundError, ValueError, KeyError):
        beat = last["time"].timestamp()
    return time.time() - beat > settings.records.stale_after


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(t) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def say_history(records: list[dict]) -> None:
    """The load history for people, on stderr."""
    if not records:
        say("no loads recorded")
        return
    say(f"{'started':24} {'status':10} {'stage':9} {'table':30} {'written':>12} {'quarantined':>11} {'seconds':>8}")
    for r in records:
        say(f"{(r.get('started') or '')[:23]:24} {r['status']:10} {r.get('stage') or '':9} "
            f"{(r.get('table') or '')[:30]:30} {_n(r.get('rows_written')):>12} {_n(r.get('rows_quarantined')):>11} "
            f"{_n(r.get('seconds')):>8}" + (f"  {r['error']}" if r.get("error") else ""))


def _n(v) -> str:
    return "" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if isinstance(v, float) else str(v)
