#!/usr/bin/env bash
# Deploy impressions to AWS: the CloudFormation stack (batch/stack.yaml), the image in the stack's ECR
# repository, the job files in S3; then print the `impressions submit` lines to run. See docs/aws.md.
#
#   batch/deploy.sh --stack NAME --vpc VPC_ID --subnets SUBNET[,SUBNET...] [--param KEY=VALUE]... [--nodes N]
#   batch/deploy.sh --no-stack [--no-image] [--nodes N]      # an existing deployment, named by the environment:
#       BUCKET, REPOSITORY, JOB_QUEUE, JOB_DEFINITION (and INPUT_PREFIX=input, JOB_PREFIX=jobs)
#
# --no-image skips building and pushing (e.g. the image is pushed already). Environment: PYTHON (default
# .venv/bin/python), IMAGE_TAG (default: the git revision), ENGINE and BASE_IMAGE (docker/build.sh).
# The AWS endpoint is the SDK's (AWS_ENDPOINT_URL is honoured, so the S3, ECR and Batch steps run against a
# loopback moto server in the tests; the stack and the image push need real AWS).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "deploy.sh: $*" >&2; exit 2; }
stack="" vpc="" subnets="" nodes="" with_stack=1 with_image=1 params=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack=$2; shift 2 ;;
    --vpc) vpc=$2; shift 2 ;;
    --subnets) subnets=$2; shift 2 ;;
    --param) params+=("$2"); shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --no-stack) with_stack=0; shift ;;
    --no-image) with_image=0; shift ;;
    -h|--help) sed -n '2,14p' "$0" >&2; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
aws() { "$PYTHON" -m cluster.deploy "$@"; }

tag=${IMAGE_TAG:-}
if [ -z "$tag" ]; then
  tag=$(git rev-parse --short=12 HEAD 2>/dev/null || date -u +%Y%m%d%H%M%S)
  # tags are immutable: a build of uncommitted changes gets a tag of its own
  if ! git diff --quiet HEAD -- 2>/dev/null; then tag="$tag-dirty-$(date -u +%Y%m%d%H%M%S)"; fi
fi

deploy_stack() {
  [ -n "$vpc" ] && [ -n "$subnets" ] || die "--vpc and --subnets are needed to deploy the stack"
  echo "deploying stack $stack (image tag $tag); this takes several minutes" >&2
  # --nodes N is the stack's NumNodes too: the schedule and the on-arrival rule submit the job definition as it is
  aws stack --stack "$stack" --template batch/stack.yaml VpcId="$vpc" SubnetIds="$subnets" ImageTag="$tag" \
    ${nodes:+NumNodes="$nodes"} ${params[@]+"${params[@]}"}
}

if [ "$with_stack" = 1 ]; then
  [ -n "$stack" ] || die "--stack NAME is needed (or --no-stack with BUCKET, REPOSITORY, JOB_QUEUE, JOB_DEFINITION)"
  status=$(aws status --stack "$stack")
  case "$status" in
    ROLLBACK_COMPLETE|ROLLBACK_FAILED|DELETE_FAILED)
      die "stack $stack is $status (its first creation failed): see its events, delete it, deploy again" ;;
    *_IN_PROGRESS) die "stack $stack is $status: wait until it is done" ;;
  esac
  if [ "$status" = NONE ]; then
    outputs=$(deploy_stack)                       # creates the repository the image goes to
  else
    outputs=$(aws outputs --stack "$stack")       # push first, then point the job definition at the new tag
  fi
  eval "$outputs"
else
  : "${BUCKET:?--no-stack needs BUCKET}" "${REPOSITORY:?--no-stack needs REPOSITORY}"
  : "${JOB_QUEUE:?--no-stack needs JOB_QUEUE}" "${JOB_DEFINITION:?--no-stack needs JOB_DEFINITION}"
  INPUT_URL="s3://$BUCKET/${INPUT_PREFIX:-input}"
  JOBS_URL="s3://$BUCKET/${JOB_PREFIX:-jobs}"
  REPOSITORY_URI=$(aws repository-uri --repository "$REPOSITORY")
fi

if [ "$with_image" = 1 ]; then
  if aws image-exists --repository "$REPOSITORY" --tag "$tag"; then
    echo "image $REPOSITORY_URI:$tag is in ECR already" >&2
  else
    engine=$(docker/build.sh --target node --tag "$REPOSITORY_URI:$tag" | tail -n 1)
    aws login --engine "$engine"
    # shellcheck disable=SC2086
    $engine push "$REPOSITORY_URI:$tag" >&2
  fi
fi

if [ "$with_stack" = 1 ] && [ "$status" != NONE ]; then
  outputs=$(deploy_stack)
  eval "$outputs"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
aws render batch/daily.yaml INPUT="$INPUT_URL" > "$tmp/daily.yaml"
daily=$(aws upload "$tmp/daily.yaml" "$JOBS_URL/daily.yaml")
script=$(aws upload batch/job.sh "$JOBS_URL/job.sh")

node_option=""
[ -n "$nodes" ] && node_option=" --nodes $nodes"
cat >&2 <<TEXT
Deployed. Put the day's files under $INPUT_URL/ (impressions.csv.gz, campaigns.csv.gz,
campaigns_updated.csv.gz); the schedule submits $daily every day. To run it now, or the job script:
TEXT
echo "impressions submit $daily --job-queue $JOB_QUEUE --job-definition $JOB_DEFINITION$node_option"
echo "impressions submit $script --job-queue $JOB_QUEUE --job-definition $JOB_DEFINITION$node_option"
