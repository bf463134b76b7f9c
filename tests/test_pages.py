"""Bokeh's Dask dashboard pages on the commands' LocalCluster, mounted by the first request (cluster/pages.py)."""
from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from distributed import Client

from cluster.local import local_cluster


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@pytest.fixture()
def cluster():
    with local_cluster(workers=1) as cluster, Client(cluster) as client:
        yield cluster, client.dashboard_link[: -len("status")]


def test_the_pages_are_mounted_by_the_first_request_and_serve_it(cluster):
    cluster, base = cluster
    app = cluster.scheduler.http_application
    assert app.applications == []                                       # nothing of bokeh's at the start
    assert _get(base + "health") == (200, "ok")                         # distributed's plain routes are up
    with ThreadPoolExecutor(3) as pool:                                 # first requests at once: one mount
        answers = list(pool.map(_get, [base + "status", base + "individual-progress", base + "status"]))
    assert [code for code, _ in answers] == [200, 200, 200]
    assert "Dask" in answers[0][1] and "bokeh" in answers[0][1].lower()
    assert len(app.applications) == 1
    assert _get(base + "workers")[0] == 200                             # served by the pages, no new mount
    assert len(app.applications) == 1
    assert _get(base + "no-such-page")[0] == 404                        # a plain 404 once they are there
    assert _get(base)[0] == 200                                         # / -> /status
