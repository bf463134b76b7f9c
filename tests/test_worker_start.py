"""`impressions.worker-start`: LocalCluster workers forked from one fork server that imported the stage modules
once, or spawned; a worker never runs with another environment than a spawned one would have had.

Each check runs in a fresh Python process: multiprocessing keeps one fork server per process, and one started by
an earlier test (in another environment) would rightly make every cluster here spawn its workers."""
from __future__ import annotations

import json
import subprocess
import sys

from drills_cli import ROOT, cli_env, impression_bytes, impressions, one_error_line, run, succeeded

VIEWS = r"""
import gc, json, os, resource, sys, time
import dask.config
from distributed import Client
from cluster import forkserver
from cluster.local import local_cluster

PRELOAD = ("pipeline.stages.partition",)

def worker_view():
    t = time.process_time()
    while time.process_time() - t < 1.0:  # one CPU second the driver's resource usage must show afterwards
        pass
    return {"ppid": os.getppid(), "preloaded": "pipeline.stages.partition" in sys.modules,
            "mark": os.environ.get("IMPRESSIONS_TEST_MARK"), "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "frozen": gc.get_freeze_count()}

def children():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime

def view():
    before = children()
    with local_cluster(workers=1, dashboard=False, preload=PRELOAD) as cluster, Client(cluster) as client:
        (got,) = client.run(worker_view).values()
    children_cpu = children() - before
    return {**got, "driver": os.getpid(), "children_cpu": children_cpu}

out = {"first": view()}
os.environ["IMPRESSIONS_TEST_MARK"] = "changed"  # the next cluster's workers see the driver's environment of now
out["second"] = view()
forkserver.start(PRELOAD)  # as a command begins (pipeline/cli.py) ...
os.environ["IMPRESSIONS_TEST_MARK"] = "changed again"  # ... and the environment changes before the cluster starts
out["third"] = view()
out["shipped_malloc"] = str(dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_MMAP_THRESHOLD_"])
print(json.dumps(out))
"""


def _views(method: str) -> dict:
    env = cli_env({"DASK_IMPRESSIONS__WORKER_START": method})
    env.pop("IMPRESSIONS_TEST_MARK", None)
    res = subprocess.run([sys.executable, "-c", VIEWS], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_forked_workers_have_the_stage_modules_and_the_spawn_environment():
    """Forked from a server (not the driver) with the preloaded module already imported (its objects frozen out
    of the collector's way) and the shipped pre-spawn malloc setting; each cluster has its own server, started
    in the environment of its time, and reaped with it (the workers' CPU shows in the driver's resource usage);
    a server started before the driver's environment changed is not used: that cluster's workers are spawned by
    the driver's nanny."""
    got = _views("forkserver")
    first, second, third = got["first"], got["second"], got["third"]
    for v in (first, second):
        assert v["ppid"] != v["driver"]  # a child of the fork server
        assert v["preloaded"] is True
        assert v["frozen"] > 10_000  # the imports' objects, frozen by the server before it forked (cluster/frozen.py)
    assert first["ppid"] != second["ppid"]  # a new server for the second cluster
    assert first["mark"] is None and second["mark"] == "changed"
    assert third["ppid"] == third["driver"] and third["preloaded"] is False and third["mark"] == "changed again"
    assert third["frozen"] == 0
    for v in (first, second, third):
        assert v["malloc"] == got["shipped_malloc"]
        assert v["children_cpu"] >= 0.9, v  # the worker's busy second, reaped through its server


def test_spawned_workers_when_configured():
    got = _views("spawn")
    for v in (got["first"], got["second"], got["third"]):
        assert v["ppid"] == v["driver"] and v["preloaded"] is False and v["malloc"] == got["shipped_malloc"]
        assert v["children_cpu"] >= 0.9, v
    assert got["third"]["mark"] == "changed again"


def test_the_same_table_with_either_start_method(tmp_path):
    """A load through the CLI with forked and with spawned workers: the same rows, statuses alike."""
    src = tmp_path / "in.csv"
    src.write_bytes(impression_bytes(20_000, seed=3))
    done = {}
    for method in ("forkserver", "spawn"):
        cli = run(impressions(tmp_path / method, "partition", src, "fact"),
                  env=cli_env({"DASK_IMPRESSIONS__WORKER_START": method}))
        done[method] = succeeded(cli)
    assert done["forkserver"]["rows_written"] == done["spawn"]["rows_written"] == 20_000
    assert done["forkserver"]["files_written"] == done["spawn"]["files_written"]


def test_an_unknown_start_method_is_a_usage_error(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(impression_bytes(100, seed=1))
    cli = run(impressions(tmp_path / "wh", "partition", src, "fact"),
              env=cli_env({"DASK_IMPRESSIONS__WORKER_START": "thread"}))
    one_error_line(cli, 2, "worker-start must be one of forkserver, spawn")


def test_the_cli_forks_its_workers_from_the_server(tmp_path):
    """Through the CLI as a user runs it: every worker of a load is a child of the fork server, not of the
    driver, unless `spawn` is asked for. Each worker reports its parent from a Dask worker preload script."""
    script = tmp_path / "report_parent.py"
    script.write_text("import os, pathlib\n"
                      "d = pathlib.Path(os.environ['IMPRESSIONS_TEST_PARENTS'])\n"
                      "(d / str(os.getpid())).write_text(str(os.getppid()))\n")
    src = tmp_path / "in.csv"
    src.write_bytes(impression_bytes(5_000, seed=2))
    for method in ("forkserver", "spawn"):
        parents = tmp_path / f"parents-{method}"
        parents.mkdir()
        cli = run(impressions(tmp_path / f"wh-{method}", "partition", src, "fact"),
                  env=cli_env({"DASK_IMPRESSIONS__WORKER_START": method, "IMPRESSIONS_TEST_PARENTS": str(parents),
                               "DASK_DISTRIBUTED__WORKER__PRELOAD": f'["{script}"]'}))
        succeeded(cli)
        seen = {int(p.name): int(p.read_text()) for p in parents.iterdir()}
        assert len(seen) == 2, seen  # the two workers
        if method == "forkserver":
            assert cli.pid not in seen.values() and len(set(seen.values())) == 1, (cli.pid, seen)
        else:
            assert set(seen.values()) == {cli.pid}, (cli.pid, seen)
