"""The impressions page of the Dask dashboard, on a real LocalCluster: events sent by the driver and by a task
reach the scheduler plugin; ``/impressions/status.json`` serves them over HTTP on 127.0.0.1; the HTML page
loads, and in headless Chromium it shows them without console errors."""
from __future__ import annotations

import ast
import json
import time
import urllib.request

import dask.config
import pytest
from distributed import Client, LocalCluster

from pipeline.report import live
from test_html_dashboard import Browser, chromium, problems  # noqa: F401 - the session's browser fixture


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def _state(client) -> dict:
    return json.loads(_get(live.page_url(client) + "/status.json")[2])


def _until(check, timeout: float = 15.0):
    t0 = time.monotonic()
    while True:
        value = check()
        if value or time.monotonic() - t0 > timeout:
            return value
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster whose scheduler starts with the impressions routes and plugin (one worker process)."""
    with dask.config.set(live.scheduler_config()):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                               memory_limit="1GiB")
    with cluster, Client(cluster) as c:
        yield c


def test_scheduler_config_adds_to_what_is_there():
    before = dask.config.get(live.ROUTES_KEY)
    cfg = live.scheduler_config()
    assert cfg[live.ROUTES_KEY] == before + [live.MODULE]           # prometheus, json, health... kept
    assert cfg[live.PRELOAD_KEY][-1] == live.MODULE
    with dask.config.set(cfg):
        assert live.scheduler_config() == cfg                       # idempotent
    env = live.scheduler_env()
    assert ast.literal_eval(env["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]) == cfg[live.ROUTES_KEY]
    parsed = dask.config.collect_env(env)                           # what `dask scheduler` would read
    assert parsed["distributed"]["scheduler"]["http"]["routes"] == cfg[live.ROUTES_KEY]
    assert parsed["distributed"]["scheduler"]["preload"] == cfg[live.PRELOAD_KEY]


def test_events_from_driver_and_task_reach_the_json_route(client):
    url = live.install(client)
    assert url == live.page_url(client) and url.startswith("http://127.0.0.1:") and url.endswith("/impressions")
    lid = "partition-live000000000001"
    live.publish(client, {"event": "load_status", "load_id": lid, "stage": "partition",
                          "table": "impressions.fact_partitioned", "status": "RUNNING"})
    live.publish(client, {"load_id": lid, "stage": "partition", "label": "read", "done": 3, "total": 10,
                          "unit": "tasks"})
    state = _state(client)
    assert state["current"]["load_id"] == lid and state["current"]["done"] == 3
    assert state["cluster"]["workers"] == 1

    def from_task(load_id):
        live.publish(None, {"load_id": load_id, "label": "read", "done": 5, "total": 10, "rows_read": 123})
        return True

    assert client.submit(from_task, lid, pure=False).result()
    state = _until(lambda: (s := _state(client))["current"] and s["current"].get("done") == 5 and s)
    assert state, "the task's event never reached the page"
    assert state["current"]["rows_read"] == 123 and state["current"]["worker"].startswith("tcp://127.0.0.1:")

    live.publish(client, {"event": "load_status", "load_id": lid, "stage": "partition",
                          "table": "impressions.fact_partitioned", "status": "SUCCEEDED", "rows_read": 20,
                          "rows_written": 16, "rows_quarantined": 4, "files_written": 8, "seconds": 1.5})
    other = "join-live000000000000002"
    live.publish(client, {"event": "load_status", "load_id": other, "stage": "join", "table": "impressions.j",
                          "status": "FAILED", "error": "boom"})
    state = _state(client)
    assert state["current"] is None                                   # nothing running any more
    assert [s["load_id"] for s in state["loads"]][:2] == [other, lid]  # newest first
    done = state["loads"][1]
    assert (done["status"], done["rows_written"], done["rows_quarantined"], done["done"]) == ("SUCCEEDED", 16, 4, 5)
    assert state["loads"][0]["error"] == "boom"
    assert len([e for e in state["events"] if e.get("load_id") == lid]) == 4


def test_the_html_page_loads(client):
    for suffix in ("", "/"):
        status, ctype, body = _get(live.page_url(client) + suffix)
        assert status == 200 and ctype.startswith("text/html")
        assert "status.json" in body and "src=" not in body and "http" not in body   # self-contained


def test_the_page_in_chromium(client, chromium, tmp_path):  # noqa: F811 - the imported fixture
    lid = "update-live000000000000003"
    live.publish(client, {"event": "load_status", "load_id": lid, "stage": "update", "table": "impressions.u",
                          "status": "RUNNING"})
    live.publish(client, {"load_id": lid, "label": "index", "done": 3_000, "total": 10_000, "unit": "bytes"})
    browser = Browser(chromium, tmp_path / "profile")
    try:
        result = browser.visit(live.page_url(client), "!!window.impressionsState", """JSON.stringify({
            rows: Array.from(document.querySelectorAll('#loads tr'), r => r.dataset.loadId),
            current: document.getElementById('current').textContent,
            dask: document.getElementById('dask').href})""")
    finally:
        browser.close()
    assert problems(result) == []
    assert all(u.startswith("http://127.0.0.1:") for u in result["requests"])
    page = json.loads(result["value"])
    assert page["rows"][0] == lid and len(page["rows"]) == len(_state(client)["loads"])
    assert "update → impressions.u" in page["current"] and "index 3,000/10,000 bytes (30%)" in page["current"]
    assert page["dask"] == live.page_url(client)[: -len("impressions")] + "status"


def test_install_on_a_scheduler_started_without_the_config():
    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as c:
        live.publish(c, {"load_id": "early", "status": "RUNNING"})   # before the plugin exists
        assert live.install(c) is None                               # no routes: the page needs the config
        live.publish(c, {"load_id": "early", "status": "SUCCEEDED"})
        assert live.install(c) is None                               # idempotent

        def snapshot(dask_scheduler):
            plugins = [p for p in dask_scheduler.plugins.values() if isinstance(p, live.LoadStatusPlugin)]
            return len(plugins), plugins[0].snapshot()["loads"]

        n, loads = c.run_on_scheduler(snapshot)
    assert n == 1
    assert [(s["load_id"], s["status"]) for s in loads] == [("early", "SUCCEEDED")]  # replayed, then folded


def test_publish_never_raises(monkeypatch, capsys):
    monkeypatch.setattr(live, "_warned", False)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        c = Client(cluster)
        c.close()
    live.publish(c, {"load_id": "x", "status": "RUNNING"})
    live.publish(c, {"load_id": "x", "status": "SUCCEEDED"})
    err = capsys.readouterr().err
    assert err.count("impressions: warning: live status not sent") == 1
