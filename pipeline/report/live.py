"""The impressions page of the Dask dashboard: the running load's stage, progress and counts, live.

Built only from what distributed supports publicly:

- a `SchedulerPlugin` (`LoadStatusPlugin`) whose ``log_event`` hook folds the events of topic ``impressions``
  into the latest state of each load. Events come from the driver (``Client.log_event``) and from tasks
  (``get_worker().log_event``): `publish(client, event)` sends one;
- HTTP routes on the scheduler's dashboard server, from the ``distributed.scheduler.http.routes`` setting
  (this module is listed there, and its ``routes`` are mounted): ``/impressions/status.json`` (the state as
  JSON) and ``/impressions`` (a self-contained HTML page polling that JSON every 2 s).

`scheduler_config()` is the dask config to set *before* a scheduler starts (routes + a preload that registers
the plugin at start); `scheduler_env()` is the same as environment variables for ``dask scheduler``. For a
scheduler started without it, `install(client)` registers the plugin (events already sent are replayed from
the scheduler's event log); the page itself needs the routes, which exist only if set before the start.

An event is a flat dict, usually a status line (``load_id``, ``stage``, ``table``, ``status``, counts) or a
progress update ``{"load_id", "stage", "label", "done", "total", "unit"}``; later events of a load update the
earlier ones field by field. The dashboard has no authentication: reach it through an SSH/SSM tunnel.
"""
from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict, deque

import dask.config
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.http.utils import RequestHandler

TOPIC = "impressions"
PLUGIN_NAME = "impressions-live"
MODULE = __name__
PAGE = "impressions"
ROUTES_KEY = "distributed.scheduler.http.routes"
PRELOAD_KEY = "distributed.scheduler.preload"


class LoadStatusPlugin(SchedulerPlugin):
    """Latest state of each load from the ``impressions`` events, kept on the scheduler (bounded)."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, keep_loads: int = 100, keep_events: int = 200):
        self.keep_loads = keep_loads
        self.loads: OrderedDict[str, dict] = OrderedDict()
        self.events: deque = deque(maxlen=keep_events)
        self.scheduler = None

    def attach(self, scheduler) -> None:
        """Bind to the scheduler and replay the events it logged before this plugin existed."""
        if self.scheduler is None:
            self.scheduler = scheduler
            for when, msg in scheduler.get_events(TOPIC):
                self.fold(msg, when)

    async def start(self, scheduler) -> None:
        self.attach(scheduler)

    def log_event(self, topic: str, msg) -> None:
        if topic == TOPIC:
            self.fold(msg, time.time())

    def fold(self, msg, when: float) -> None:
        if not isinstance(msg, dict):
            return
        self.events.append({"time": when, **msg})
        key = str(msg.get("load_id") or "-")
        state = self.loads.pop(key, {"load_id": key, "first_seen": when})
        state.update(msg)
        state["updated"] = when
        self.loads[key] = state                       # most recently updated last
        while len(self.loads) > self.keep_loads:
            self.loads.popitem(last=False)

    def snapshot(self) -> dict:
        """What ``/impressions/status.json`` serves: loads newest first, the running one, recent events."""
        loads = list(reversed(self.loads.values()))
        running = next((s for s in loads if s.get("status") == "RUNNING"), None)
        out = {"now": time.time(), "current": running, "loads": loads, "events": list(reversed(self.events))[:50]}
        s = self.scheduler
        if s is not None:
            out["cluster"] = {"workers": len(s.workers), "threads": sum(ws.nthreads for ws in s.workers.values()),
                              "tasks": len(s.tasks),
                              "processing": sum(len(ws.processing) for ws in s.workers.values())}
        return out


def _plugin(scheduler) -> LoadStatusPlugin:
    """The scheduler's plugin, registered now if nobody did (events so far are replayed)."""
    plugin = scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        plugin = LoadStatusPlugin()
        plugin.attach(scheduler)
        scheduler.add_plugin(plugin, name=PLUGIN_NAME, idempotent=True)
    return plugin


# ------------------------------------------------------------------------------------------------ HTTP
class StatusJSON(RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(_plugin(self.server).snapshot(), default=str))


class StatusPage(RequestHandler):
    def get(self):
        _plugin(self.server)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(PAGE_HTML)


routes = [(f"{PAGE}/status.json", StatusJSON, {}), (f"{PAGE}/?", StatusPage, {})]


def dask_setup(scheduler) -> None:
    """Preload hook: the plugin is there from the scheduler's start, so no early event is missed."""
    _plugin(scheduler)


# ---------------------------------------------------------------------------------------- set-up, use
def scheduler_config() -> dict:
    """The dask config to set before a scheduler starts: this module's routes and preload added to the rest.

    ``with dask.config.set(live.scheduler_config()): LocalCluster(...)``, or ``Scheduler(...)`` likewise.
    """
    routes_now = list(dask.config.get(ROUTES_KEY, default=[]) or [])
    preload_now = list(dask.config.get(PRELOAD_KEY, default=[]) or [])
    return {ROUTES_KEY: routes_now + [MODULE] * (MODULE not in routes_now),
            PRELOAD_KEY: preload_now + [MODULE] * (MODULE not in preload_now)}


def scheduler_env() -> dict[str, str]:
    """The same as environment variables, for a scheduler started by ``dask scheduler`` (same image)."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): repr(value)
            for key, value in scheduler_config().items()}


def _served(dask_scheduler=None) -> bool:
    app = getattr(dask_scheduler, "http_application", None)
    rules = getattr(getattr(app, "wildcard_router", None), "rules", [])
    return any(getattr(r, "target", None) is StatusJSON for r in rules)


def _register(dask_scheduler=None) -> None:
    _plugin(dask_scheduler)


def install(client) -> str | None:
    """Register the plugin on the client's scheduler (idempotent); the page's URL, or None without routes."""
    client.run_on_scheduler(_register)
    if not client.run_on_scheduler(_served):
        return None
    return page_url(client)


def page_url(client) -> str | None:
    """The impressions page next to the client's dashboard link."""
    link = client.dashboard_link
    if not link:
        return None
    base = link[: -len("status")] if link.endswith("/status") else link.rstrip("/") + "/"
    return base + PAGE


_warned = False


def publish(client, event: dict) -> None:
    """Send one event to the page (client=None: from inside a task, through its worker). Never raises."""
    global _warned
    msg = json.loads(json.dumps(event, default=str))  # plain, msgpack-able values
    try:
        if client is None:
            from distributed import get_worker

            get_worker().log_event(TOPIC, msg)
        else:
            client.log_event(TOPIC, msg)
    except Exception as e:  # noqa: BLE001 - the live page never fails a load
        if not _warned:
            _warned = True
            sys.stderr.write(f"impressions: warning: live status not sent ({type(e).__name__}: {e})\n")


class LiveSink:
    """A reporting sink (loads.reporting): status lines and progress of this client's loads, to the page."""

    def __init__(self, client):
        self.client, self.current = client, None

    def send(self, line: dict) -> None:
        if line.get("event") == "load_status":
            self.current = {k: line.get(k) for k in ("load_id", "stage", "table")}
            publish(self.client, line)
        elif line.get("event") == "progress" and self.current:
            publish(self.client, {**self.current, **{k: v for k, v in line.items() if k != "event"}})


PAGE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>impressions: loads</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
 h1{font-size:1.3em;margin:0 0 .2em} .muted{color:#777} .card{border:1px solid #ddd;border-radius:6px;padding:1em;
 margin:1em 0;max-width:60em} progress{width:100%;height:1.2em}
 table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #eee;padding:.3em .6em;text-align:left}
 td.n{text-align:right;font-variant-numeric:tabular-nums}
 .RUNNING{color:#1f6feb}.SUCCEEDED{color:#1a7f37}.FAILED{color:#cf222e;font-weight:bold}.SKIPPED{color:#777}
</style></head>
<body>
<h1>impressions: loads</h1>
<div class="muted"><a id="dask" href="#">Dask status</a> · <span id="cluster"></span> · updated <span id="updated">never</span></div>
<div class="card" id="current"><span class="muted">no load running</span></div>
<table><thead><tr><th>load</th><th>stage</th><th>table</th><th>status</th><th>progress</th><th>rows read</th>
<th>rows written</th><th>quarantined</th><th>files</th><th>seconds</th><th>error</th></tr></thead>
<tbody id="loads"></tbody></table>
<script>
"use strict";
const base = location.pathname.replace(/\\/?$/, "/");
document.getElementById("dask").href = base + "../status";
const fmt = v => (v === undefined || v === null) ? "" : (typeof v === "number" ? v.toLocaleString("en-US") : String(v));
function cell(row, value, cls) { const td = row.insertCell(); td.textContent = fmt(value); if (cls) td.className = cls; }
function progressText(s) {
  if (s.total === undefined || s.total === null) return "";
  const pct = s.total ? Math.floor(100 * s.done / s.total) : 100;
  return (s.label || "") + " " + fmt(s.done) + "/" + fmt(s.total) + " " + (s.unit || "") + " (" + pct + "%)";
}
function render(state) {
  const cur = document.getElementById("current");
  cur.replaceChildren();
  const c = state.current;
  if (!c) { const s = document.createElement("span"); s.className = "muted"; s.textContent = "no load running"; cur.append(s); }
  else {
    const h = document.createElement("div");
    h.textContent = (c.stage || "") + " → " + (c.table || "") + " (" + c.load_id + "): " + (c.status || "");
    const p = document.createElement("progress"); p.id = "bar";
    if (c.total) { p.max = c.total; p.value = c.done || 0; }
    const t = document.createElement("div"); t.id = "progress-text"; t.textContent = progressText(c);
    cur.append(h, p, t);
  }
  const tb = document.getElementById("loads");
  tb.replaceChildren();
  for (const s of state.loads) {
    const r = tb.insertRow(); r.dataset.loadId = s.load_id;
    cell(r, s.load_id); cell(r, s.stage); cell(r, s.table); cell(r, s.status, s.status); cell(r, progressText(s));
    cell(r, s.rows_read, "n"); cell(r, s.rows_written, "n"); cell(r, s.rows_quarantined, "n");
    cell(r, s.files_written, "n"); cell(r, s.seconds, "n"); cell(r, s.error, "FAILED");
  }
  const k = state.cluster;
  document.getElementById("cluster").textContent = k ? k.workers + " workers, " + k.threads + " threads, " +
    k.processing + " tasks processing" : "";
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  window.impressionsState = state;
}
async function poll() {
  try { const r = await fetch(base + "status.json", {cache: "no-store"}); if (r.ok) render(await r.json()); }
  catch (e) { document.getElementById("updated").textContent = "unreachable"; }
  setTimeout(poll, 2000);
}
poll();
</script></body></html>
"""
