"""`impressions submit` and batch/deploy.sh, against moto's server on 127.0.0.1 (tests/conftest.py).

The SubmitJob request is checked with botocore's own validator against the Batch service model; the real flow
(DescribeJobDefinitions, SubmitJob, DescribeJobs until the end) runs through boto3 against moto's Batch, which
runs jobs without Docker when configured so. moto's gaps (measured): DescribeJobDefinitions drops
nodeProperties, nodeOverrides are ignored, jobs end SUCCEEDED at once, a compute environment needs a service
role, and CloudFormation cannot deploy batch/stack.yaml; those steps are for real AWS (docs/aws.md).
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

from cluster.submit import (forwarded_environment, job_name, node_rule_problems, request_problems, submit_request,
                            tunnel_command)

ROOT = Path(__file__).resolve().parents[1]


def submit_input_shape():
    return botocore.session.get_session().get_service_model("batch").operation_model("SubmitJob").input_shape


def validation_errors(request: dict) -> str:
    report = ParamValidator().validate(request, submit_input_shape())
    return report.generate_report() if report.has_errors() else ""


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASK_IMPRESSIONS__", "IMPRESSIONS_", "AWS_BATCH_")) and k != "DASK_SCHEDULER_ADDRESS"}
    env.update(extra)
    return env


def impressions(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]  # stdout: JSON lines only


def one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the request (no AWS)


def test_the_request_is_valid_for_botocore_and_carries_the_job_to_every_node():
    request = submit_request("s3://b/jobs/daily.yaml", "impressions-queue", "impressions-node:3", nodes=4,
                             environment={"DASK_IMPRESSIONS__WAREHOUSE": "s3://b/tables"})
    assert validation_errors(request) == ""
    assert request["jobName"] == "impressions-daily" and request["jobQueue"] == "impressions-queue"
    overrides = request["nodeOverrides"]
    assert overrides["numNodes"] == 4
    (node_range,) = overrides["nodePropertyOverrides"]
    assert node_range["targetNodes"] == "0:"
    assert node_range["containerOverrides"]["environment"] == [
        {"name": "IMPRESSIONS_JOB", "value": "s3://b/jobs/daily.yaml"},
        {"name": "DASK_IMPRESSIONS__WAREHOUSE", "value": "s3://b/tables"}]
    assert "numNodes" not in submit_request("s3://b/j.sh", "q", "d")["nodeOverrides"]
    # the validator really validates: what botocore refuses, it reports
    broken = json.loads(json.dumps(request))
    broken["nodeOverrides"]["numNodes"] = "4"
    del broken["nodeOverrides"]["nodePropertyOverrides"][0]["targetNodes"]
    report = validation_errors(broken)
    assert "numNodes" in report and "targetNodes" in report


def test_job_names_and_forwarded_configuration():
    assert job_name("s3://b/jobs/daily.yaml") == "impressions-daily"
    assert job_name("s3://b/jobs/my job.v2.sh") == "impressions-my-job-v2"
    assert len(job_name("s3://b/" + "x" * 300 + ".yaml")) == 128
    env = {"DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT": "5m", "IMPRESSIONS_DEBUG": "1", "HOME": "/root",
           "AWS_SECRET_ACCESS_KEY": "never", "DASK_SCHEDULER_ADDRESS": "tcp://laptop:8786"}
    assert forwarded_environment(env, warehouse="s3://b/t", catalog="glue") == {
        "DASK_IMPRESSIONS__CATALOG": "glue", "DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT": "5m",
        "DASK_IMPRESSIONS__WAREHOUSE": "s3://b/t", "IMPRESSIONS_DEBUG": "1"}
    assert request_problems("jobs/daily.yaml", 1) == [
        "JOB must be an s3:// URL of an object the nodes can read, got jobs/daily.yaml",
        "--nodes must be at least 2 (the main node runs only the scheduler), got 1"]
    assert request_problems("s3:///daily.yaml", 3)[0].startswith("JOB must be an s3:// URL")  # no bucket
    assert request_problems("s3://b/jobs/", 3)[0].startswith("JOB must be an s3:// URL")  # a prefix, not a file
    assert request_problems("s3://b/daily.yaml", 3, " ", "d") == ["--job-queue must not be empty"]
    assert "is relative" in request_problems("s3://b/daily.yaml", 3, environment={
        "DASK_IMPRESSIONS__WAREHOUSE": "./warehouse"})[0]
    assert request_problems("s3://b/daily.yaml", 3, environment={"DASK_IMPRESSIONS__WAREHOUSE": "/efs/tables"}) == []


def test_the_dashboard_tunnel_never_needs_an_open_port():
    assert tunnel_command("i-0abc", "10.0.1.23", 8787) == (
        "aws ssm start-session --target i-0abc --document-name AWS-StartPortForwardingSessionToRemoteHost "
        "--parameters host=10.0.1.23,portNumber=8787,localPortNumber=8787")


def definition(num_nodes=3, main=0, ranges=("0:",), kind="multinode") -> dict:
    return {"jobDefinitionName": "impressions-node", "type": kind,
            "nodeProperties": {"numNodes": num_nodes, "mainNode": main,
                               "nodeRangeProperties": [{"targetNodes": r, "container": {}} for r in ranges]}}


def test_the_multi_node_rules_botocore_does_not_check():
    assert node_rule_problems(definition(), None) == []
    assert node_rule_problems(definition(), 8) == []
    assert node_rule_problems(definition(ranges=("0:0", "1:")), 5) == []
    assert node_rule_problems(definition(main=3), None) == ["impressions-node: mainNode 3 must be below numNodes 3"]
    assert node_rule_problems(definition(main=2), 2) == ["impressions-node: mainNode 2 must be below numNodes 2"]
    assert "open-ended node range" in node_rule_problems(definition(ranges=("0:2",)), 5)[0]
    assert "open-ended node range" in node_rule_problems(definition(ranges=("0:0", "6:")), 5)[0]
    assert "at least 2" in node_rule_problems(definition(num_nodes=1), None)[0]
    assert node_rule_problems(definition(kind="container"), 3) == [
        "impressions-node is a 'container' job definition, not 'multinode'"]
    no_props = {"jobDefinitionName": "x", "type": "multinode"}  # as moto describes it: nothing to check
    assert node_rule_problems(no_props, 3) == []


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed


def test_dry_run_prints_the_request_as_the_last_stdout_line_without_calling_aws():
    env = cli_env(AWS_ENDPOINT_URL=closed_port(), DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT="5m")
    proc = impressions("--warehouse", "s3://b/tables", "submit", "s3://b/jobs/daily.yaml", "--job-queue", "q",
                       "--job-definition", "d:2", "--nodes", "5", "--dry-run", env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = json_lines(proc.stdout)
    request = lines[-1]["submit_job"]
    assert validation_errors(request) == ""
    assert request == submit_request("s3://b/jobs/daily.yaml", "q", "d:2", 5, {
        "DASK_IMPRESSIONS__NODE__WAIT_TIMEOUT": "5m", "DASK_IMPRESSIONS__WAREHOUSE": "s3://b/tables"})


@pytest.mark.parametrize("args, text", [
    (["jobs/daily.yaml"], "JOB must be an s3:// URL"),
    (["s3://b/j.yaml", "--nodes", "1"], "--nodes must be at least 2"),
    (["s3://b/j.json"], "JOB must be a JOB.yaml"),
])
def test_submit_usage_errors_are_one_line(args, text):
    proc = impressions("submit", *args, "--job-queue", "q", "--job-definition", "d", "--dry-run",
                       env=cli_env(AWS_ENDPOINT_URL=closed_port()))
    one_line_error(proc, 2, text)
    assert proc.stdout == ""


# ------------------------------------------------------------------ against moto's Batch


@pytest.fixture(scope="module")
def batch(s3_endpoint):
    """A compute environment, a queue and the multi-node job definition (as the stack makes them) in moto."""
    import boto3
    import requests

    assert requests.post(f"{s3_endpoint}/moto-api/config", json={"batch": {"use_docker": False}},
                         timeout=30).status_code in (200, 201)
    suffix = uuid.uuid4().hex[:8]
    iam, ec2, client = boto3.client("iam"), boto3.client("ec2"), boto3.client("batch")
    role = iam.create_role(RoleName=f"batch-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName=f"nodes-{suffix}")["InstanceProfile"]["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"nodes-{suffix}", Description="nodes", VpcId=vpc)["GroupId"]
    ce = client.create_compute_environment(
        computeEnvironmentName=f"impressions-ce-{suffix}", type="MANAGED", state="ENABLED", serviceRole=role,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64, "instanceTypes": ["c6i.4xlarge"],
                          "subnets": [subnet], "securityGroupIds": [group], "instanceRole": profile})
    queue = client.create_job_queue(jobQueueName=f"impressions-queue-{suffix}", state="ENABLED", priority=1,
                                    computeEnvironmentOrder=[{"order": 1,
                                                              "computeEnvironment": ce["computeEnvironmentArn"]}])
    container = {"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/impressions:abc",
                 "command": ["impressions", "node"], "jobRoleArn": role,
                 "resourceRequirements": [{"type": "VCPU", "value": "16"}, {"type": "MEMORY", "value": "28000"}],
                 "logConfiguration": {"logDriver": "awslogs",
                                      "options": {"awslogs-group": "/aws/batch/impressions"}}}
    node_def = client.register_job_definition(
        jobDefinitionName=f"impressions-node-{suffix}", type="multinode", platformCapabilities=["EC2"],
        nodeProperties={"numNodes": 3, "mainNode": 0,
                        "nodeRangeProperties": [{"targetNodes": "0:", "container": container}]})
    single = client.register_job_definition(jobDefinitionName=f"single-{suffix}", type="container",
                                            containerProperties=container)
    return {"client": client, "queue": queue["jobQueueName"], "queue_arn": queue["jobQueueArn"],
            "definition": node_def["jobDefinitionName"], "definition_arn": node_def["jobDefinitionArn"],
            "single": single["jobDefinitionName"]}


def fast_env(**extra) -> dict:
    return cli_env(DASK_IMPRESSIONS__NODE__POLL_INTERVAL="200ms", DASK_IMPRESSIONS__NODE__FOLLOW_TIMEOUT="60s",
                   **extra)


def test_submit_follows_the_job_to_its_end(batch):
    proc = impressions("--catalog", "glue", "submit", "s3://b/jobs/daily.yaml", "--job-queue", batch["queue"],
                       "--job-definition", batch["definition"], "--nodes", "4", env=fast_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submitted, final = json_lines(proc.stdout)
    assert submitted["event"] == "job_submitted" and submitted["job_definition"] == batch["definition_arn"]
    assert final["event"] == "job_status" and final["status"] == "SUCCEEDED"
    assert final["job_id"] == submitted["job_id"] and final["job_name"] == "impressions-daily"
    assert f"job {submitted['job_id']}: SUCCEEDED" in proc.stderr
    assert "node rules were not checked" in proc.stderr  # moto's DescribeJobDefinitions drops nodeProperties
    assert "Traceback" not in proc.stderr
    (job,) = batch["client"].describe_jobs(jobs=[submitted["job_id"]])["jobs"]
    assert job["jobQueue"] == batch["queue_arn"] and job["status"] == "SUCCEEDED"
    assert job["nodeProperties"]["nodeRangeProperties"][0]["targetNodes"] == "0:"


def test_submit_refuses_what_batch_would_refuse_in_one_line(batch):
    one_line_error(impressions("submit", "s3://b/j.yaml", "--job-queue", batch["queue"], "--job-definition",
                               batch["single"], env=fast_env()), 2, "not 'multinode'")
    one_line_error(impressions("submit", "s3://b/j.yaml", "--job-queue", batch["queue"], "--job-definition",
                               "no-such-definition", env=fast_env()), 2, "job definition no-such-definition not found")
    queue = impressions("submit", "s3://b/j.yaml", "--job-queue", "no-such-queue", "--job-definition",
                        batch["definition"], env=fast_env())
    # moto's note about the unchecked node rules comes first; the error is one line, the last
    assert queue.returncode == 2 and "Traceback" not in queue.stderr and queue.stdout == ""
    assert queue.stderr.strip().splitlines()[-1] == (
        "impressions: error: SubmitJob: ClientException: Job queue no-such-queue does not exist")


# ------------------------------------------------------------------ batch/deploy.sh


def deploy_step(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.deploy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=cli_env())


def test_deploy_uploads_the_job_files_and_prints_a_submit_line_that_works(batch, s3_bucket, s3_endpoint):
    import boto3

    repository = f"impressions-{uuid.uuid4().hex[:8]}"
    ecr = boto3.client("ecr")
    uri = ecr.create_repository(repositoryName=repository, imageTagMutability="IMMUTABLE",
                                imageScanningConfiguration={"scanOnPush": True})["repository"]["repositoryUri"]
    env = cli_env(PYTHON=sys.executable, BUCKET=s3_bucket, REPOSITORY=repository, JOB_QUEUE=batch["queue"],
                  JOB_DEFINITION=batch["definition"])
    proc = subprocess.run([str(ROOT / "batch" / "deploy.sh"), "--no-stack", "--no-image", "--nodes", "3"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    daily, script = proc.stdout.strip().splitlines()
    assert daily == (f"impressions submit s3://{s3_bucket}/jobs/daily.yaml --job-queue {batch['queue']} "
                     f"--job-definition {batch['definition']} --nodes 3")
    assert script.startswith(f"impressions submit s3://{s3_bucket}/jobs/job.sh ")
    s3 = boto3.client("s3")
    uploaded = s3.get_object(Bucket=s3_bucket, Key="jobs/daily.yaml")["Body"].read().decode()
    assert f"s3://{s3_bucket}/input/impressions.csv.gz" in uploaded and "${INPUT}" not in uploaded
    assert s3.get_object(Bucket=s3_bucket, Key="jobs/job.sh")["Body"].read() == (ROOT / "batch" / "job.sh").read_bytes()

    # the printed line, run as printed (dry run: the request; then for real against moto)
    words = shlex.split(daily)
    assert words[0] == "impressions"
    dry = impressions(*words[1:], "--dry-run", env=fast_env())
    assert dry.returncode == 0 and validation_errors(json_lines(dry.stdout)[-1]["submit_job"]) == ""
    real = impressions(*words[1:], env=fast_env())
    assert real.returncode == 0 and json_lines(real.stdout)[-1]["status"] == "SUCCEEDED", real.stderr

    # the other AWS steps deploy.sh calls, one by one against moto
    assert deploy_step("repository-uri", "--repository", repository).stdout.strip() == uri
    assert deploy_step("image-exists", "--repository", repository, "--tag", "abc").returncode == 1
    assert deploy_step("status", "--stack", f"none-{uuid.uuid4().hex[:6]}").stdout.strip() == "NONE"
    missing = deploy_step("repository-uri", "--repository", "no-such-repository")
    assert missing.returncode == 2 and missing.stderr.startswith("deploy: error: DescribeRepositories")


def test_deploy_without_what_it_needs_stops_with_one_line():
    env = cli_env(PYTHON=sys.executable)
    proc = subprocess.run([str(ROOT / "batch" / "deploy.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    one_line_error(proc, 2, "--stack NAME is needed")
    proc = subprocess.run([str(ROOT / "batch" / "deploy.sh"), "--no-stack"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--no-stack needs BUCKET" in proc.stderr
