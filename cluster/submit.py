"""`impressions submit JOB --job-queue Q --job-definition D [--nodes N] [--dry-run]`.

The SubmitJob request is built by a pure function (`submit_request`) and checked against the multi-node rules
botocore does not check (`node_rule_problems`); `--dry-run` prints it as the last stdout line
`{"submit_job": {...}}` without calling AWS. Otherwise the job is submitted and followed to its end: status
changes and the nodes' log streams on stderr, JSON lines on stdout; exit 0 only when it SUCCEEDED.
"""
from __future__ import annotations

import os
import re
import time
from typing import Mapping

from pipeline.errors import LoadError, UsageError
from pipeline.report.loads import emit, say

from .jobrun import JOB_VARIABLE, parse_job
from .settings import NodeSettings, load_node_settings

FINAL = ("SUCCEEDED", "FAILED")
FORWARDED_PREFIX = "DASK_IMPRESSIONS__"
FORWARDED = ("IMPRESSIONS_DEBUG", "IMPRESSIONS_JOB_ARGS")


def job_name(job_url: str) -> str:
    """impressions-<file stem>: Batch allows letters, digits, '-' and '_' (128 at most)."""
    stem = job_url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0].rsplit(".", 1)[0]
    return ("impressions-" + re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-"))[:128].rstrip("-")


def forwarded_environment(environ: Mapping[str, str], warehouse: str | None = None,
                          catalog: str | None = None) -> dict[str, str]:
    """What the nodes should see of the submitter's configuration: DASK_IMPRESSIONS__* variables (the same keys
    as locally), IMPRESSIONS_DEBUG and IMPRESSIONS_JOB_ARGS, and --warehouse/--catalog given to `submit`."""
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIX) or k in FORWARDED}
    if warehouse:
        env["DASK_IMPRESSIONS__WAREHOUSE"] = warehouse
    if catalog:
        env["DASK_IMPRESSIONS__CATALOG"] = catalog
    return dict(sorted(env.items()))


def submit_request(job_url: str, job_queue: str, job_definition: str, nodes: int | None = None,
                   environment: Mapping[str, str] | None = None, name: str | None = None) -> dict:
    """The SubmitJob request: every node (range "0:") gets IMPRESSIONS_JOB and the environment overrides;
    `nodes` overrides the job definition's node count."""
    variables = {JOB_VARIABLE: job_url, **(environment or {})}
    overrides: dict = {"nodePropertyOverrides": [{
        "targetNodes": "0:",
        "containerOverrides": {"environment": [{"name": k, "value": str(v)} for k, v in variables.items()]},
    }]}
    if nodes is not None:
        overrides = {"numNodes": nodes, **overrides}
    return {"jobName": name or job_name(job_url), "jobQueue": job_queue, "jobDefinition": job_definition,
            "nodeOverrides": overrides, "propagateTags": True, "tags": {"application": "impressions"}}


def request_problems(job_url: str, nodes: int | None, job_queue: str = "q", job_definition: str = "d",
                     environment: Mapping[str, str] | None = None) -> list[str]:
    """What can be checked without AWS."""
    problems = []
    if not re.fullmatch(r"s3://[^/]+/.*[^/]", job_url):
        problems.append(f"JOB must be an s3:// URL of an object the nodes can read, got {job_url}")
    if nodes is not None and nodes < 2:
        problems.append(f"--nodes must be at least 2 (the main node runs only the scheduler), got {nodes}")
    for option, value in (("--job-queue", job_queue), ("--job-definition", job_definition)):
        if not value.strip():
            problems.append(f"{option} must not be empty")
    warehouse = (environment or {}).get("DASK_IMPRESSIONS__WAREHOUSE", "")
    if warehouse and "://" not in warehouse and not warehouse.startswith("/"):
        problems.append(f"the warehouse {warehouse!r} (DASK_IMPRESSIONS__WAREHOUSE or --warehouse) is relative: each "
                        "node would have its own; use an s3:// prefix (or an absolute path on a shared file system)")
    return problems


def _node_range(target: str) -> tuple[int, int | None]:
    """'0:', '2:5', ':3', '4' -> (start, end or None for open-ended)."""
    m = re.fullmatch(r"\s*(\d*)\s*(:?)\s*(\d*)\s*", target or "")
    if not m or (not m.group(2) and not m.group(1)):
        raise UsageError(f"unreadable targetNodes {target!r} in the job definition")
    start = int(m.group(1)) if m.group(1) else 0
    if not m.group(2):
        return start, start
    return start, (int(m.group(3)) if m.group(3) else None)


def node_rule_problems(job_definition: dict, nodes: int | None) -> list[str]:
    """The multi-node rules botocore does not check: a multinode definition, mainNode < numNodes, at least two
    nodes, and (to override the count) an open-ended node range that starts below it."""
    name = job_definition.get("jobDefinitionName", "the job definition")
    if job_definition.get("type") != "multinode":
        return [f"{name} is a {job_definition.get('type')!r} job definition, not 'multinode'"]
    props = job_definition.get("nodeProperties")
    if not props:
        return []
    count = nodes if nodes is not None else props.get("numNodes", 0)
    problems = []
    if count < 2:
        problems.append(f"{name}: {count} node(s); the job needs at least 2 (the main node runs only the scheduler)")
    main = props.get("mainNode", 0)
    if main >= count:
        problems.append(f"{name}: mainNode {main} must be below numNodes {count}")
    ranges = [_node_range(r.get("targetNodes", "")) for r in props.get("nodeRangeProperties", [])]
    if nodes is not None and not any(end is None and start < count for start, end in ranges):
        problems.append(f"{name}: --nodes needs an open-ended node range such as '0:' (has "
                        f"{[r.get('targetNodes') for r in props.get('nodeRangeProperties', [])]})")
    return problems


def main(args) -> int:
    settings = load_node_settings()
    parse_job(args.job, {})  # a .yaml or .sh, as the node will read it
    environment = forwarded_environment(os.environ, getattr(args, "warehouse", None), getattr(args, "catalog", None))
    problems = request_problems(args.job, args.nodes, args.job_queue, args.job_definition, environment)
    if problems:
        raise UsageError("; ".join(problems))
    request = submit_request(args.job, args.job_queue, args.job_definition, args.nodes, environment)
    if args.dry_run:
        emit({"submit_job": request})
        return 0

    from .aws import Batch

    batch = Batch()
    definition = batch.job_definition(args.job_definition)
    if definition is None:
        raise UsageError(f"job definition {args.job_definition} not found (or not ACTIVE)")
    problems = node_rule_problems(definition, args.nodes)
    if problems:
        raise UsageError("; ".join(problems))
    if not definition.get("nodeProperties"):
        say(f"impressions submit: DescribeJobDefinitions returned no nodeProperties for "
            f"{args.job_definition}; the node rules were not checked")
    submitted = batch.submit(request)
    job_id = submitted["jobId"]
    emit({"event": "job_submitted", "job_id": job_id, "job_name": submitted.get("jobName"),
          "job_queue": args.job_queue, "job_definition": definition.get("jobDefinitionArn", args.job_definition),
          "job": args.job})
    say(f"impressions submit: job {job_id} submitted to {args.job_queue}")
    job = follow(batch, job_id, settings)
    emit(final_line(job))
    return 0 if job["status"] == "SUCCEEDED" else 1


def final_line(job: dict) -> dict:
    container = job.get("container") or {}
    return {"event": "job_status", "job_id": job["jobId"], "job_name": job.get("jobName"),
            "status": job["status"], "status_reason": job.get("statusReason"),
            "exit_code": container.get("exitCode"), "num_nodes": (job.get("nodeProperties") or {}).get("numNodes"),
            "started": job.get("startedAt"), "stopped": job.get("stoppedAt")}


def follow(batch, job_id: str, settings: NodeSettings, sleep=time.sleep, clock=time.monotonic) -> dict:
    """Poll DescribeJobs until the job ends; say each status change of the job and of its nodes (with their
    log stream names) on stderr. Gives up after node.follow-timeout (the job itself goes on)."""
    deadline = clock() + settings.follow_timeout
    said: dict[str, tuple] = {}
    while True:
        found = batch.jobs([job_id])
        if not found:
            raise LoadError(f"job {job_id} is not known to DescribeJobs")
        job = found[0]
        _say_change(said, "job", (job["status"], job.get("statusReason")),
                    f"job {job_id}: {job['status']}" + (f" ({job['statusReason']})" if job.get("statusReason") else ""))
        if job["status"] in ("STARTING", "RUNNING", *FINAL):
            _say_nodes(batch, job, said, settings.dashboard_port)
        if job["status"] in FINAL:
            return job
        if clock() >= deadline:
            raise LoadError(f"job {job_id} still {job['status']} after node.follow-timeout "
                            f"({settings.follow_timeout:.0f}s); stopped following it (the job goes on)")
        sleep(settings.poll_interval)


def _say_change(said: dict, key: str, state: tuple, text: str) -> None:
    if said.get(key) != state:
        said[key] = state
        say(f"impressions submit: {text}")


def tunnel_command(instance_id: str, host: str, port: int) -> str:
    """The Session Manager port forwarding that shows the main node's dashboard on localhost (no open port)."""
    return (f"aws ssm start-session --target {instance_id} --document-name AWS-StartPortForwardingSessionToRemoteHost"
            f" --parameters host={host},portNumber={port},localPortNumber={port}")


def _say_nodes(batch, job: dict, said: dict, dashboard_port: int = 8787) -> None:
    """Each node of a multi-node job is the job `ID#INDEX`; its container names its log stream. Once the main
    node runs, how to reach its dashboard."""
    count = (job.get("nodeProperties") or {}).get("numNodes") or 0
    if not count:
        return
    group = _log_group(job)
    for node in batch.jobs([f"{job['jobId']}#{i}" for i in range(count)]):
        details = node.get("nodeDetails") or {}
        index = details.get("nodeIndex", node["jobId"].rsplit("#", 1)[-1])
        container = node.get("container") or {}
        stream = container.get("logStreamName")
        _say_change(said, f"node{index}", (node["status"], stream),
                    f"node {index}: {node['status']}" + (f", log stream {group}/{stream}" if stream else ""))
        ip = next((n.get("privateIpv4Address") for n in container.get("networkInterfaces") or []), None)
        if details.get("isMainNode") and node["status"] == "RUNNING" and ip and "dashboard" not in said:
            instance = batch.instance_id(container["containerInstanceArn"]) \
                if container.get("containerInstanceArn") else None
            said["dashboard"] = ip
            say(f"impressions submit: dashboard of the main node ({ip}:{dashboard_port}): "
                + (f"{tunnel_command(instance, ip, dashboard_port)}, then open "
                   f"http://localhost:{dashboard_port}/status" if instance else
                   "open an SSM or SSH tunnel to it through an instance of the compute environment"))


def _log_group(job: dict) -> str:
    for r in (job.get("nodeProperties") or {}).get("nodeRangeProperties", []):
        options = ((r.get("container") or {}).get("logConfiguration") or {}).get("options") or {}
        if options.get("awslogs-group"):
            return options["awslogs-group"]
    return "/aws/batch/job"
