"""The `impressions.node.*` and `impressions.cloudprovider.*` settings, resolved once into frozen dataclasses.

Same rules as pipeline/config.py: shipped YAML defaults < DASK_IMPRESSIONS__NODE__... environment < keyword
overrides. A bad value is a UsageError (exit 2, one line), found before any process or AWS call starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import dask.config
from dask.utils import parse_timedelta

import pipeline.config  # noqa: F401  (loads the shipped impressions.yaml defaults into dask.config)
from pipeline.errors import UsageError


def _get(key: str, override=None):
    return dask.config.get(f"impressions.{key}", override_with=override)


def _int(key: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise UsageError(f"impressions.{key} must be an integer, got {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise UsageError(f"impressions.{key} must be an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"impressions.{key} must be {bound}, got {number}")
    return number


def _seconds(key: str, value, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError):
        raise UsageError(f"impressions.{key} must be a duration such as '90s' or '10 minutes', got {value!r}") \
            from None
    if seconds is None or seconds <= 0:
        raise UsageError(f"impressions.{key} must be a positive duration, got {value!r}")
    return float(seconds)


def _port(key: str, value) -> int:
    return _int(key, value, 1, 65535)


@dataclass(frozen=True)
class NodeSettings:
    """How the nodes of the AWS Batch multi-node job meet, and how long anything may wait."""
    scheduler_port: int
    dashboard_port: int
    host: str | None           # where the main node's scheduler listens; None = every interface
    wait_timeout: float        # main node: seconds to wait for NUM_NODES - 1 workers
    death_timeout: float       # child node: seconds to wait for a scheduler that never comes
    worker_processes: int      # worker processes per child node
    worker_threads: int        # threads per worker process
    job_timeout: float | None  # main node: the JOB is stopped after this long (None: Batch's own timeout)
    poll_interval: float       # `submit`: seconds between DescribeJobs calls
    follow_timeout: float      # `submit`: give up following the job after this long


def load_node_settings(**overrides) -> NodeSettings:
    """Read `impressions.node.*`; keyword overrides (node.<key> with '_' for '-') win when not None."""
    def get(key):
        return _get(f"node.{key}", overrides.get(key.replace("-", "_")))

    processes = _int("node.worker-processes", get("worker-processes"), 1, 1024)
    threads = get("worker-threads")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // processes)  # all cores of the node, split over its processes
    host = get("host")
    return NodeSettings(
        scheduler_port=_port("node.scheduler-port", get("scheduler-port")),
        dashboard_port=_port("node.dashboard-port", get("dashboard-port")),
        host=str(host) if host else None,
        wait_timeout=_seconds("node.wait-timeout", get("wait-timeout")),
        death_timeout=_seconds("node.death-timeout", get("death-timeout")),
        worker_processes=processes,
        worker_threads=_int("node.worker-threads", threads, 1, 4096),
        job_timeout=_seconds("node.job-timeout", get("job-timeout"), allow_none=True),
        poll_interval=_seconds("node.poll-interval", get("poll-interval")),
        follow_timeout=_seconds("node.follow-timeout", get("follow-timeout")),
    )


CLUSTER_KINDS = ("fargate", "ecs")


@dataclass(frozen=True)
class CloudProviderSettings:
    """A dask-cloudprovider ECS/Fargate cluster for interactive work from a laptop (optional extra)."""
    cluster: str | None            # None (off), "fargate" or "ecs"
    image: str | None
    region: str | None
    n_workers: int
    worker_cpu: int                # milli-vCPU (1024 = one vCPU), as ECS counts it
    worker_mem: int                # MiB
    worker_nthreads: int | None
    scheduler_cpu: int
    scheduler_mem: int
    scheduler_timeout: str         # the scheduler task ends when no client has been connected this long
    cluster_arn: str | None        # an existing ECS cluster (required for "ecs")
    vpc: str | None
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    task_role_arn: str | None
    execution_role_arn: str | None
    log_group: str | None
    private_ip: bool               # reach the scheduler by its private IP (VPN / SSM tunnel)
    environment: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


def _strings(key: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"impressions.{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _mapping(key: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"impressions.{key} must be a mapping, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def load_cloudprovider_settings(**overrides) -> CloudProviderSettings:
    """Read `impressions.cloudprovider.*`; nothing here imports dask_cloudprovider or contacts AWS."""
    def get(key):
        return _get(f"cloudprovider.{key}", overrides.get(key.replace("-", "_")))

    kind = get("cluster")
    if kind is not None and kind not in CLUSTER_KINDS:
        raise UsageError(f"impressions.cloudprovider.cluster must be null, 'fargate' or 'ecs', got {kind!r}")
    nthreads = get("worker-nthreads")
    timeout = get("scheduler-timeout")
    _seconds("cloudprovider.scheduler-timeout", timeout)
    return CloudProviderSettings(
        cluster=kind,
        image=get("image") or None,
        region=get("region") or None,
        n_workers=_int("cloudprovider.n-workers", get("n-workers"), 0, 10_000),
        worker_cpu=_int("cloudprovider.worker-cpu", get("worker-cpu"), 256),
        worker_mem=_int("cloudprovider.worker-mem", get("worker-mem"), 512),
        worker_nthreads=None if nthreads is None else _int("cloudprovider.worker-nthreads", nthreads, 1),
        scheduler_cpu=_int("cloudprovider.scheduler-cpu", get("scheduler-cpu"), 256),
        scheduler_mem=_int("cloudprovider.scheduler-mem", get("scheduler-mem"), 512),
        scheduler_timeout=str(timeout),
        cluster_arn=get("cluster-arn") or None,
        vpc=get("vpc") or None,
        subnets=_strings("cloudprovider.subnets", get("subnets")),
        security_groups=_strings("cloudprovider.security-groups", get("security-groups")),
        task_role_arn=get("task-role-arn") or None,
        execution_role_arn=get("execution-role-arn") or None,
        log_group=get("log-group") or None,
        private_ip=bool(get("private-ip")),
        environment=_mapping("cloudprovider.environment", get("environment")),
        tags=_mapping("cloudprovider.tags", get("tags")),
    )
