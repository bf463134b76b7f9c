"""Which node am I? The AWS Batch multi-node variables, read as plain data (no AWS call, no process).

Batch sets AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_MAIN_NODE_INDEX and AWS_BATCH_JOB_NUM_NODES on every node of a
multi-node parallel job, and AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS on the child nodes only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from pipeline.errors import UsageError

NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"


@dataclass(frozen=True)
class BatchNode:
    index: int
    main_index: int
    num_nodes: int
    main_address: str | None  # the main node's private IPv4 address (child nodes only)
    job_id: str | None = None
    queue: str | None = None
    compute_environment: str | None = None

    @property
    def is_main(self) -> bool:
        return self.index == self.main_index

    @property
    def workers_expected(self) -> int:
        """Every node but the main one runs a worker."""
        return self.num_nodes - 1

    @property
    def label(self) -> str:
        return f"node {self.index}/{self.num_nodes}" + (" (main)" if self.is_main else "")


def _index(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise UsageError(f"{name} must not be negative, got {value}")
    return value


def batch_node(environ: Mapping[str, str]) -> BatchNode:
    """The node's role from the Batch variables; a UsageError (one line) when they are missing or inconsistent."""
    missing = [n for n in (NODE_INDEX, MAIN_NODE_INDEX, NUM_NODES) if not environ.get(n)]
    if missing:
        raise UsageError(f"not an AWS Batch multi-node job: {', '.join(missing)} not set "
                         "(`impressions node` is the command of the job definition's nodes)")
    index, main, num = (_index(environ, n) for n in (NODE_INDEX, MAIN_NODE_INDEX, NUM_NODES))
    if num < 2:
        raise UsageError(f"{NUM_NODES}={num}: the main node runs only the scheduler, so a job needs at least 2 nodes")
    if not (index < num and main < num):
        raise UsageError(f"node index {index} and main node index {main} must be below {NUM_NODES}={num}")
    address = environ.get(MAIN_NODE_ADDRESS) or None
    if index != main and not address:
        raise UsageError(f"child node {index}: {MAIN_NODE_ADDRESS} not set, so the scheduler cannot be found")
    return BatchNode(index=index, main_index=main, num_nodes=num, main_address=address,
                     job_id=environ.get("AWS_BATCH_JOB_ID"), queue=environ.get("AWS_BATCH_JQ_NAME"),
                     compute_environment=environ.get("AWS_BATCH_CE_NAME"))
