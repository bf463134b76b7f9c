"""The optional dask-cloudprovider cluster (ECS/Fargate from a laptop): settings and constructor arguments as
plain data, checked against dask-cloudprovider's own signature; no AWS is contacted.

dask-cloudprovider is not part of the main install (its aiobotocore pins are kept out of constraints.txt's
resolution): the signature test installs the pinned version of cluster/cloudprovider-constraints.txt, without
dependencies, into a temporary directory of its own.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest
import yaml

import pipeline
from cluster.cloudprovider import cluster_class, cluster_kwargs
from cluster.settings import load_cloudprovider_settings
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
FARGATE = {"CLUSTER": "fargate", "IMAGE": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/impressions:abc",
           "REGION": "eu-west-1", "SECURITY_GROUPS": '["sg-0123"]', "SUBNETS": "subnet-a,subnet-b",
           "VPC": "vpc-1", "TASK_ROLE_ARN": "arn:aws:iam::111122223333:role/impressions-job",
           "LOG_GROUP": "/aws/batch/impressions", "N_WORKERS": "6", "WORKER_NTHREADS": "4",
           "ENVIRONMENT": '{"DASK_IMPRESSIONS__CATALOG": "glue"}', "TAGS": '{"team": "ads"}'}


@pytest.fixture
def config(monkeypatch):
    """config(KEY=value, ...): exactly these DASK_IMPRESSIONS__CLOUDPROVIDER__KEY variables, read by dask.config."""
    def set_config(**values):
        for k in list(os.environ):
            if k.startswith("DASK_IMPRESSIONS__CLOUDPROVIDER"):
                monkeypatch.delenv(k)
        for k, v in values.items():
            monkeypatch.setenv(f"DASK_IMPRESSIONS__CLOUDPROVIDER__{k}", v)
        dask.config.refresh()
        return load_cloudprovider_settings()

    set_config()
    yield set_config
    monkeypatch.undo()
    dask.config.refresh()


def test_defaults_come_from_the_shipped_yaml_and_start_nothing(config):
    shipped = yaml.safe_load(Path(pipeline.__file__).with_name("impressions.yaml").read_text())["impressions"]
    assert set(shipped["cloudprovider"]) == {
        "cluster", "image", "region", "n-workers", "worker-cpu", "worker-mem", "worker-nthreads", "scheduler-cpu",
        "scheduler-mem", "scheduler-timeout", "cluster-arn", "vpc", "subnets", "security-groups", "task-role-arn",
        "execution-role-arn", "log-group", "private-ip", "environment", "tags"}
    s = config()
    assert s.cluster is None and s.image is None and s.region is None  # off: connect() starts a LocalCluster
    assert (s.n_workers, s.worker_cpu, s.worker_mem, s.worker_nthreads) == (4, 4096, 16384, None)
    assert (s.scheduler_cpu, s.scheduler_mem, s.scheduler_timeout) == (1024, 4096, "15 minutes")
    assert s.security_groups == () and s.subnets == () and s.private_ip is True
    assert (s.cluster_arn, s.vpc, s.task_role_arn, s.execution_role_arn, s.log_group) == (None,) * 5
    assert s.environment == {} and s.tags == {}
    with pytest.raises(UsageError, match="cluster is null"):
        cluster_kwargs(s)


def test_fargate_arguments_from_configuration(config):
    s = config(**FARGATE, WORKER_CPU="8192", WORKER_MEM="32768", SCHEDULER_CPU="2048", SCHEDULER_MEM="8192",
               SCHEDULER_TIMEOUT="'1 hour'", PRIVATE_IP="False",
               EXECUTION_ROLE_ARN="arn:aws:iam::111122223333:role/exec")
    assert cluster_class(s) == "FargateCluster"
    assert cluster_kwargs(s) == {
        "image": FARGATE["IMAGE"], "n_workers": 6, "worker_cpu": 8192, "worker_mem": 32768, "worker_nthreads": 4,
        "scheduler_cpu": 2048, "scheduler_mem": 8192, "scheduler_timeout": "1 hour",
        "security_groups": ["sg-0123"], "fargate_use_private_ip": False, "region_name": "eu-west-1",
        "vpc": "vpc-1", "subnets": ["subnet-a", "subnet-b"], "task_role_arn": FARGATE["TASK_ROLE_ARN"],
        "execution_role_arn": "arn:aws:iam::111122223333:role/exec", "cloudwatch_logs_group": "/aws/batch/impressions",
        "environment": {"DASK_IMPRESSIONS__CATALOG": "glue"}, "tags": {"application": "impressions", "team": "ads"}}


def test_ecs_arguments_need_an_existing_cluster(config):
    s = config(**{**FARGATE, "CLUSTER": "ecs"})
    with pytest.raises(UsageError, match="cluster-arn"):
        cluster_kwargs(s)
    s = config(**{**FARGATE, "CLUSTER": "ecs"}, CLUSTER_ARN="arn:aws:ecs:eu-west-1:111122223333:cluster/dask")
    kwargs = cluster_kwargs(s)
    assert cluster_class(s) == "ECSCluster"
    assert kwargs["cluster_arn"].endswith(":cluster/dask")
    assert kwargs["fargate_scheduler"] is False and kwargs["fargate_workers"] is False


@pytest.mark.parametrize("values, message", [
    ({"CLUSTER": "kubernetes"}, "must be null, 'fargate' or 'ecs'"),
    ({"N_WORKERS": "-1"}, "n-workers must be between 0 and 10000"),
    ({"WORKER_CPU": "100"}, "worker-cpu must be at least 256"),
    ({"SCHEDULER_TIMEOUT": "'never'"}, "scheduler-timeout must be a duration"),
    ({"SECURITY_GROUPS": "42"}, "security-groups must be a list of strings"),
    ({"ENVIRONMENT": "'x'"}, "environment must be a mapping"),
])
def test_bad_cloudprovider_settings_are_usage_errors(config, values, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        config(**values)


def test_nothing_is_opened_to_the_world(config):
    """Without our own security groups dask-cloudprovider would create one open to 0.0.0.0/0 on 8786-8787."""
    s = config(**{k: v for k, v in FARGATE.items() if k != "SECURITY_GROUPS"})
    with pytest.raises(UsageError, match="security-groups"):
        cluster_kwargs(s)
    s = config(**{k: v for k, v in FARGATE.items() if k != "IMAGE"})
    with pytest.raises(UsageError, match="image"):
        cluster_kwargs(s)


def pinned_version() -> str:
    text = (ROOT / "cluster" / "cloudprovider-constraints.txt").read_text()
    return re.search(r"^dask-cloudprovider==(\S+)$", text, re.M).group(1)


def test_the_arguments_are_named_parameters_of_dask_cloudprovider(config, tmp_path):
    target = tmp_path / "cloudprovider"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                          "--target", str(target), f"dask-cloudprovider=={pinned_version()}"],
                         capture_output=True, text=True, timeout=300)
    if got.returncode:
        pytest.skip(f"dask-cloudprovider could not be installed here: {got.stderr.strip()[-300:]}")
    for kind in ("FARGATE", "ECS"):
        s = config(**{**FARGATE, "CLUSTER": kind.lower(), "CLUSTER_ARN": "arn:aws:ecs:eu-west-1:1:cluster/c"})
        script = ("import inspect, json, sys\n"
                  "from dask_cloudprovider.aws import ECSCluster, FargateCluster\n"
                  "params = inspect.signature(ECSCluster.__init__).parameters\n"
                  "print(json.dumps(sorted(k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD)))\n")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(target)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        named = set(json.loads(proc.stdout))
        assert set(cluster_kwargs(s)) <= named, set(cluster_kwargs(s)) - named


def test_a_configured_cluster_without_the_extra_is_one_line(config, tmp_path):
    """connect() (the one decision point) starts the configured cluster, or says in one line how to install it."""
    from cluster import connect

    config(**FARGATE)
    with pytest.raises(UsageError, match="dask-cloudprovider is not installed: pip install -c "
                                         "cluster/cloudprovider-constraints.txt"):
        with connect(None, workers=1):
            pytest.fail("no cluster can start without dask-cloudprovider")
    # and through the command line: a command that starts a cluster stops there, exit 2, one line
    from pipeline.generate import generate

    files = generate(str(tmp_path / "gen"), rows=100, days=1, campaigns=2, changed=1, seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_IMPRESSIONS__")}
    env.update({f"DASK_IMPRESSIONS__CLOUDPROVIDER__{k}": v for k, v in FARGATE.items()})
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--warehouse", str(tmp_path / "wh"), "partition",
                           files["impressions"], "FACT_PARTITIONED"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dask-cloudprovider is not installed" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
