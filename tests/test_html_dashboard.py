"""The HTML dashboard, opened in a real headless Chromium: it renders offline without console errors and shows
the data it was given -- read back from the page's Bokeh document (its named data sources and Div texts), not
from pixels. Bokeh 3 draws tables in shadow DOM, so CSS selectors would be fragile; the document is the truth.

Chromium is driven through the DevTools protocol over a websocket (tornado's client, already installed with
distributed), so no driver or extra Python package is needed. When `chromium` is missing, the session installs
it with apt-get (Debian; CI runs as root on bookworm); elsewhere the browser tests are skipped with the reason.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.report import stats
from pipeline.report.html import (DashboardDataError, dashboard_html, histogram, quarantine_columns,
                                  render_dashboard, validate)

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
                  "--disable-extensions", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


# ------------------------------------------------------------------------------------------------ browser
def _find_chromium() -> str | None:
    return os.environ.get("IMPRESSIONS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; installed once with apt-get (Debian package `chromium`) when missing."""
    found = _find_chromium()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("no chromium, and no root apt-get to install it (Debian: apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:                       # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = _find_chromium()
    if r.returncode != 0 or not found:
        pytest.fail(f"apt-get could not install chromium: {(r.stderr or r.stdout)[-800:]}")
    return found


class Browser:
    """One headless Chromium; `visit(url, ready_js, extract_js)` returns what the page reports and logged."""

    def __init__(self, binary: str, profile: Path):
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file, t0 = profile / "DevToolsActivePort", time.monotonic()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() - t0 > 60:
                self.close()
                raise RuntimeError(f"chromium did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def visit(self, url: str, ready_js: str, extract_js: str, timeout: float = 30) -> dict:
        return asyncio.run(self._visit(url, ready_js, extract_js, timeout))

    async def _visit(self, url, ready_js, extract_js, timeout) -> dict:
        from tornado.websocket import websocket_connect

        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10))
        ws = await websocket_connect(next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"),
                                     max_message_size=256 << 20)
        events: list[dict] = []
        ids = iter(range(1, 1 << 30))

        async def call(method, **params):
            n = next(ids)
            ws.write_message(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.read_message(), timeout))
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]
                events.append(msg)

        async def evaluate(js):
            r = await call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
            if "exceptionDetails" in r:
                raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
            return r["result"].get("value")

        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            t0 = time.monotonic()
            while not await evaluate(ready_js):
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"{url} not ready after {timeout} s")
                await asyncio.sleep(0.1)
            value = await evaluate(extract_js)
        finally:
            ws.close()
        kinds = {"Runtime.consoleAPICalled": lambda p: (p["type"], " ".join(str(a.get("value", a.get(
                    "description", ""))) for a in p["args"])),
                 "Runtime.exceptionThrown": lambda p: ("exception", json.dumps(p["exceptionDetails"])[:2000]),
                 "Log.entryAdded": lambda p: (p["entry"]["level"], p["entry"]["text"])}
        console = [kinds[e["method"]](e["params"]) for e in events if e.get("method") in kinds]
        requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        return {"value": value, "console": console, "requests": requests}


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    b = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


BOKEH_READY = "!!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle)"
# every named data source and Div of the document, columns as plain arrays; and the canvases drawn
BOKEH_EXTRACT = """(() => {
  const doc = Bokeh.documents[0], sources = {}, divs = {};
  for (const m of doc.all_models) {
    if (!m.name) continue;
    if (m.data !== undefined) {
      const cols = {};
      for (const [k, v] of Object.entries(m.data)) cols[k] = Array.from(v, x => (typeof x === "number" && isNaN(x)) ? null : x);
      sources[m.name] = cols;
    } else if (typeof m.text === "string") divs[m.name] = m.text;
  }
  const canvases = [];
  (function walk(root) {
    for (const e of root.querySelectorAll("*")) {
      if (e.tagName === "CANVAS" && e.width > 0 && e.height > 0) canvases.push(e.width);
      if (e.shadowRoot) walk(e.shadowRoot);
    }
  })(document);
  return JSON.stringify({sources, divs, canvases: canvases.length, title: document.title});
})()"""


def problems(result: dict) -> list:
    """Console errors, warnings and exceptions (Bokeh's own info lines are fine)."""
    return [c for c in result["console"] if c[0] in ("error", "warning", "exception", "assert")]


# --------------------------------------------------------------------------------------------- test data
def realistic_data(seed: int = 7) -> dict:
    """Loads as `loads --json` gives them (newest first, one FAILED) and two tables whose `stats` objects are
    computed from per-file viewing_percentage values with the pipeline's own statistics."""
    rng = random.Random(seed)
    tables, loads = [], []
    t0 = 1_795_680_000_000
    for ti, name in enumerate(("impressions.fact_partitioned", "impressions.fact_updated")):
        files, parts, moments = [], [], []
        for day in range(1, 4):
            for bucket in (0, 3, 7):
                n_files = rng.randint(1, 3)
                rows_here = bytes_here = 0
                for k in range(n_files):
                    values = [rng.betavariate(2, 9) for _ in range(rng.randint(50, 400))]
                    moments.append(stats.chunk(values))
                    path = f"s3://warehouse/{name.split('.')[1]}/data/ad_date=2019-01-0{day}/" \
                           f"campaign_id_bucket={bucket}/{ti}{day}{bucket}{k}.parquet"
                    files.append({"path": path, "rows": len(values)})
                    rows_here += len(values)
                    bytes_here += 40 * len(values) + 900
                parts.append({"ad_date": f"2019-01-0{day}", "bucket": bucket, "files": n_files,
                              "rows": rows_here, "bytes": bytes_here})
        summary = stats.summary(stats.tree_reduce(moments))
        stats_obj = {"table": name, "snapshot_id": 8_000_000_000_000_000_000 + ti, "files": files, **summary}
        history = [{"snapshot_id": 100 + ti * 10 + i, "timestamp_ms": t0 + i * 3_600_000 + ti * 60_000,
                    "operation": op, "load_id": f"{'partition' if ti == 0 else 'update'}-{i:016x}",
                    "files": len(files) - 6 + 3 * i, "rows": summary["rows"] - 900 + 450 * i,
                    "bytes": sum(p["bytes"] for p in parts) - 9000 + 4500 * i}
                   for i, op in enumerate(("append", "append", "overwrite"))]
        tables.append({"table": name, "stats": stats_obj, "partitions": parts, "history": history})

    s0, s1 = tables[0]["stats"], tables[1]["stats"]
    loads = [
        {"load_id": "update-00000000000000f1", "stage": "update", "table": s1["table"], "sources": ["s3://in/u.csv.gz"],
         "status": "FAILED", "started": "2026-11-26T09:40:00Z", "finished": "2026-11-26T09:40:07Z", "seconds": 7.25,
         "rows_read": 0, "rows_written": 0, "rows_quarantined": 0, "quarantine": {}, "files_written": 0,
         "bytes_written": 0, "error": "commit failed: <CommitFailedException> table changed & retry budget spent",
         "vp_mean": None, "vp_std": None},
        {"load_id": "update-00000000000000e0", "stage": "update", "table": s1["table"], "sources": ["s3://in/u.csv.gz"],
         "status": "SUCCEEDED", "started": "2026-11-26T09:30:00Z", "finished": "2026-11-26T09:31:05Z", "seconds": 65.0,
         "rows_read": s1["rows"], "rows_written": s1["rows"], "rows_quarantined": 0, "quarantine": {},
         "files_written": len(s1["files"]), "bytes_written": 812_345, "error": None,
         "vp_mean": s1["vp_mean"], "vp_std": s1["vp_std"], "orphans": 12},
        {"load_id": "partition-00000000000000d0", "stage": "partition", "table": s0["table"],
         "sources": ["s3://in/f.csv.gz"], "status": "SKIPPED", "started": "2026-11-26T09:20:00Z",
         "finished": "2026-11-26T09:20:01Z", "seconds": 0.8, "rows_read": 0, "rows_written": 0,
         "rows_quarantined": 0, "quarantine": {}, "files_written": 0, "bytes_written": 0, "error": None,
         "vp_mean": None, "vp_std": None},
        {"load_id": "partition-00000000000000c0", "stage": "partition", "table": s0["table"],
         "sources": ["s3://in/f.csv.gz"], "status": "SUCCEEDED", "started": "2026-11-26T09:00:00Z",
         "finished": "2026-11-26T09:02:30Z", "seconds": 150.5, "rows_read": s0["rows"] + 9,
         "rows_written": s0["rows"], "rows_quarantined": 9,
         "quarantine": {"bad_date": 4, "field_count": 3, "out_of_range": 2}, "files_written": len(s0["files"]),
         "bytes_written": 934_567, "error": None, "vp_mean": s0["vp_mean"], "vp_std": s0["vp_std"]},
        {"load_id": "partition-00000000000000b0", "stage": "partition", "table": s0["table"],
         "sources": ["s3://in/old.csv.gz"], "status": "ABANDONED", "started": "2026-11-25T22:00:00Z",
         "finished": None, "seconds": None, "rows_read": None, "rows_written": None, "rows_quarantined": None,
         "quarantine": {"bad_date": 100}, "files_written": None, "bytes_written": None, "error": None},
    ]
    return {"generated": "2026-11-26T10:00:00Z", "warehouse": "s3://warehouse", "loads": loads, "tables": tables}


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    data = realistic_data()
    out = render_dashboard(data, str(tmp_path_factory.mktemp("dash") / "sub" / "dashboard.html"))
    result = browser.visit(Path(out).as_uri(), BOKEH_READY, BOKEH_EXTRACT)
    result["data"], result["path"] = data, out
    result["doc"] = json.loads(result["value"])
    return result


# ----------------------------------------------------------------------------------------- in the browser
def test_renders_offline_without_console_errors(page):
    assert problems(page) == []
    assert page["requests"] and all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]
    assert page["doc"]["title"] == "impressions dashboard"
    # every figure drew: 2 (loads, VP) + 1 (quarantine) + 2 per table (histograms) + 2 (history)
    assert page["doc"]["canvases"] >= 2 + 1 + 2 * 2 + 2


def test_loads_with_status_duration_and_errors(page):
    loads, src = page["data"]["loads"], page["doc"]["sources"]["loads"]
    assert src["load_id"] == [ld["load_id"] for ld in loads]                 # newest first
    assert src["status"] == ["FAILED", "SUCCEEDED", "SKIPPED", "SUCCEEDED", "ABANDONED"]
    assert src["duration"][:4] == [7.25, 65.0, 0.8, 150.5] and src["duration"][4] is None
    assert src["color"][0] == "#cf222e"                                     # the FAILED one in red
    assert src["error"][0] == loads[0]["error"]
    failed = page["doc"]["divs"]["failed"]
    assert "1 failed load(s)" in failed and "update-00000000000000f1" in failed
    assert "&lt;CommitFailedException&gt; table changed &amp; retry budget spent" in failed   # escaped, shown
    summary = page["doc"]["divs"]["summary"]
    assert "2 SUCCEEDED" in summary and "1 FAILED" in summary and "s3://warehouse" in summary
    chart = page["doc"]["sources"]["load_chart"]
    assert chart["load_id"] == src["load_id"][::-1]                         # oldest at the bottom


def test_vp_mean_and_stddev_per_load_and_overall_exactly_as_stats(page):
    tables, doc = page["data"]["tables"], page["doc"]["sources"]
    overall = doc["overall"]
    assert overall["table"] == [t["table"] for t in tables]
    for i, t in enumerate(tables):
        for k in ("rows", "vp_mean", "vp_std", "vp_std_sample", "vp_min", "vp_max"):
            assert overall[k][i] == t["stats"][k], k                         # bit for bit, not rounded
        assert overall["vp_std_text"][i] == repr(t["stats"]["vp_std"])     # shown with every digit
        assert overall["files"][i] == len(t["stats"]["files"])
        assert overall["snapshot_id"][i] == str(t["stats"]["snapshot_id"])   # 19 digits survive (a string)
    vp = doc["vp_loads"]
    assert vp["load_id"] == ["partition-00000000000000c0", "update-00000000000000e0"]
    assert vp["vp_std"] == [tables[0]["stats"]["vp_std"], tables[1]["stats"]["vp_std"]]
    assert vp["lower"][0] == tables[0]["stats"]["vp_mean"] - tables[0]["stats"]["vp_std"]


def test_rows_per_file_and_per_partition(page):
    tables, doc = page["data"]["tables"], page["doc"]["sources"]
    files = [(t["table"], f["path"], f["rows"]) for t in tables for f in t["stats"]["files"]]
    assert list(zip(doc["files"]["table"], doc["files"]["path"], doc["files"]["rows"])) == files
    parts = [(t["table"], p["ad_date"], p["bucket"], p["rows"]) for t in tables for p in t["partitions"]]
    assert list(zip(*(doc["partitions"][k] for k in ("table", "ad_date", "bucket", "rows")))) == parts
    for t in tables:
        fh, ph = doc[f"file_hist:{t['table']}"], doc[f"partition_hist:{t['table']}"]
        assert sum(fh["count"]) == len(t["stats"]["files"])
        assert sum(ph["count"]) == len(t["partitions"])
        assert fh["left"][0] == min(f["rows"] for f in t["stats"]["files"])
        assert fh["right"][-1] == max(f["rows"] for f in t["stats"]["files"])


def test_quarantine_by_reason_and_history(page):
    q = page["doc"]["sources"]["quarantine"]
    assert dict(zip(q["reason"], q["rows"])) == {"bad_date": 4, "field_count": 3, "out_of_range": 2}  # SUCCEEDED only
    h = page["doc"]["sources"]["history"]
    expected = [(t["table"], e["timestamp_ms"], e["files"], e["bytes"]) for t in page["data"]["tables"]
                for e in t["history"]]
    assert list(zip(h["table"], h["time"], h["files"], h["bytes"])) == expected


def test_empty_warehouse_renders(browser, tmp_path):
    out = render_dashboard({"generated": None, "loads": [], "tables": []}, str(tmp_path / "empty.html"))
    result = browser.visit(Path(out).as_uri(), BOKEH_READY, BOKEH_EXTRACT)
    assert problems(result) == []
    doc = json.loads(result["value"])
    assert doc["sources"]["loads"]["load_id"] == [] and "No failed loads" in doc["divs"]["failed"]


# ---------------------------------------------------------------------------------------- without browser
def test_the_file_is_self_contained_and_readable(tmp_path):
    out = render_dashboard(realistic_data(), str(tmp_path / "d.html"))
    text = Path(out).read_text()
    assert "<script src=" not in text and "<link " not in text and "cdn.bokeh.org" not in text
    assert 1_000_000 < len(text) < 5_000_000                                 # Bokeh's JS is inside
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o044                        # not mkstemp's private 0600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dashboard-")]


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d["loads"][0].update(status="DONE"), "loads[0].status"),
    (lambda d: d["loads"][1].pop("load_id"), "loads[1].load_id"),
    (lambda d: d["loads"][2].update(started="yesterday"), "loads[2].started"),
    (lambda d: d["loads"][3].update(rows_read="20"), "loads[3].rows_read"),
    (lambda d: d["tables"][0]["stats"].update(vp_std="0.1"), "tables[0].stats.vp_std"),
    (lambda d: d["tables"][1]["stats"]["files"].append({"path": "x"}), "tables[1].stats.files[27]"),
    (lambda d: d["tables"][0]["history"].append({"timestamp_ms": "now"}), "tables[0].history[3]"),
    (lambda d: d.update(loads={}), "loads"),
])
def test_bad_data_is_named(mutate, where):
    data = realistic_data()
    mutate(data)
    if where.startswith("tables[1].stats.files["):
        where = f"tables[1].stats.files[{len(data['tables'][1]['stats']['files']) - 1}]"
    with pytest.raises(DashboardDataError) as e:
        validate(data)
    assert str(e.value).startswith(f"dashboard data: {where}: ")
    with pytest.raises(DashboardDataError):
        dashboard_html(data)


def test_histogram_and_quarantine_helpers():
    assert histogram([]) == {"left": [], "right": [], "count": []}
    assert histogram([5, 5, 5]) == {"left": [4.5], "right": [5.5], "count": [3]}
    h = histogram(list(range(100)), bins=10)
    assert h["count"] == [10] * 10 and h["left"][0] == 0 and h["right"][-1] == 99
    loads = realistic_data()["loads"]
    assert quarantine_columns(loads) == {"reason": ["bad_date", "field_count", "out_of_range"], "rows": [4, 3, 2]}
