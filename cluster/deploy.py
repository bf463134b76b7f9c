"""The AWS steps of batch/deploy.sh, through the one adapter (cluster/aws.py): `python -m cluster.deploy STEP`.

  status  --stack S                         the stack's status, or NONE
  stack   --stack S --template F KEY=VALUE  create or update the stack and wait; the outputs as shell lines
  outputs --stack S                         the stack's outputs as shell lines (BUCKET=..., JOB_QUEUE=...)
  repository-uri --repository R             the ECR repository's URI (it must exist)
  login   --engine CMD                      `CMD login` to the ECR registry (the password goes through stdin)
  image-exists --repository R --tag T       exit 0 if the tag is in the repository (tags are immutable)
  render  TEMPLATE KEY=VALUE...             a JOB.yaml template with ${KEY} filled in, to stdout
  upload  FILE S3_URL                       upload; prints the object's URL
stdout carries only what the shell reads; errors are one line on stderr (exit 2 usage/AWS refusal, 1 failure).
"""
from __future__ import annotations

import argparse
import re
import shlex
import string
import subprocess
import sys

from pipeline.errors import LoadError, UsageError

OUTPUT_NAMES = {"Bucket": "BUCKET", "InputUrl": "INPUT_URL", "Warehouse": "WAREHOUSE", "JobsUrl": "JOBS_URL",
                "RepositoryName": "REPOSITORY", "RepositoryUri": "REPOSITORY_URI", "JobQueue": "JOB_QUEUE",
                "JobDefinition": "JOB_DEFINITION", "LogGroup": "LOG_GROUP", "SecurityGroup": "SECURITY_GROUP",
                "GlueDatabase": "GLUE_DATABASE", "Dashboard": "DASHBOARD_URL"}


def shell_lines(outputs: dict[str, str]) -> str:
    """Stack outputs as `NAME='value'` lines for the shell's eval."""
    return "".join(f"{OUTPUT_NAMES.get(k, re.sub(r'(?<!^)(?=[A-Z])', '_', k).upper())}={shlex.quote(v)}\n"
                   for k, v in sorted(outputs.items()))


def key_values(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def render(template: str, values: dict[str, str]) -> str:
    """${KEY} placeholders filled in; a missing key is an error, not an empty string."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as e:
        raise UsageError(f"template needs a value for {e.args[0]}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("status")
    s.add_argument("--stack", required=True)
    s = sub.add_parser("stack")
    s.add_argument("--stack", required=True)
    s.add_argument("--template", required=True)
    s.add_argument("parameters", nargs="*", metavar="KEY=VALUE")
    s = sub.add_parser("outputs")
    s.add_argument("--stack", required=True)
    s = sub.add_parser("repository-uri")
    s.add_argument("--repository", required=True)
    s = sub.add_parser("login")
    s.add_argument("--engine", required=True, help="the container engine command, e.g. 'docker'")
    s = sub.add_parser("image-exists")
    s.add_argument("--repository", required=True)
    s.add_argument("--tag", required=True)
    s = sub.add_parser("render")
    s.add_argument("template")
    s.add_argument("values", nargs="*", metavar="KEY=VALUE")
    s = sub.add_parser("upload")
    s.add_argument("file")
    s.add_argument("url")
    return p


def run(args) -> int:
    from .aws import Deploy

    if args.step == "render":
        with open(args.template) as f:
            sys.stdout.write(render(f.read(), key_values(args.values)))
        return 0
    deploy = Deploy()
    if args.step == "status":
        from .aws import aws_errors

        with aws_errors(f"DescribeStacks {args.stack}"):
            print(deploy.stack_status(args.stack) or "NONE")
    elif args.step == "stack":
        with open(args.template) as f:
            body = f.read()
        deploy.deploy_stack(args.stack, body, key_values(args.parameters))
        sys.stdout.write(shell_lines(deploy.stack_outputs(args.stack)))
    elif args.step == "outputs":
        sys.stdout.write(shell_lines(deploy.stack_outputs(args.stack)))
    elif args.step == "repository-uri":
        print(deploy.repository_uri(args.repository))
    elif args.step == "login":
        registry, user, password = deploy.registry_login()
        done = subprocess.run([*shlex.split(args.engine), "login", "--username", user, "--password-stdin", registry],
                              input=password, text=True, stdout=sys.stderr, timeout=120)
        if done.returncode:
            raise LoadError(f"{args.engine} login {registry} failed (exit {done.returncode})")
    elif args.step == "image-exists":
        return 0 if deploy.image_exists(args.repository, args.tag) else 1
    elif args.step == "upload":
        print(deploy.upload(args.file, args.url))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"deploy: error: {e}", file=sys.stderr)
        return 2
    except LoadError as e:
        print(f"deploy: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
