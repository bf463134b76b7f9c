"""The one small adapter between cluster/ and the AWS APIs (boto3): Batch, S3 uploads, ECR, CloudFormation.

Clients come from boto3 as in production; the endpoint comes from the standard AWS_ENDPOINT_URL, so the same
calls reach AWS or a loopback moto server. AWS errors become one-line errors: a refused request (bad name,
missing permission, no credentials) is a UsageError (exit 2), an unreachable endpoint a LoadError (exit 1).
"""
from __future__ import annotations

import base64
import contextlib
import os
import re

from pipeline.errors import LoadError, UsageError


@contextlib.contextmanager
def aws_errors(action: str):
    import botocore.exceptions as bx

    try:
        yield
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        raise UsageError(f"{action}: {err.get('Code', 'error')}: {err.get('Message', e)}") from None
    except (bx.NoCredentialsError, bx.NoRegionError, bx.ParamValidationError) as e:
        raise UsageError(f"{action}: {e}") from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as e:
        raise LoadError(f"{action}: {e}") from None
    except bx.WaiterError as e:
        raise LoadError(f"{action}: {e}") from None


def _client(service: str):
    import boto3

    return boto3.client(service)


def split_s3_url(url: str) -> tuple[str, str]:
    m = re.fullmatch(r"s3a?://([^/]+)/?(.*)", url)
    if not m:
        raise UsageError(f"not an s3:// URL: {url}")
    return m.group(1), m.group(2)


class Batch:
    """SubmitJob, DescribeJobs, DescribeJobDefinitions."""

    def __init__(self):
        self.client = _client("batch")

    def job_definition(self, ref: str) -> dict | None:
        """The job definition named by ARN, name:revision, or name (its newest ACTIVE revision)."""
        with aws_errors(f"DescribeJobDefinitions {ref}"):
            if ref.startswith("arn:") or ":" in ref:
                found = self.client.describe_job_definitions(jobDefinitions=[ref])["jobDefinitions"]
            else:
                pages = self.client.get_paginator("describe_job_definitions").paginate(
                    jobDefinitionName=ref, status="ACTIVE")
                found = [d for page in pages for d in page["jobDefinitions"]]
        return max(found, key=lambda d: d.get("revision", 0)) if found else None

    def submit(self, request: dict) -> dict:
        with aws_errors("SubmitJob"):
            return self.client.submit_job(**request)

    def instance_id(self, container_instance_arn: str) -> str | None:
        """The EC2 instance of an ECS container instance (for the SSM tunnel to the dashboard), if allowed."""
        parts = container_instance_arn.split(":", 5)[-1].split("/")
        if len(parts) != 3:
            return None
        try:
            found = _client("ecs").describe_container_instances(cluster=parts[1],
                                                                containerInstances=[container_instance_arn])
            return found["containerInstances"][0]["ec2InstanceId"]
        except Exception:  # noqa: BLE001 - only a hint: without ecs:DescribeContainerInstances the IP is enough
            return None

    def jobs(self, job_ids: list[str]) -> list[dict]:
        out = []
        with aws_errors("DescribeJobs"):
            for i in range(0, len(job_ids), 100):  # the API's limit per call
                out += self.client.describe_jobs(jobs=job_ids[i:i + 100])["jobs"]
        return out


class Deploy:
    """What batch/deploy.sh needs: the stack, the ECR repository and login, the S3 uploads."""

    def __init__(self):
        self._clients: dict = {}

    def _c(self, service: str):
        if service not in self._clients:
            self._clients[service] = _client(service)
        return self._clients[service]

    def deploy_stack(self, name: str, template: str, parameters: dict[str, str], timeout_minutes: int = 60) -> None:
        """Create the stack, or update it (no change is not an error); wait until it is complete."""
        cfn = self._c("cloudformation")
        params = [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]
        kwargs = {"StackName": name, "TemplateBody": template, "Parameters": params,
                  "Capabilities": ["CAPABILITY_NAMED_IAM"]}
        waiter_config = {"Delay": 15, "MaxAttempts": max(1, timeout_minutes * 4)}
        with aws_errors(f"CloudFormation stack {name}"):
            if self.stack_status(name) is None:
                cfn.create_stack(**kwargs, OnFailure="ROLLBACK")
                cfn.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig=waiter_config)
                return
            try:
                cfn.update_stack(**kwargs)
            except Exception as e:  # noqa: BLE001 - "No updates are to be performed" is success
                if "No updates are to be performed" in str(e):
                    return
                raise
            cfn.get_waiter("stack_update_complete").wait(StackName=name, WaiterConfig=waiter_config)

    def stack_status(self, name: str) -> str | None:
        import botocore.exceptions as bx

        try:
            stacks = self._c("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except bx.ClientError as e:
            if "does not exist" in str(e):
                return None
            raise
        return stacks[0]["StackStatus"] if stacks else None

    def stack_outputs(self, name: str) -> dict[str, str]:
        with aws_errors(f"DescribeStacks {name}"):
            stacks = self._c("cloudformation").describe_stacks(StackName=name)["Stacks"]
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    def repository_uri(self, name: str) -> str:
        with aws_errors(f"DescribeRepositories {name}"):
            repos = self._c("ecr").describe_repositories(repositoryNames=[name])["repositories"]
        return repos[0]["repositoryUri"]

    def image_exists(self, repository: str, tag: str) -> bool:
        import botocore.exceptions as bx

        try:
            self._c("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
            return True
        except bx.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ImageNotFoundException":
                return False
            with aws_errors(f"DescribeImages {repository}:{tag}"):
                raise

    def registry_login(self) -> tuple[str, str, str]:
        """(registry host, user, password) for `docker|podman login --password-stdin`."""
        with aws_errors("ECR GetAuthorizationToken"):
            data = self._c("ecr").get_authorization_token()["authorizationData"][0]
        user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
        return data["proxyEndpoint"].split("://", 1)[-1], user, password

    def upload(self, path: str, url: str) -> str:
        bucket, key = split_s3_url(url)
        if not key or key.endswith("/"):
            key += os.path.basename(path)
        with aws_errors(f"upload {path} to s3://{bucket}/{key}"):
            self._c("s3").upload_file(path, bucket, key)
        return f"s3://{bucket}/{key}"
