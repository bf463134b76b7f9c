"""`impressions node`: the AWS Batch multi-node job, simulated with real processes on 127.0.0.1.

Each node is an `impressions node` process with the variables Batch sets (AWS_BATCH_JOB_NODE_INDEX, ...); ports
are free loopback ports given through DASK_IMPRESSIONS__NODE__*; inputs, JOB files and the warehouse live on the
loopback moto S3 (tests/conftest.py). Faults are real: a child that is never started, a main node SIGKILLed or
SIGTERMed. Exit codes are read as Batch reads them: the job's status is the main node's exit code.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import pytest

from cluster.batchenv import batch_node
from cluster.jobrun import Job, JobOptions, exit_status, job_environment, parse_job, script_command, yaml_command
from cluster.settings import load_node_settings
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SMALL_READS = {  # small ranges, so a small file is read by several tasks spread over the workers
    "DASK_IMPRESSIONS__READ__RANGE_SIZE": "256 KiB",
    "DASK_IMPRESSIONS__READ__INDEX_SPACING": "64 KiB",
    "DASK_IMPRESSIONS__READ__SMALL_FILE": "16 KiB",
    "DASK_IMPRESSIONS__READ__BLOCK_SIZE": "64 KiB",
    "DASK_IMPRESSIONS__BUCKETS": "8",
}
WAIT = 240  # no node process may take longer than this in any test


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stdout_json(text: str) -> list[dict]:
    """stdout carries JSON lines only."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"non-JSON line on stdout: {line!r}")
    return out


class Cluster:
    """Node processes of one simulated job: same ports and job id, each with its own node index."""

    def __init__(self, tmp: Path, num_nodes: int, extra: dict | None = None):
        self.tmp, self.num_nodes = tmp, num_nodes
        self.procs: dict[int, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AWS_BATCH_", "DASK_IMPRESSIONS__", "IMPRESSIONS_"))
                    and k not in ("DASK_SCHEDULER_ADDRESS",)}
        self.env.update(SMALL_READS)
        self.env.update({
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": str(num_nodes),
            "AWS_BATCH_JOB_ID": "0123-test-job", "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_BATCH_JQ_NAME": "impressions-queue", "AWS_BATCH_CE_NAME": "impressions-ce",
            "DASK_IMPRESSIONS__NODE__SCHEDULER_PORT": str(free_port()),
            "DASK_IMPRESSIONS__NODE__DASHBOARD_PORT": str(free_port()),
            "DASK_IMPRESSIONS__NODE__HOST": "127.0.0.1",
            "DASK_IMPRESSIONS__NODE__WORKER_THREADS": "1",
            # generous: on a loaded 2-core machine a node process needs many seconds just to import Dask
            "DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT": "150s",
            "DASK_IMPRESSIONS__NODE__DEATH_TIMEOUT": "150s",
            **(extra or {}),
        })

    def start(self, index: int, *args: str, env: dict | None = None) -> subprocess.Popen:
        env = {**self.env, "AWS_BATCH_JOB_NODE_INDEX": str(index), **(env or {})}
        if index != 0:  # Batch sets the main node's address on child nodes only
            env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
        out = open(self.tmp / f"node{index}.out", "w")
        err = open(self.tmp / f"node{index}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "node", *args], env=env, cwd=self.tmp,
                                stdout=out, stderr=err, start_new_session=True)
        self.procs[index] = proc
        return proc

    def start_all(self, *args: str) -> None:
        self.start(0, *args)
        for i in range(1, self.num_nodes):
            self.start(i)

    def wait(self, index: int, timeout: float = WAIT) -> int:
        try:
            return self.procs[index].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {index} still running after {timeout}s\n{self.report()}")

    def exit_codes(self, timeout: float = WAIT) -> list[int]:
        """Every node's exit code, main node first (Batch: the job's status is the main node's)."""
        return [self.wait(i, timeout) for i in sorted(self.procs)]

    def out(self, index: int) -> str:
        return (self.tmp / f"node{index}.out").read_text()

    def err(self, index: int) -> str:
        return (self.tmp / f"node{index}.err").read_text()

    def report(self) -> str:
        return "\n".join(f"--- node {i} stderr:\n{self.err(i)[-3000:]}\n--- stdout:\n{self.out(i)[-1500:]}"
                         for i in sorted(self.procs))

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(num_nodes: int, **extra) -> Cluster:
        c = Cluster(tmp_path, num_nodes, {k: str(v) for k, v in extra.items()})
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill_all()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def isolated_config(monkeypatch):
    for k in list(os.environ):
        if k.startswith("DASK_IMPRESSIONS__NODE"):
            monkeypatch.delenv(k)
    dask.config.refresh()
    yield monkeypatch
    monkeypatch.undo()
    dask.config.refresh()


# ------------------------------------------------------------------ roles and settings (no processes)


BATCH = {"AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": "3"}


def test_role_from_the_batch_variables():
    main = batch_node({**BATCH, "AWS_BATCH_JOB_ID": "j1", "AWS_BATCH_JQ_NAME": "q", "AWS_BATCH_CE_NAME": "ce"})
    assert main.is_main and main.workers_expected == 2 and main.main_address is None
    assert (main.job_id, main.queue, main.compute_environment) == ("j1", "q", "ce")
    child = batch_node({**BATCH, "AWS_BATCH_JOB_NODE_INDEX": "2",
                        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.5"})
    assert not child.is_main and child.main_address == "10.0.0.5" and child.index == 2
    # the main node need not be node 0
    other = batch_node({**BATCH, "AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "1",
                        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.6"})
    assert not other.is_main


@pytest.mark.parametrize("environ, message", [
    ({}, "not an AWS Batch multi-node job"),
    ({"AWS_BATCH_JOB_NODE_INDEX": "0"}, "AWS_BATCH_JOB_MAIN_NODE_INDEX, AWS_BATCH_JOB_NUM_NODES not set"),
    ({**BATCH, "AWS_BATCH_JOB_NUM_NODES": "x"}, "must be an integer"),
    ({**BATCH, "AWS_BATCH_JOB_NUM_NODES": "1"}, "at least 2 nodes"),
    ({**BATCH, "AWS_BATCH_JOB_NODE_INDEX": "3"}, "must be below"),
    ({**BATCH, "AWS_BATCH_JOB_MAIN_NODE_INDEX": "5"}, "must be below"),
    ({**BATCH, "AWS_BATCH_JOB_NODE_INDEX": "1"}, "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS not set"),
])
def test_missing_or_inconsistent_batch_variables_are_usage_errors(environ, message):
    with pytest.raises(UsageError, match=message):
        batch_node(environ)


def test_node_settings_defaults_come_from_the_shipped_yaml(isolated_config):
    import yaml

    import pipeline

    shipped = yaml.safe_load(Path(pipeline.__file__).with_name("impressions.yaml").read_text())["impressions"]
    assert set(shipped["node"]) == {"scheduler-port", "dashboard-port", "host", "wait-timeout", "death-timeout",
                                    "worker-processes", "worker-threads", "job-timeout", "poll-interval",
                                    "follow-timeout"}
    s = load_node_settings()
    assert (s.scheduler_port, s.dashboard_port, s.host) == (8786, 8787, None)
    assert (s.wait_timeout, s.death_timeout, s.job_timeout) == (600, 300, 12 * 3600)
    assert (s.poll_interval, s.follow_timeout) == (15, 24 * 3600)
    assert s.worker_processes == 1 and s.worker_threads == (os.cpu_count() or 1)  # all cores by default


def test_node_settings_from_the_environment(isolated_config):
    for k, v in {"SCHEDULER_PORT": "9786", "DASHBOARD_PORT": "9787", "HOST": "127.0.0.1", "WAIT_TIMEOUT": "90s",
                 "DEATH_TIMEOUT": "2 minutes", "WORKER_PROCESSES": "4", "JOB_TIMEOUT": "1h",
                 "POLL_INTERVAL": "250ms", "FOLLOW_TIMEOUT": "3h"}.items():
        isolated_config.setenv(f"DASK_IMPRESSIONS__NODE__{k}", v)
    dask.config.refresh()
    s = load_node_settings()
    assert (s.scheduler_port, s.dashboard_port, s.host) == (9786, 9787, "127.0.0.1")
    assert (s.wait_timeout, s.death_timeout, s.job_timeout) == (90, 120, 3600)
    assert (s.poll_interval, s.follow_timeout) == (0.25, 3 * 3600)
    assert s.worker_processes == 4 and s.worker_threads == max(1, (os.cpu_count() or 1) // 4)
    isolated_config.setenv("DASK_IMPRESSIONS__NODE__WORKER_THREADS", "3")
    isolated_config.setenv("DASK_IMPRESSIONS__NODE__JOB_TIMEOUT", "null")
    dask.config.refresh()
    s = load_node_settings()
    assert s.worker_threads == 3 and s.job_timeout is None


@pytest.mark.parametrize("key, value, message", [
    ("SCHEDULER_PORT", "70000", "between 1 and 65535"),
    ("DASHBOARD_PORT", "'http'", "must be an integer"),
    ("WAIT_TIMEOUT", "'soon'", "must be a duration"),
    ("DEATH_TIMEOUT", "0", "positive duration"),
    ("WORKER_PROCESSES", "0", "between 1 and 1024"),
    ("WORKER_THREADS", "0", "between 1 and 4096"),
    ("POLL_INTERVAL", "-1", "must be a (positive )?duration"),
])
def test_bad_node_settings_are_usage_errors(isolated_config, key, value, message):
    isolated_config.setenv(f"DASK_IMPRESSIONS__NODE__{key}", value)
    dask.config.refresh()
    with pytest.raises(UsageError, match=message):
        load_node_settings()


def test_the_job_and_its_command_lines():
    assert parse_job("s3://b/jobs/daily.yaml", {}) == Job("s3://b/jobs/daily.yaml", "yaml")
    assert parse_job(None, {"IMPRESSIONS_JOB": "s3://b/j.sh", "IMPRESSIONS_JOB_ARGS": "a 'b c'"}) == \
        Job("s3://b/j.sh", "script", ("a", "b c"))
    assert parse_job("local.YML", {"IMPRESSIONS_JOB": "s3://ignored.yaml"}).kind == "yaml"
    for bad, message in [(None, "no JOB"), ("s3://b/job.json", "JOB.yaml"), ("", "no JOB")]:
        with pytest.raises(UsageError, match=message):
            parse_job(bad, {})
    with pytest.raises(UsageError, match="for job scripts"):
        parse_job("j.yaml", {"IMPRESSIONS_JOB_ARGS": "x"})

    options = JobOptions(warehouse="s3://b/tables", catalog="glue", cloudwatch=True)
    assert yaml_command(Job("s3://b/j.yaml", "yaml"), "tcp://127.0.0.1:8786", options) == [
        sys.executable, "-m", "pipeline", "--scheduler", "tcp://127.0.0.1:8786", "--warehouse", "s3://b/tables",
        "--catalog", "glue", "--cloudwatch", "run", "s3://b/j.yaml"]
    assert script_command("/tmp/j.sh", ("1",), b"#!/bin/bash\n") == ["/tmp/j.sh", "1"]
    assert script_command("/tmp/j.sh", (), b"echo hi\n") == ["/bin/sh", "/tmp/j.sh"]
    env = job_environment({"PATH": "/usr/bin", "X": "1"}, Job("s3://b/j.sh", "script"), "tcp://h:1", options)
    assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://h:1" and env["IMPRESSIONS_JOB"] == "s3://b/j.sh"
    assert env["DASK_IMPRESSIONS__WAREHOUSE"] == "s3://b/tables" and env["DASK_IMPRESSIONS__CATALOG"] == "glue"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable) and env["X"] == "1"
    assert [exit_status(c) for c in (0, 1, 3, -9, -15)] == [0, 1, 3, 137, 143]


# ------------------------------------------------------------------ one node alone


def test_a_node_without_the_batch_variables_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_BATCH_")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "node", "s3://b/j.yaml"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an AWS Batch multi-node job" in lines[0], proc.stderr


def test_a_main_node_without_a_job_or_with_a_missing_one_exits_2_at_once(cluster, s3_bucket):
    c = cluster(2)
    c.start(0)
    assert c.wait(0) == 2
    assert c.err(0).strip().splitlines() == [
        "impressions: error: no JOB: give `impressions node JOB` or set IMPRESSIONS_JOB (a JOB.yaml or an s3://…/*.sh)"]
    c.start(0, f"s3://{s3_bucket}/jobs/missing.yaml")
    assert c.wait(0) == 2
    assert c.err(0).strip().splitlines() == [f"impressions: error: job file not found: s3://{s3_bucket}/jobs/missing.yaml"]
    c.start(0, f"s3://{s3_bucket}/jobs/missing.sh")
    assert c.wait(0) == 2
    assert "job script not found" in c.err(0) and "Traceback" not in c.err(0)


def test_a_child_without_a_scheduler_gives_up_after_the_death_timeout(cluster):
    c = cluster(2, DASK_IMPRESSIONS__NODE__DEATH_TIMEOUT="3s")
    started = time.monotonic()
    c.start(1)
    assert c.wait(1, timeout=60) == 1
    assert time.monotonic() - started < 45
    err = c.err(1)
    assert "no scheduler at tcp://127.0.0.1:" in err and "node.death-timeout (3s)" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ whole jobs


@pytest.fixture
def inputs(s3_bucket, s3_endpoint, tmp_path):
    """Generated inputs on S3 and a JOB.yaml naming them (as batch/deploy.sh renders batch/daily.yaml)."""
    import boto3

    from cluster.deploy import render
    from pipeline.generate import generate

    files = generate(str(tmp_path / "gen"), rows=12_000, days=3, campaigns=12, changed=2, seed=7)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("impressions", "campaigns", "campaigns_updated"):
        s3.upload_file(files[key], s3_bucket, f"input/{os.path.basename(files[key])}")
    job = render((ROOT / "batch" / "daily.yaml").read_text(), {"INPUT": f"s3://{s3_bucket}/input"})
    s3.put_object(Bucket=s3_bucket, Key="jobs/daily.yaml", Body=job.encode())
    s3.upload_file(str(ROOT / "batch" / "job.sh"), s3_bucket, "jobs/job.sh")
    return {"bucket": s3_bucket, "s3": s3, "job": f"s3://{s3_bucket}/jobs/daily.yaml",
            "script": f"s3://{s3_bucket}/jobs/job.sh", "files": files}


def iceberg_rows(catalog_uri: str, warehouse: str, table: str):
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog("impressions", uri=catalog_uri, warehouse=warehouse, **{
        "s3.endpoint": os.environ["AWS_ENDPOINT_URL"], "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "s3.region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")})
    t = cat.load_table(("impressions", table))
    return t.scan().to_arrow().sort_by("impression_id"), t


def assert_same_stats(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]
    for key in ("vp_mean", "vp_std", "vp_std_sample"):
        assert math.isclose(a[key], b[key], rel_tol=1e-12), key
    assert (a["vp_min"], a["vp_max"]) == (b["vp_min"], b["vp_max"])


def test_three_nodes_run_the_job_to_the_same_table_and_statistics_as_a_local_cluster(cluster, inputs, tmp_path):
    bucket = inputs["bucket"]
    batch_catalog = f"sqlite:///{tmp_path / 'batch.db'}"
    # as the job definition sets them: the JOB, the warehouse and the catalog come from the environment
    c = cluster(3, IMPRESSIONS_JOB=inputs["job"], DASK_IMPRESSIONS__WAREHOUSE=f"s3://{bucket}/batch",
                DASK_IMPRESSIONS__CATALOG=batch_catalog)
    c.start_all()
    codes = c.exit_codes()
    assert codes == [0, 0, 0], c.report()
    main_out = stdout_json(c.out(0))
    statuses = [o for o in main_out if o.get("event") == "load_status"]
    assert [s["stage"] for s in statuses if s["status"] == "SUCCEEDED"] == ["partition", "join", "update"]
    batch_stats = main_out[-1]
    assert batch_stats["table"] == "impressions.fact_updated" and batch_stats["rows"] == 12_000
    err = c.err(0)
    assert "2 of 2 worker nodes arrived" in err and "the JOB exited with status 0" in err
    for i in (1, 2):
        assert c.out(i) == "" and "the scheduler closed or went away" in c.err(i)
        assert "Traceback" not in c.err(i)

    local_catalog = f"sqlite:///{tmp_path / 'local.db'}"
    env = {k: v for k, v in c.env.items() if not k.startswith("AWS_BATCH_")}
    local = subprocess.run([sys.executable, "-m", "pipeline", "--warehouse", f"s3://{bucket}/local", "--catalog",
                            local_catalog, "--workers", "2", "run", inputs["job"]], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    assert_same_stats(batch_stats, stdout_json(local.stdout)[-1])

    for table in ("fact_partitioned", "fact_updated"):
        batch_rows, batch_table = iceberg_rows(batch_catalog, f"s3://{bucket}/batch", table)
        local_rows, local_table = iceberg_rows(local_catalog, f"s3://{bucket}/local", table)
        assert batch_rows.num_rows == 12_000
        assert batch_rows.equals(local_rows), table
        assert batch_table.spec() == local_table.spec()


def test_the_job_script_runs_fetch_and_run_style_with_its_arguments(cluster, inputs, tmp_path):
    bucket = inputs["bucket"]
    fact = f"s3://{bucket}/input/impressions.csv.gz"
    # a local shared directory as the warehouse (the three-node test covers the S3 one)
    c = cluster(2, IMPRESSIONS_INPUT=f"s3://{bucket}/input", IMPRESSIONS_JOB_ARGS=fact,
                DASK_IMPRESSIONS__WAREHOUSE=str(tmp_path / "warehouse"))
    c.start_all(inputs["script"])
    assert c.exit_codes() == [0, 0], c.report()
    err = c.err(0)
    for expected in (f"Args: {fact}", "jobId: 0123-test-job", "jobQueue: impressions-queue",
                     "computeEnvironment: impressions-ce", "scheduler: tcp://127.0.0.1:"):
        assert expected in err
    out = stdout_json(c.out(0))
    assert [o["stage"] for o in out if o.get("event") == "load_status" and o["status"] == "SUCCEEDED"] == \
        ["partition", "join", "update"]
    assert out[-1]["table"] == "impressions.fact_updated" and out[-1]["rows"] == 12_000


def test_the_job_status_is_the_main_nodes_exit_code(cluster, tmp_path):
    script = tmp_path / "fails.sh"
    script.write_text('#!/bin/sh\necho "failing on purpose" >&2\nexit 3\n')
    c = cluster(2, DASK_IMPRESSIONS__NODE__WORKER_PROCESSES=2)  # two worker processes on the child node
    c.start_all(str(script))
    assert c.exit_codes() == [3, 0], c.report()
    assert "the JOB exited with status 3" in c.err(0)
    assert "1 of 1 worker nodes arrived" in c.err(0)  # a node counts once, whatever its processes
    assert "2 worker process(es) x 1 threads" in c.err(1)


def test_a_job_longer_than_the_job_timeout_is_stopped(cluster, tmp_path):
    c = cluster(2, DASK_IMPRESSIONS__NODE__JOB_TIMEOUT="3s")
    c.start_all(str(sleeping_job(tmp_path)))
    assert c.exit_codes() == [1, 0], c.report()
    assert "the JOB ran longer than node.job-timeout (3s); stopping it" in c.err(0)
    assert not alive(int((tmp_path / "job.pid").read_text()))


def test_a_child_that_never_comes_fails_the_job_within_the_timeout(cluster, tmp_path):
    script = tmp_path / "never.sh"
    script.write_text("#!/bin/sh\necho 'must not run' >&2\n")
    c = cluster(3, DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT="20s")
    c.start(1)  # first, so it is ready to connect when the scheduler is; node 2 never starts
    started = time.monotonic()
    c.start(0, str(script))
    assert c.exit_codes() == [1, 0], c.report()
    assert time.monotonic() - started < 20 + WAIT
    lines = c.err(0).strip().splitlines()
    assert lines[-1] == ("impressions node: only 1 of 2 workers arrived within node.wait-timeout (20s); "
                         "the job is not run")
    assert "Traceback" not in c.err(0) and "must not run" not in c.err(0) and c.out(0) == ""


def job_started(tmp_path: Path, c: "Cluster") -> bool:
    if c.procs[0].poll() is not None:
        pytest.fail(f"the main node ended before the job started\n{c.report()}")
    return (tmp_path / "job.pid").exists() and (tmp_path / "job.pid").read_text().strip().isdigit()


def sleeping_job(tmp_path: Path) -> Path:
    script = tmp_path / "sleeps.sh"
    script.write_text(f'#!/bin/sh\necho $$ > "{tmp_path}/job.pid.tmp"\nmv "{tmp_path}/job.pid.tmp" "{tmp_path}/job.pid"\n'
                      "exec sleep 300\n")
    return script


def test_killing_the_main_node_makes_the_workers_and_the_job_exit(cluster, tmp_path):
    c = cluster(3)
    c.start_all(str(sleeping_job(tmp_path)))
    wait_for(lambda: job_started(tmp_path, c), WAIT, "the job to start")
    job_pid = int((tmp_path / "job.pid").read_text())
    c.procs[0].send_signal(signal.SIGKILL)  # the main node only, as an instance loss would
    killed = time.monotonic()
    codes = c.exit_codes(timeout=60)
    assert codes[0] == -signal.SIGKILL and codes[1:] == [0, 0], c.report()
    assert time.monotonic() - killed < 45  # seconds on an idle machine: their connection to it breaks
    wait_for(lambda: not alive(job_pid), 10, "the orphaned job to be killed")
    for i in (1, 2):
        assert "the scheduler closed or went away" in c.err(i)


def test_a_stopped_job_stops_its_job_and_shuts_the_cluster_down(cluster, tmp_path):
    """Batch stops a job (TerminateJob, timeout) with SIGTERM: the JOB gets it, the cluster is shut down."""
    c = cluster(2)
    c.start_all(str(sleeping_job(tmp_path)))
    wait_for(lambda: job_started(tmp_path, c), WAIT, "the job to start")
    job_pid = int((tmp_path / "job.pid").read_text())
    c.procs[0].send_signal(signal.SIGTERM)
    assert c.exit_codes(timeout=60) == [128 + signal.SIGTERM, 0], c.report()
    assert not alive(job_pid)
    assert f"the JOB exited with status {128 + signal.SIGTERM}" in c.err(0)


def test_a_main_node_stopped_while_it_waits_shuts_down_cleanly(cluster, tmp_path):
    script = tmp_path / "never.sh"
    script.write_text("#!/bin/sh\necho 'must not run' >&2\n")
    c = cluster(3, DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT="300s")
    c.start(0, str(script))
    c.start(1)  # node 2 never comes: the main node waits until Batch stops it
    wait_for(lambda: "1 of 2 worker nodes arrived" in c.err(0), WAIT, "the first worker")
    c.procs[0].send_signal(signal.SIGTERM)
    assert c.exit_codes(timeout=60) == [128 + signal.SIGTERM, 0], c.report()
    assert c.err(0).strip().splitlines()[-1] == \
        "impressions node: stopped (SIGTERM) before the JOB ran; the cluster is shut down"
    assert "must not run" not in c.err(0) and "Traceback" not in c.err(0)


def test_a_main_node_whose_port_is_taken_exits_1_with_one_line(cluster, tmp_path):
    script = tmp_path / "never.sh"
    script.write_text("#!/bin/sh\necho 'must not run' >&2\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        c = cluster(2, DASK_IMPRESSIONS__NODE__SCHEDULER_PORT=port)
        c.start(0, str(script))
        assert c.wait(0) == 1
    assert c.err(0).strip().splitlines() == [
        f"impressions: load failed: the scheduler could not start on port {port}: [Errno 98] Address already in use"]
