"""An ECS/Fargate Dask cluster from a laptop, for interactive work (the optional `cloudprovider` extra).

`cluster_kwargs` builds dask-cloudprovider's constructor arguments from `impressions.cloudprovider.*` as plain
data (tested without AWS); `start` is the only place that imports dask_cloudprovider, so the main install
never needs it. The daily load runs as the Batch job instead (docs/aws.md says when to use which).
"""
from __future__ import annotations

from pipeline.errors import UsageError

from .settings import CloudProviderSettings

INSTALL_HINT = ("pip install -c cluster/cloudprovider-constraints.txt -e '.[cloudprovider]' "
                "(under the project's pins, so boto3, botocore and Dask stay as they are)")


def cluster_class(settings: CloudProviderSettings) -> str:
    return {"fargate": "FargateCluster", "ecs": "ECSCluster"}[settings.cluster]


def cluster_kwargs(settings: CloudProviderSettings) -> dict:
    """FargateCluster/ECSCluster keyword arguments. Refuses what would expose the cluster: without our own
    security groups, dask-cloudprovider creates one that opens 8786 and 8787 to 0.0.0.0/0."""
    s = settings
    if s.cluster is None:
        raise UsageError("impressions.cloudprovider.cluster is null: set it to 'fargate' or 'ecs'")
    problems = []
    if not s.image:
        problems.append("impressions.cloudprovider.image (the ECR image built from docker/Dockerfile)")
    if not s.security_groups:
        problems.append("impressions.cloudprovider.security-groups (else a group open to the world is created)")
    if s.cluster == "ecs" and not s.cluster_arn:
        problems.append("impressions.cloudprovider.cluster-arn (an ECS cluster with EC2 capacity)")
    if problems:
        raise UsageError("cloudprovider cluster needs " + "; ".join(problems))
    kwargs = {
        "image": s.image,
        "n_workers": s.n_workers,
        "worker_cpu": s.worker_cpu,
        "worker_mem": s.worker_mem,
        "scheduler_cpu": s.scheduler_cpu,
        "scheduler_mem": s.scheduler_mem,
        "scheduler_timeout": s.scheduler_timeout,
        "security_groups": list(s.security_groups),
        "fargate_use_private_ip": s.private_ip,
        "environment": dict(s.environment),
        "tags": {"application": "impressions", **s.tags},
    }
    optional = {"worker_nthreads": s.worker_nthreads, "region_name": s.region, "cluster_arn": s.cluster_arn,
                "vpc": s.vpc, "subnets": list(s.subnets) or None, "task_role_arn": s.task_role_arn,
                "execution_role_arn": s.execution_role_arn, "cloudwatch_logs_group": s.log_group}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if s.cluster == "ecs":
        kwargs.update(fargate_scheduler=False, fargate_workers=False)
    return kwargs


def start(settings: CloudProviderSettings):
    """Start the cluster (minutes: tasks are provisioned); the caller closes it."""
    kwargs = cluster_kwargs(settings)
    try:
        from dask_cloudprovider.aws import ECSCluster, FargateCluster
    except ImportError:
        raise UsageError(f"impressions.cloudprovider.cluster is {settings.cluster!r} but dask-cloudprovider is "
                         f"not installed: {INSTALL_HINT}") from None
    cls = FargateCluster if settings.cluster == "fargate" else ECSCluster
    return cls(**kwargs)
