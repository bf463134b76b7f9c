"""`impressions node [JOB]`: the one command of every node of the AWS Batch multi-node job.

The node's role comes from the Batch variables (cluster/batchenv.py); the main node runs the scheduler and the
JOB (cluster/roles.py MainNode), every other node runs workers (ChildNode). Exit status: the JOB's on the main
node (the job's own status in Batch); 1 when too few workers came or no scheduler answered; 2 for a usage error.
"""
from __future__ import annotations

import os

from .batchenv import batch_node
from .jobrun import JobOptions, PreparedJob, parse_job
from .roles import ChildNode, MainNode
from .settings import load_node_settings


def main(job: str | None, args) -> int:
    """Called by the CLI (pipeline/cli.py); UsageError and LoadError are turned into exit codes there."""
    node = batch_node(os.environ)
    settings = load_node_settings()
    if not node.is_main:
        return ChildNode(node, settings).run()
    options = JobOptions(warehouse=getattr(args, "warehouse", None), catalog=getattr(args, "catalog", None),
                         cloudwatch=bool(getattr(args, "cloudwatch", False)))
    prepared = PreparedJob(parse_job(job, os.environ), options)
    try:
        return MainNode(node, settings, prepared).run()
    finally:
        prepared.close()
