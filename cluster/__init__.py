"""Which Dask client? A LocalCluster, a running scheduler, or (on AWS Batch) the node's role."""

from .local import connect

__all__ = ["connect"]
