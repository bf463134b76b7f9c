"""Which Dask client? A LocalCluster, a running scheduler, an ECS/Fargate cluster (dask-cloudprovider), or on
AWS Batch the node's role (node.py). `connect` (connect.py) is the one place that decides."""

from .connect import connect

__all__ = ["connect"]
