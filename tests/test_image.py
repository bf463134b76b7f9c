"""docker/Dockerfile: linted (hadolint), built by docker/build.sh (podman here: there is no Docker engine; the base
image is made with debootstrap), and run: `impressions --help`, a small partition inside the image, the
per-process targets, and a three-container multi-node job against the loopback moto S3 and Glue.

The build is the slow part (~2-4 min on 2 cores from a clean machine, seconds when cached); it installs podman,
runc and debootstrap with apt-get when they are missing, and is skipped (with the reason) only where that is
impossible (not root, no apt-get).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
TAG = "localhost/impressions-test"
# builds and runs the image: minutes on a clean machine, seconds when cached; part of `make test`
# (`-m "not slow"` leaves it out).
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tools() -> Path:
    proc = subprocess.run([str(ROOT / "batch" / "tools.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_dockerfile_is_hadolint_clean(tools):
    proc = subprocess.run([str(tools / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_dockerfile_pinned_by_constraints_with_a_target_per_process():
    text = DOCKERFILE.read_text()
    first_from = text.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=\S+", text[:first_from], re.M), "ARG BASE_IMAGE before the first FROM"
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    assert stages[0] == ("${BASE_IMAGE}", "runtime")
    assert {name for _, name in stages} >= {"partition", "join", "update", "node"}
    assert all(base == "runtime" for base, _ in stages[1:]), "every target shares the one runtime stage"
    installs = re.findall(r"pip install [^\n\\]*", text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"^USER 1000:1000$", text, re.M), "a non-root user"
    assert '["/usr/bin/tini", "--"' in text, "tini is PID 1"
    node = text[text.index("AS node"):]
    assert 'CMD ["impressions", "node"]' in node.splitlines()[1]


# ------------------------------------------------------------------ built and run


def can_install_podman() -> str | None:
    """None if podman (and runc, debootstrap) can be used here, else why not."""
    if all(shutil.which(t) for t in ("podman", "runc", "debootstrap")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "podman, runc or debootstrap is missing and cannot be installed here (needs root and apt-get)"
    return None


@pytest.fixture(scope="module")
def engine() -> list[str]:
    """Build the node image and the partition target; the engine's command line (podman with its options)."""
    why = can_install_podman()
    if why and not (shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0):
        pytest.skip(why)
    for target in ("node", "partition"):
        proc = subprocess.run([str(ROOT / "docker" / "build.sh"), "--target", target, "--tag", f"{TAG}:{target}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-5000:]
    return shlex.split(proc.stdout.strip().splitlines()[-1])


def run(engine: list[str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*engine, "run", "--rm", "--network", "host", *args], capture_output=True, text=True,
                          timeout=timeout)


@slow
def test_help_runs_as_a_non_root_user_under_tini(engine):
    proc = run(engine, f"{TAG}:node", "impressions", "--help")
    assert proc.returncode == 0 and "usage: impressions" in proc.stdout, proc.stderr
    proc = run(engine, f"{TAG}:node", "sh", "-c", "id -u; tr '\\0' ' ' < /proc/1/cmdline; echo; "
                                                    "python -c 'import dask, distributed; print(dask.__version__)'")
    uid, pid1, dask_version = proc.stdout.strip().splitlines()
    assert uid == "1000" and pid1.startswith("/usr/bin/tini --"), proc.stdout
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert dask_version == pins["dask"]
    proc = run(engine, f"{TAG}:node")  # the node target's command is `impressions node`: outside Batch, exit 2
    assert proc.returncode == 2 and "not an AWS Batch multi-node job" in proc.stderr


@slow
def test_a_small_partition_inside_the_image(engine, tmp_path):
    from pipeline.generate import generate

    data = tmp_path / "data"
    files = generate(str(data), rows=20_000, days=2, campaigns=8, changed=1, seed=11)
    data.chmod(0o755)
    proc = run(engine, "-v", f"{data}:/data:ro", f"{TAG}:node", "sh", "-c",
               "impressions --workers 1 partition /data/impressions.csv.gz FACT_PARTITIONED >&2 && "
               "impressions --workers 1 stats FACT_PARTITIONED --json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["table"] == "impressions.fact_partitioned" and stats["rows"] == files["rows"] == 20_000
    # the partition target: ENTRYPOINT `impressions partition`, arguments from the command line
    proc = run(engine, "-v", f"{data}:/data:ro", f"{TAG}:partition", "--workers", "1",
               "/data/impressions.csv.gz", "FACT_PARTITIONED")
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [s["status"] for s in statuses if s.get("event") == "load_status"][-1] == "SUCCEEDED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@slow
def test_a_multi_node_job_of_three_containers(engine, s3_endpoint, s3_bucket, tmp_path):
    """One container per node, as Batch runs them, on the host's loopback; S3 and Glue are moto's."""
    import boto3

    from cluster.deploy import render
    from pipeline.generate import generate

    files = generate(str(tmp_path / "gen"), rows=20_000, days=2, campaigns=8, changed=1, seed=13)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("impressions", "campaigns", "campaigns_updated"):
        s3.upload_file(files[key], s3_bucket, f"input/{os.path.basename(files[key])}")
    job = render((ROOT / "batch" / "daily.yaml").read_text(), {"INPUT": f"s3://{s3_bucket}/input"})
    s3.put_object(Bucket=s3_bucket, Key="jobs/daily.yaml", Body=job.encode())
    namespace = f"img_{uuid.uuid4().hex[:8]}"
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": "3", "AWS_BATCH_JOB_ID": "img-job",
           "IMPRESSIONS_JOB": f"s3://{s3_bucket}/jobs/daily.yaml",
           "DASK_IMPRESSIONS__WAREHOUSE": f"s3://{s3_bucket}/tables", "DASK_IMPRESSIONS__CATALOG": "glue",
           "DASK_IMPRESSIONS__NAMESPACE": namespace, "DASK_IMPRESSIONS__BUCKETS": "8",
           "DASK_IMPRESSIONS__NODE__SCHEDULER_PORT": str(free_port()),
           "DASK_IMPRESSIONS__NODE__DASHBOARD_PORT": str(free_port()), "DASK_IMPRESSIONS__NODE__HOST": "127.0.0.1",
           "DASK_IMPRESSIONS__NODE__WORKER_THREADS": "1", "DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT": "120s"}
    procs = []
    names = []
    for index in range(3):
        node_env = {**env, "AWS_BATCH_JOB_NODE_INDEX": str(index)}
        if index:
            node_env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
        name = f"impressions-node{index}-{uuid.uuid4().hex[:6]}"
        names.append(name)
        args = [*engine, "run", "--rm", "--name", name, "--network", "host",
                *[f"--env={k}={v}" for k, v in node_env.items()], f"{TAG}:node", "impressions", "node"]
        procs.append(subprocess.Popen(args, stdout=open(tmp_path / f"n{index}.out", "w"),
                                      stderr=open(tmp_path / f"n{index}.err", "w")))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p, name in zip(procs, names):
            if p.poll() is None:
                subprocess.run([*engine, "kill", name], capture_output=True, timeout=60)
                p.wait(timeout=60)
    logs = "\n".join(f"--- node {i}:\n{(tmp_path / f'n{i}.err').read_text()[-2000:]}" for i in range(3))
    assert codes == [0, 0, 0], logs
    out = [json.loads(line) for line in (tmp_path / "n0.out").read_text().splitlines() if line.strip()]
    assert out[-1]["table"] == f"{namespace}.fact_updated" and out[-1]["rows"] == 20_000, logs
    glue = boto3.client("glue", endpoint_url=s3_endpoint)
    tables = {t["Name"] for t in glue.get_tables(DatabaseName=namespace)["TableList"]}
    assert {"fact_partitioned", "fact_joined", "fact_updated"} <= tables
