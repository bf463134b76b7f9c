"""batch/stack.yaml, the whole AWS stack as one CloudFormation template: linted (cfn-lint, checkov) and read.

The linters run from their own pinned virtualenv (batch/tools.sh; checkov's boto3 pins conflict with ours), and
checkov runs without network (`unshare -n` where possible, `--skip-download` always). The structural tests read
the template as data and check what a reviewer would: the job role reaches only its prefixes (evaluated as IAM
would, on concrete ARNs), nothing is open to the internet, port 8787 never public, MNP-compatible compute.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "batch" / "stack.yaml"
SCRIPTS = [ROOT / "batch" / "job.sh", ROOT / "batch" / "deploy.sh", ROOT / "batch" / "tools.sh",
           ROOT / "docker" / "build.sh"]


# ------------------------------------------------------------------ reading the template


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...) read as their long forms."""


def _short_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _short_tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resources(template: dict, kind: str) -> dict:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


# concrete values to evaluate the template's strings with (what CloudFormation would substitute)
VALUES = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "111122223333",
          "AWS::StackName": "impressions", "DataBucket": "data-bucket", "DataBucket.Arn": "arn:aws:s3:::data-bucket",
          "LogGroup": "/aws/batch/impressions",
          "LogGroup.Arn": "arn:aws:logs:eu-west-1:111122223333:log-group:/aws/batch/impressions:*",
          "JobQueue": "arn:aws:batch:eu-west-1:111122223333:job-queue/impressions-queue",
          "JobDefinition": "arn:aws:batch:eu-west-1:111122223333:job-definition/impressions-node:1",
          "Repository": "impressions-repository", "NodeSecurityGroup": "sg-0123", "GlueDatabase": "impressions",
          "Dashboard": "impressions-loads",
          "Repository.RepositoryUri": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/impressions-repository"}


def evaluate(value, template: dict):
    """A template value with Ref/Sub/GetAtt resolved against VALUES and the parameters' defaults."""
    params = {k: str(p.get("Default")) for k, p in template["Parameters"].items()}
    known = {**params, **VALUES}
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return None if arg == "AWS::NoValue" else known[arg]
        if fn == "Fn::If":  # conditions of the form !Equals [!Ref Param, "value"], with the defaults
            name, yes, no = arg
            left, right = evaluate(template["Conditions"][name]["Fn::Equals"], template)
            return evaluate(yes if left == right else no, template)
        if fn == "Fn::GetAtt":
            return known[".".join(arg)]
        if fn == "Fn::Sub":
            return re.sub(r"\$\{([^}]+)\}", lambda m: known[m.group(1)], arg)
    if isinstance(value, list):
        return [v for v in (evaluate(v, template) for v in value) if v is not None]
    if isinstance(value, dict):
        return {k: evaluate(v, template) for k, v in value.items()}
    return value


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed(statements: list[dict], action: str, resource: str, context: dict | None = None) -> bool:
    """Identity-policy evaluation as IAM does it for these statements (wildcards, StringLike/StringEquals)."""
    context = context or {}
    verdict = False
    for st in statements:
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in as_list(st["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in as_list(st["Resource"])):
            continue
        ok = True
        for operator, conditions in st.get("Condition", {}).items():
            for key, expected in conditions.items():
                got = context.get(key)
                match = {"StringLike": lambda e: got is not None and fnmatch.fnmatchcase(got, e),
                         "StringEquals": lambda e: got == e}[operator]
                ok &= any(match(e) for e in as_list(expected))
        if ok:
            if st["Effect"] == "Deny":
                return False
            verdict = True
    return verdict


@pytest.fixture(scope="module")
def job_role_statements(template) -> list[dict]:
    role = template["Resources"]["JobRole"]["Properties"]
    return [s for p in role["Policies"] for s in evaluate(p["PolicyDocument"], template)["Statement"]]


# ------------------------------------------------------------------ linters


@pytest.fixture(scope="session")
def tools() -> Path:
    """The linters' own virtualenv (installed once, cached by batch/tools.sh)."""
    proc = subprocess.run([str(ROOT / "batch" / "tools.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_template_is_cfn_lint_clean(tools):
    proc = subprocess.run([str(tools / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def offline(cmd: list[str]) -> list[str]:
    """In a network namespace of its own where the kernel lets us (no traffic leaves the machine)."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *cmd]
    return cmd


def test_template_is_checkov_clean_and_every_skip_says_why(tools, template):
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_ENABLE_UPDATE_CHECK": "false"}
    proc = subprocess.run(offline([str(tools / "checkov"), "-f", str(TEMPLATE), "--framework", "cloudformation",
                                   "--skip-download", "--quiet", "-o", "json"]),
                          capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(proc.stdout)
    failed = report.get("results", {}).get("failed_checks", [])
    assert report["summary"]["failed"] == 0, [(f["check_id"], f["resource"]) for f in failed]
    assert report["summary"]["passed"] >= 40 and report["summary"]["parsing_errors"] == 0
    skips = [(name, s) for name, r in template["Resources"].items()
             for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skips and report["summary"]["skipped"] == len(skips)
    for name, skip in skips:
        assert len(skip.get("comment", "")) > 40, f"{name}: checkov skip {skip['id']} without its reason"


def test_scripts_are_shellcheck_clean(tools):
    proc = subprocess.run([str(tools / "shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ IAM


def test_no_statement_allows_every_action_or_every_resource_where_a_narrower_one_exists(template):
    for name, role in resources(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for st in evaluate(policy["PolicyDocument"], template)["Statement"]:
                actions = as_list(st["Action"])
                assert not any(a == "*" or a.endswith(":*") for a in actions), (name, st)
                if "*" in as_list(st["Resource"]):
                    # only actions without resource-level permissions, and then with a condition
                    assert actions == ["cloudwatch:PutMetricData"] and st.get("Condition"), (name, st)


def test_the_job_role_reaches_only_its_prefixes(job_role_statements):
    st, arn = job_role_statements, "arn:aws:s3:::data-bucket"
    # reads: inputs and job files; read/write: tables; nothing else in the bucket, nothing in other buckets
    assert allowed(st, "s3:GetObject", f"{arn}/input/2026/11/impressions.csv.gz")
    assert allowed(st, "s3:GetObject", f"{arn}/jobs/daily.yaml")
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert allowed(st, action, f"{arn}/tables/impressions/fact_joined/data/x.parquet"), action
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not allowed(st, action, f"{arn}/input/impressions.csv.gz"), action
        assert not allowed(st, action, f"{arn}/jobs/daily.yaml"), action
    for key in ("other/secret.csv", "tablesX/x", "inputs/x", "x/tables/y"):
        assert not allowed(st, "s3:GetObject", f"{arn}/{key}"), key
    assert not allowed(st, "s3:GetObject", "arn:aws:s3:::another-bucket/input/x.gz")
    assert not allowed(st, "s3:DeleteBucket", arn)
    assert not allowed(st, "s3:PutBucketPolicy", arn)
    # listing: only under its prefixes (s3fs lists "tables/..." prefixes; never the bucket root)
    for prefix in ("tables/impressions/fact/", "input/", "jobs/daily.yaml", "tables"):
        assert allowed(st, "s3:ListBucket", arn, {"s3:prefix": prefix}), prefix
    for prefix in ("", "other/", "tablesX/"):
        assert not allowed(st, "s3:ListBucket", arn, {"s3:prefix": prefix}), prefix
    assert not allowed(st, "s3:ListBucket", arn)  # no prefix at all
    assert allowed(st, "s3:PutBucketTagging", arn)  # the row-count tags of the warehouse bucket


def test_the_job_role_uses_only_its_glue_database_metrics_namespace_and_log_group(job_role_statements):
    st, glue = job_role_statements, "arn:aws:glue:eu-west-1:111122223333"
    for action in ("glue:GetTable", "glue:CreateTable", "glue:UpdateTable"):
        assert allowed(st, action, f"{glue}:table/impressions/fact_updated"), action
        assert not allowed(st, action, f"{glue}:table/other_db/fact_updated"), action
    assert allowed(st, "glue:GetDatabase", f"{glue}:database/impressions")
    assert not allowed(st, "glue:GetDatabase", f"{glue}:database/other_db")
    assert not allowed(st, "glue:DeleteDatabase", f"{glue}:database/impressions")
    assert not allowed(st, "glue:DeleteTable", f"{glue}:table/impressions/fact_updated")
    assert allowed(st, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "Impressions"})
    assert not allowed(st, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "AWS/EC2"})
    assert not allowed(st, "cloudwatch:PutMetricData", "*")
    group = "arn:aws:logs:eu-west-1:111122223333:log-group:/aws/batch/impressions"
    assert allowed(st, "logs:PutLogEvents", f"{group}:log-stream:node-0")
    assert not allowed(st, "logs:PutLogEvents", "arn:aws:logs:eu-west-1:111122223333:log-group:/other:log-stream:x")
    assert not allowed(st, "logs:DeleteLogGroup", f"{group}:*")


def test_roles_are_assumed_only_by_their_services(template):
    expected = {"JobRole": "ecs-tasks.amazonaws.com", "InstanceRole": "ec2.amazonaws.com",
                "EventsRole": "events.amazonaws.com"}
    roles = resources(template, "AWS::IAM::Role")
    assert set(roles) == set(expected)
    for name, service in expected.items():
        (st,) = roles[name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert st["Principal"] == {"Service": service} and st["Action"] == "sts:AssumeRole"
    instance = evaluate(roles["InstanceRole"]["Properties"]["ManagedPolicyArns"], template)
    assert "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role" in instance
    events = [s for p in roles["EventsRole"]["Properties"]["Policies"]
              for s in evaluate(p["PolicyDocument"], template)["Statement"]]
    assert allowed(events, "batch:SubmitJob", VALUES["JobQueue"])
    assert allowed(events, "batch:SubmitJob", "arn:aws:batch:eu-west-1:111122223333:job-definition/impressions-node:7")
    assert not allowed(events, "batch:SubmitJob", "arn:aws:batch:eu-west-1:111122223333:job-definition/other:1")
    assert not allowed(events, "batch:TerminateJob", VALUES["JobQueue"])


# ------------------------------------------------------------------ network


def test_no_ingress_from_anywhere_and_port_8787_never_public(template):
    groups = resources(template, "AWS::EC2::SecurityGroup")
    assert list(groups) == ["NodeSecurityGroup"]
    assert "SecurityGroupIngress" not in groups["NodeSecurityGroup"]["Properties"]
    ingress = resources(template, "AWS::EC2::SecurityGroupIngress")
    assert ingress, "the nodes must reach each other"
    for name, rule in ingress.items():
        p = rule["Properties"]
        # the only source is the group itself: no CIDR at all, so neither 0.0.0.0/0 nor ::/0 reaches 8786/8787
        assert p["SourceSecurityGroupId"] == {"Ref": "NodeSecurityGroup"}, name
        assert p["GroupId"] == {"Ref": "NodeSecurityGroup"}, name
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(p), name
    for name, r in template["Resources"].items():  # nowhere in the template is a world-open ingress
        text = json.dumps(r)
        if "Ingress" in r["Type"] or "SecurityGroupIngress" in text:
            assert "0.0.0.0/0" not in text and "::/0" not in text, name
    egress = groups["NodeSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert [(e["FromPort"], e["ToPort"]) for e in egress if "CidrIp" in e] == [(443, 443)]


# ------------------------------------------------------------------ Batch, data, image, logs, schedules


def test_compute_environment_queue_and_placement_fit_multi_node_jobs(template):
    (ce,) = resources(template, "AWS::Batch::ComputeEnvironment").values()
    cr = ce["Properties"]["ComputeResources"]
    assert ce["Properties"]["Type"] == "MANAGED" and cr["Type"] == "EC2"  # no Fargate, no Spot for MNP
    assert "SpotIamFleetRole" not in cr and "BidPercentage" not in cr
    assert cr["PlacementGroup"] == {"Ref": "PlacementGroup"} and cr["MinvCpus"] == 0
    assert cr["SecurityGroupIds"] == [{"Ref": "NodeSecurityGroup"}]
    assert template["Resources"]["PlacementGroup"]["Properties"]["Strategy"] == "cluster"
    lt = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    (queue,) = resources(template, "AWS::Batch::JobQueue").values()
    assert queue["Properties"]["ComputeEnvironmentOrder"][0]["ComputeEnvironment"] == {"Ref": "ComputeEnvironment"}


def test_the_job_definition_runs_impressions_node_on_every_node(template):
    (jd,) = resources(template, "AWS::Batch::JobDefinition").values()
    p = jd["Properties"]
    assert p["Type"] == "multinode" and p["PlatformCapabilities"] == ["EC2"]
    nodes = p["NodeProperties"]
    assert nodes["MainNode"] == 0 and nodes["NumNodes"] == {"Ref": "NumNodes"}
    assert template["Parameters"]["NumNodes"]["MinValue"] == 2
    (node_range,) = nodes["NodeRangeProperties"]  # one range, open-ended: `submit --nodes N` may change N
    assert node_range["TargetNodes"] == "0:"
    c = node_range["Container"]
    assert c["Command"] == ["impressions", "node"]
    assert c["Image"] == {"Fn::Sub": "${Repository.RepositoryUri}:${ImageTag}"}
    assert c["JobRoleArn"] == {"Fn::GetAtt": ["JobRole", "Arn"]} and c["Privileged"] is False
    log = c["LogConfiguration"]
    assert log["LogDriver"] == "awslogs" and log["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
    env = {e["Name"]: evaluate(e["Value"], template) for e in c["Environment"]}
    assert env["IMPRESSIONS_JOB"] == "s3://data-bucket/jobs/daily.yaml"
    assert env["DASK_IMPRESSIONS__WAREHOUSE"] == "s3://data-bucket/tables"
    assert env["DASK_IMPRESSIONS__CATALOG"] == "glue" and env["DASK_IMPRESSIONS__NAMESPACE"] == "impressions"
    assert env["IMPRESSIONS_INPUT"] == "s3://data-bucket/input"
    # the job definition stops an attempt after the nodes' own job timeout (node.job-timeout, 12 h)
    assert int(template["Parameters"]["JobTimeoutSeconds"]["Default"]) > 12 * 3600


def test_bucket_repository_and_logs_are_locked_down(template):
    bucket = template["Resources"]["DataBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values()) and len(bucket["PublicAccessBlockConfiguration"]) == 4
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("aws:kms", "AES256")
    policy = evaluate(template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"], template)
    (tls,) = policy["Statement"]
    assert tls["Effect"] == "Deny" and tls["Action"] == "s3:*" and tls["Principal"] == "*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    repo = template["Resources"]["Repository"]["Properties"]
    assert repo["ImageScanningConfiguration"] == {"ScanOnPush": True} and repo["ImageTagMutability"] == "IMMUTABLE"
    logs = template["Resources"]["LogGroup"]["Properties"]
    assert logs["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert (resources(template, "AWS::Glue::Database")["GlueDatabase"]["Properties"]["DatabaseInput"]["Name"]
            == {"Ref": "GlueDatabaseName"})


def test_the_daily_schedule_and_the_optional_arrival_rule_submit_the_job(template):
    daily = template["Resources"]["DailyLoad"]["Properties"]
    assert daily["ScheduleExpression"] == {"Ref": "DailySchedule"}
    assert "Condition" not in template["Resources"]["DailyLoad"]
    arrival = template["Resources"]["LoadOnArrival"]
    assert arrival["Condition"] == "OnArrival"
    assert template["Parameters"]["SubmitOnArrival"]["Default"] == "false"
    pattern = evaluate(arrival["Properties"]["EventPattern"], template)
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"] == {"bucket": {"name": ["data-bucket"]}, "object": {"key": [{"prefix": "input/"}]}}
    bucket = template["Resources"]["DataBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    for rule in (daily, arrival["Properties"]):
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Ref": "JobQueue"} and target["RoleArn"] == {"Fn::GetAtt": ["EventsRole", "Arn"]}
        assert target["BatchParameters"]["JobDefinition"] == {"Ref": "JobDefinition"}


def test_outputs_name_what_deploy_and_submit_need(template):
    from cluster.deploy import OUTPUT_NAMES, shell_lines

    outputs = template["Outputs"]
    assert set(OUTPUT_NAMES) == set(outputs)
    lines = shell_lines({k: evaluate(v["Value"], template) for k, v in outputs.items()})
    assert "BUCKET=data-bucket\n" in lines and "JOBS_URL=s3://data-bucket/jobs\n" in lines
    assert "JOB_QUEUE=arn:aws:batch:eu-west-1:111122223333:job-queue/impressions-queue\n" in lines
    assert "REPOSITORY_URI=111122223333.dkr.ecr.eu-west-1.amazonaws.com/impressions-repository\n" in lines


def test_the_stack_dashboard_is_the_one_the_queries_module_builds(template):
    """One place for the queries: the template's DashboardBody is report/queries.py's body for the stack's own
    log group and region (regenerate it with the command in the template's comment when the queries change)."""
    from pipeline.report.queries import dashboard_body

    (name, dashboard), = resources(template, "AWS::CloudWatch::Dashboard").items()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    assert json.loads(body) == dashboard_body("${AWS::Region}", "${LogGroup}")
    text = json.dumps(json.loads(body))
    for widget in ("Loads: latest status", "Rows per file", "viewing_percentage stddev", "Failed loads"):
        assert widget in text, widget
