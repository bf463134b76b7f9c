#!/bin/bash
# A job script like the users' example, run by `impressions node` on the main node of the AWS Batch job
# (fetch-and-run style: IMPRESSIONS_JOB=s3://BUCKET/jobs/job.sh, arguments from IMPRESSIONS_JOB_ARGS).
# The node has started the Dask scheduler and its workers; every `impressions` command below runs on them
# through DASK_SCHEDULER_ADDRESS. Human text goes to stderr: stdout carries the commands' JSON lines only.
#
#   job.sh [FACT_FILE [CAMPAIGNS_FILE [UPDATED_CAMPAIGNS_FILE]]]
# Defaults: impressions.csv.gz, campaigns.csv.gz, campaigns_updated.csv.gz under $IMPRESSIONS_INPUT.
set -euo pipefail

{
  date -u
  echo "Args: $*"
  echo "jobId: ${AWS_BATCH_JOB_ID:-}"
  echo "jobQueue: ${AWS_BATCH_JQ_NAME:-}"
  echo "computeEnvironment: ${AWS_BATCH_CE_NAME:-}"
  echo "scheduler: ${DASK_SCHEDULER_ADDRESS:?this script runs under impressions node}"
} >&2

input=${IMPRESSIONS_INPUT:-}
fact=${1:-${input:?set IMPRESSIONS_INPUT or pass FACT_FILE}/impressions.csv.gz}
campaigns=${2:-${input:?set IMPRESSIONS_INPUT or pass CAMPAIGNS_FILE}/campaigns.csv.gz}
updated=${3:-${input:?set IMPRESSIONS_INPUT or pass UPDATED_CAMPAIGNS_FILE}/campaigns_updated.csv.gz}

impressions partition "$fact" tables/FACT_PARTITIONED
impressions join "$campaigns" tables/FACT_PARTITIONED tables/FACT_JOINED
impressions update "$updated" tables/FACT_JOINED tables/FACT_UPDATED
impressions stats tables/FACT_UPDATED --json

echo "done: $(date -u)" >&2
