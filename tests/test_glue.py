"""The production catalog: AWS Glue (moto's server on loopback) with an s3:// warehouse, through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3

from pipeline.generate import generate


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, env=env, timeout=600)


def test_partition_join_update_stats_with_glue(s3_endpoint, s3_bucket, tmp_path):
    files = generate(str(tmp_path), rows=30_000, days=3, campaigns=12, changed=2, seed=3)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("impressions", "campaigns", "campaigns_updated"):
        s3.upload_file(files[key], s3_bucket, f"in/{os.path.basename(files[key])}")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint}
    common = ["--warehouse", f"s3://{s3_bucket}/tables", "--catalog", "glue", "--workers", "1"]
    # the job file itself lives in S3, as the Batch job fetches it; its paths are relative to it
    job = (
        "steps:\n"
        "  - partition: {sources: [in/impressions.csv.gz], table: FACT_PARTITIONED}\n"
        "  - join: {dimension: in/campaigns.csv.gz, source: FACT_PARTITIONED, table: FACT_JOINED}\n"
        "  - update: {dimension: in/campaigns_updated.csv.gz, source: FACT_JOINED, table: FACT_UPDATED}\n"
        "  - stats: {table: FACT_UPDATED}\n")
    s3.put_object(Bucket=s3_bucket, Key="job.yaml", Body=job.encode())
    out = _cli(env, *common, "run", f"s3://{s3_bucket}/job.yaml")
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    last = json.loads(out.stdout.decode().splitlines()[-1])
    assert last["rows"] == 30_000 and last["table"] == "impressions.fact_updated"

    glue = boto3.client("glue", endpoint_url=s3_endpoint)
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName="impressions")["TableList"]}
    assert {"fact_partitioned", "fact_joined", "fact_updated", "campaigns", "quarantine"} <= set(tables)
    location = tables["fact_updated"]["Parameters"]["metadata_location"]
    assert location.startswith(f"s3://{s3_bucket}/tables/")

    again = _cli(env, *common, "partition", f"s3://{s3_bucket}/in/impressions.csv.gz", "FACT_PARTITIONED")
    assert again.returncode == 0
    assert json.loads(again.stdout.decode().splitlines()[0])["status"] == "SKIPPED"
