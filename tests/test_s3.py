"""End to end on S3: the CLI in a subprocess, sources and warehouse on a loopback S3 server (moto).

Nothing is mocked: the `impressions` command talks to the server named by AWS_ENDPOINT_URL (tests/conftest.py),
exactly as it would to AWS. Results are checked from outside our code: boto3 lists the objects, pyiceberg's own
SqlCatalog reads the tables, and plain gzip + csv read the generated file for the reference values.

One module-scoped load (generate → upload → `partition`) is shared by the tests of this file; every later
command reads or writes other tables, or must leave FACT_PARTITIONED unchanged.
"""
from __future__ import annotations

import csv
import gzip
import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = 200_000

# Small read ranges, so a ~2 MB (≈6 MB uncompressed) file is indexed and read by several tasks.
# BLOCK_SIZE is needed too: the default block size (16 MiB) must be <= the range size, otherwise the CLI
# refuses the configuration ("read.block-size must be >= 1 KiB and <= read.range-size", exit 2).
SMALL_READS = {
    "DASK_IMPRESSIONS__READ__RANGE_SIZE": "1 MiB",
    "DASK_IMPRESSIONS__READ__INDEX_SPACING": "256 KiB",
    "DASK_IMPRESSIONS__READ__SMALL_FILE": "64 KiB",
    "DASK_IMPRESSIONS__READ__BLOCK_SIZE": "256 KiB",
}
ATTRIBUTES = ("campaign_name", "advertiser", "channel", "objective")


# ------------------------------------------------------------------ helpers


def cli(args: list[str], warehouse: str, catalog: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `python -m pipeline --warehouse … --catalog … --workers 2 ARGS` against the loopback S3."""
    env = dict(os.environ)
    env.update(SMALL_READS)
    assert env.get("AWS_ENDPOINT_URL", "").startswith("http://127.0.0.1:")
    for key in ("DASK_SCHEDULER_ADDRESS", "IMPRESSIONS_DEBUG", "AWS_PROFILE"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "pipeline", "--warehouse", warehouse, "--catalog", catalog, "--workers", "2",
           *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stdout_json(proc: subprocess.CompletedProcess) -> list[dict]:
    """stdout carries JSON lines only (DESIGN.md): every line must parse."""
    out = []
    for line in proc.stdout.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"non-JSON line on stdout: {line!r}")
    return out


def last_status(proc: subprocess.CompletedProcess) -> dict:
    statuses = [o for o in stdout_json(proc) if o.get("event") == "load_status"]
    assert statuses, f"no status line on stdout\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return statuses[-1]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def iceberg_catalog(catalog_uri: str, warehouse: str):
    """pyiceberg's own SqlCatalog, configured as any outside Iceberg client would be (no pipeline code)."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("impressions", uri=catalog_uri, warehouse=warehouse, **{
        "s3.endpoint": os.environ["AWS_ENDPOINT_URL"],
        "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "s3.region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    })


def list_keys(s3, bucket: str, prefix: str) -> dict[str, int]:
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


def read_reference(path: str) -> list[tuple]:
    """The generated impressions, read with nothing but gzip + csv."""
    rows = []
    with gzip.open(path, "rt", newline="") as f:
        for d, ident, camp, video, vp in csv.reader(f):
            rows.append((datetime.strptime(d, "%m/%d/%Y").date(), int(ident), camp, video, float(vp)))
    return rows


def read_dimension_csv(path: str) -> dict[str, tuple]:
    with gzip.open(path, "rt", newline="") as f:
        return {r["campaign_id"]: tuple(r[a] for a in ATTRIBUTES) for r in csv.DictReader(f)}


def as_tuples(table) -> list[tuple]:
    cols = [table[c].to_pylist() for c in ("ad_date", "impression_id", "campaign_id", "video_id",
                                          "viewing_percentage")]
    return sorted(zip(*cols), key=lambda r: r[1])


def rel_close(a: float, b: float, rel: float = 1e-12) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def snapshot_state(cat, name: str) -> tuple:
    t = cat.load_table(("impressions", name))
    return t.metadata_location, t.metadata.current_snapshot_id, len(t.metadata.snapshots)


# ------------------------------------------------------------------ the shared load


@pytest.fixture(scope="module")
def run(s3_endpoint, tmp_path_factory):
    """Generate inputs, upload them, run `partition` once on the S3 warehouse."""
    import boto3

    from pipeline.generate import generate

    tmp = tmp_path_factory.mktemp("s3e2e")
    gen = generate(str(tmp / "data"), rows=ROWS, days=5, campaigns=20, changed=2, seed=1)
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    urls = {}
    for kind in ("impressions", "campaigns", "campaigns_updated"):
        key = f"input/{os.path.basename(gen[kind])}"
        s3.upload_file(gen[kind], bucket, key)
        urls[kind] = f"s3://{bucket}/{key}"
    warehouse = f"s3://{bucket}/warehouse"
    catalog = f"sqlite:///{tmp / 'catalog.db'}"
    proc = cli(["partition", urls["impressions"], "FACT_PARTITIONED"], warehouse, catalog)
    return SimpleNamespace(gen=gen, bucket=bucket, s3=s3, urls=urls, warehouse=warehouse, catalog=catalog,
                           partition=proc, tmp=tmp)


@pytest.fixture(scope="module")
def reference(run):
    rows = read_reference(run.gen["impressions"])
    assert len(rows) == ROWS
    return SimpleNamespace(rows=sorted(rows, key=lambda r: r[1]),
                           vp_mean=math.fsum(r[4] for r in rows) / len(rows),
                           per_campaign=Counter(r[2] for r in rows))


# ------------------------------------------------------------------ 1. partition from and to S3


def test_partition_s3_source_into_s3_warehouse(run, reference):
    proc = ok(run.partition)
    status = last_status(proc)
    assert status["status"] == "SUCCEEDED", status
    assert status["stage"] == "partition" and status["table"] == "impressions.fact_partitioned"
    assert status["rows_read"] == status["rows_written"] == ROWS, status
    assert status["rows_quarantined"] == 0 and status["quarantine"] == {}
    if "read_tasks" in status:
        assert status["read_tasks"] >= 3, status

    # the gzip index was cached under the warehouse (the input prefix stays untouched) and has several points
    cache = list_keys(run.s3, run.bucket, "warehouse/_cache/gzindex/")
    assert cache, "no gzip index cached under s3://bucket/warehouse/_cache/gzindex/"
    assert list_keys(run.s3, run.bucket, "input/").keys() == {
        f"input/{os.path.basename(run.gen[k])}" for k in ("impressions", "campaigns", "campaigns_updated")}
    from pipeline.read.gzindex import parse_index

    (key,) = cache
    body = run.s3.get_object(Bucket=run.bucket, Key=key)["Body"].read()
    assert len(parse_index(body, key).points) >= 4, "index too coarse for several read ranges"

    # the table, read by pyiceberg directly: one snapshot, our properties, files under the warehouse in S3
    cat = iceberg_catalog(run.catalog, run.warehouse)
    table = cat.load_table(("impressions", "fact_partitioned"))
    assert table.metadata.location.startswith(f"{run.warehouse}/")
    assert len(table.metadata.snapshots) == 1
    props = table.current_snapshot().summary.additional_properties
    assert props["impressions.load-id"] == status["load_id"]
    assert props["impressions.stage"] == "partition"
    assert [s["path"] for s in json.loads(props["impressions.sources"])] == [run.urls["impressions"]]

    paths = [t.file.file_path for t in table.scan().plan_files()]
    assert len(paths) == status["files_written"] and paths
    data_keys = {k for k in list_keys(run.s3, run.bucket, "warehouse/impressions/fact_partitioned/data/")
                 if k.endswith(".parquet")}
    prefix = f"s3://{run.bucket}/"
    assert all(p.startswith(f"{run.warehouse}/impressions/fact_partitioned/data/") for p in paths), paths[:3]
    assert {p[len(prefix):] for p in paths} == data_keys  # every file exists; no stray files in a clean run

    rows = table.scan().to_arrow()
    assert rows.num_rows == ROWS
    assert as_tuples(rows) == reference.rows

    # stats from the stored statistics, then from the data files
    stats = stdout_json(ok(cli(["stats", "FACT_PARTITIONED", "--json"], run.warehouse, run.catalog)))[-1]
    assert stats["table"] == "impressions.fact_partitioned"
    assert stats["rows"] == ROWS
    assert stats["snapshot_id"] == table.metadata.current_snapshot_id
    assert sorted(f["path"] for f in stats["files"]) == sorted(paths)
    assert rel_close(stats["vp_mean"], reference.vp_mean), (stats["vp_mean"], reference.vp_mean)
    rc = stdout_json(ok(cli(["stats", "FACT_PARTITIONED", "--json", "--recount"], run.warehouse, run.catalog)))[-1]
    assert rc["recount_rows"] == ROWS and rc["recount_matches"] is True
    assert rel_close(rc["vp_mean"], reference.vp_mean)
    assert rel_close(rc["vp_std"], stats["vp_std"])


# ------------------------------------------------------------------ 2. idempotent rerun


def test_rerun_is_skipped_and_adds_no_snapshot(run):
    ok(run.partition)
    cat = iceberg_catalog(run.catalog, run.warehouse)
    before = snapshot_state(cat, "fact_partitioned")
    objects_before = list_keys(run.s3, run.bucket, "warehouse/")

    proc = ok(cli(["partition", run.urls["impressions"], "FACT_PARTITIONED"], run.warehouse, run.catalog))
    status = last_status(proc)
    assert status["status"] == "SKIPPED", status
    assert status["rows_written"] == 0
    assert snapshot_state(cat, "fact_partitioned") == before
    # nothing new was written in the warehouse (no data files, no index) but the SKIPPED load's history record
    history = "warehouse/impressions/loads/"
    assert [k for k in list_keys(run.s3, run.bucket, "warehouse/") if not k.startswith(history)] == \
        [k for k in objects_before if not k.startswith(history)]


# ------------------------------------------------------------------ 3. join and update on S3


def test_join_and_update_on_s3_warehouse(run, reference):
    ok(run.partition)
    old = read_dimension_csv(run.gen["campaigns"])
    new = read_dimension_csv(run.gen["campaigns_updated"])
    merged = {**old, **new}
    changed, (new_campaign,) = run.gen["changed"], run.gen["new"]
    assert set(new) == set(changed) | {new_campaign}

    joined = ok(cli(["join", run.urls["campaigns"], "FACT_PARTITIONED", "FACT_JOINED"], run.warehouse, run.catalog))
    js = last_status(joined)
    assert js["status"] == "SUCCEEDED", js
    assert js["rows_read"] == js["rows_written"] == ROWS
    assert js["orphans"] == reference.per_campaign[new_campaign] > 0  # only the campaign new in the update

    updated = ok(cli(["update", run.urls["campaigns_updated"], "FACT_JOINED", "FACT_UPDATED"],
                     run.warehouse, run.catalog))
    us = last_status(updated)
    assert us["status"] == "SUCCEEDED", us
    assert us["changed_keys"] == len(new)
    assert us["rows_read"] == us["rows_written"] == sum(reference.per_campaign[c] for c in new)

    cat = iceberg_catalog(run.catalog, run.warehouse)
    ids = [r[1] for r in reference.rows]
    for name, want in (("fact_joined", old), ("fact_updated", merged)):
        table = cat.load_table(("impressions", name))
        assert len(table.metadata.snapshots) == 1, name
        props = table.current_snapshot().summary.additional_properties
        assert props.get("impressions.dimension-snapshot-id"), name
        paths = [t.file.file_path for t in table.scan().plan_files()]
        # each table's files live under its own location in the S3 warehouse (never shared)
        assert all(p.startswith(f"{run.warehouse}/impressions/{name}/") for p in paths), name
        keys = set(list_keys(run.s3, run.bucket, f"warehouse/impressions/{name}/"))
        assert {p[len(f"s3://{run.bucket}/"):] for p in paths} <= keys, name

        rows = table.scan().to_arrow()
        assert rows.num_rows == ROWS, name
        assert sorted(rows["impression_id"].to_pylist()) == ids, name
        groups = rows.group_by(["campaign_id", *ATTRIBUTES]).aggregate([("impression_id", "count")]).to_pylist()
        got = {}
        for g in groups:
            assert g["campaign_id"] not in got, f"{name}: campaign {g['campaign_id']} has mixed attributes"
            got[g["campaign_id"]] = (tuple(g[a] for a in ATTRIBUTES), g["impression_id_count"])
        assert set(got) == set(reference.per_campaign), name
        for cid, (attrs, count) in got.items():
            assert count == reference.per_campaign[cid], (name, cid)
            assert attrs == want.get(cid, (None,) * len(ATTRIBUTES)), (name, cid, attrs)

    # the point of the update: changed campaigns carry the new name in FACT_UPDATED, the others the old one
    upd = cat.load_table(("impressions", "fact_updated")).scan().to_arrow()
    names = dict(zip(upd["campaign_id"].to_pylist(), upd["campaign_name"].to_pylist()))
    for cid in changed:
        assert names[cid] == new[cid][0] != old[cid][0] and names[cid].endswith("(renamed)")
    assert names[new_campaign] == new[new_campaign][0]
    for cid in set(old) - set(new):
        if cid in names:
            assert names[cid] == old[cid][0]

    stats = stdout_json(ok(cli(["stats", "FACT_UPDATED", "--json", "--recount"], run.warehouse, run.catalog)))[-1]
    assert stats["rows"] == stats["recount_rows"] == ROWS and stats["recount_matches"] is True
    assert rel_close(stats["vp_mean"], reference.vp_mean)


# ------------------------------------------------------------------ 4. a missing S3 source


def _assert_one_error_line(proc: subprocess.CompletedProcess, url: str) -> None:
    assert proc.returncode in (1, 2), f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    naming = [line for line in proc.stderr.splitlines() if url in line]
    assert len(naming) == 1, proc.stderr
    assert naming[0].startswith("impressions:"), naming
    assert not [o for o in stdout_json(proc) if o.get("status") == "SUCCEEDED"]


def test_missing_source_on_existing_table_commits_nothing(run):
    ok(run.partition)
    cat = iceberg_catalog(run.catalog, run.warehouse)
    before = {name: snapshot_state(cat, name) for name in ("fact_partitioned", "quarantine")}
    objects_before = list_keys(run.s3, run.bucket, "warehouse/")
    url = f"s3://{run.bucket}/nope.gz"
    proc = cli(["partition", url, "FACT_PARTITIONED"], run.warehouse, run.catalog)
    _assert_one_error_line(proc, url)
    assert {name: snapshot_state(cat, name) for name in before} == before
    assert list_keys(run.s3, run.bucket, "warehouse/") == objects_before


@pytest.mark.parametrize("missing", ["key", "bucket"])
def test_missing_source_in_fresh_warehouse_creates_nothing(s3_bucket, tmp_path, missing):
    import boto3

    url = f"s3://{s3_bucket}/nope.gz" if missing == "key" else f"s3://no-such-{uuid.uuid4().hex[:10]}/nope.gz"
    catalog_db = tmp_path / "catalog.db"
    warehouse = f"s3://{s3_bucket}/warehouse"
    proc = cli(["partition", url, "FACT_PARTITIONED"], warehouse, f"sqlite:///{catalog_db}")
    _assert_one_error_line(proc, url)
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert list_keys(s3, s3_bucket, "") == {}
    if catalog_db.exists():
        cat = iceberg_catalog(f"sqlite:///{catalog_db}", warehouse)
        tables = [t for ns in cat.list_namespaces() for t in cat.list_tables(ns)]
        assert tables == [], tables


# ------------------------------------------------------------------ S3 artefacts: object metadata, bucket tags


def test_every_data_file_carries_its_rows_and_the_bucket_tag_the_table_total(run):
    """Checked with plain boto3 and pyiceberg: the metadata of every live data file adds up to the rows an
    outside reader counts, the bucket tag says the same, and `stats --recount` agrees (and catches a file
    whose metadata was tampered with)."""
    ok(run.partition)
    cat = iceberg_catalog(run.catalog, run.warehouse)
    t = cat.load_table(("impressions", "fact_partitioned"))
    counted = t.scan().to_arrow().num_rows
    total = 0
    for task in t.scan().plan_files():
        key = task.file.file_path.split(f"s3://{run.bucket}/", 1)[1]
        meta = run.s3.head_object(Bucket=run.bucket, Key=key)["Metadata"]
        assert int(meta["rows"]) == task.file.record_count and int(meta["vp-n"]) == task.file.record_count
        total += int(meta["rows"])
    assert total == counted == ROWS
    # every data file of the warehouse, the load history's and the quarantine's included, carries its rows
    for ident in cat.list_tables("impressions"):
        other = cat.load_table(ident)
        for task in (other.scan().plan_files() if other.current_snapshot() else []):
            key = task.file.file_path.split(f"s3://{run.bucket}/", 1)[1]
            meta = run.s3.head_object(Bucket=run.bucket, Key=key)["Metadata"]
            assert int(meta["rows"]) == task.file.record_count, (ident, key)
    tags = {x["Key"]: x["Value"] for x in run.s3.get_bucket_tagging(Bucket=run.bucket)["TagSet"]}
    assert tags["impressions:impressions.fact_partitioned:rows"] == str(counted)

    audit = stdout_json(ok(cli(["stats", "FACT_PARTITIONED", "--json", "--recount"], run.warehouse, run.catalog)))[-1]
    assert audit["recount_matches"] and audit["recount_rows"] == counted and audit["files_disagreeing"] == []

    victim = next(iter(t.scan().plan_files())).file
    key = victim.file_path.split(f"s3://{run.bucket}/", 1)[1]
    run.s3.copy_object(Bucket=run.bucket, Key=key, CopySource={"Bucket": run.bucket, "Key": key},
                       Metadata={"rows": str(victim.record_count + 1)}, MetadataDirective="REPLACE")
    proc = cli(["stats", "FACT_PARTITIONED", "--json", "--recount"], run.warehouse, run.catalog)
    assert proc.returncode == 1
    bad = stdout_json(proc)[-1]["files_disagreeing"]
    assert [b["path"] for b in bad] == [victim.file_path] and bad[0]["metadata_rows"] == victim.record_count + 1
    run.s3.copy_object(Bucket=run.bucket, Key=key, CopySource={"Bucket": run.bucket, "Key": key},
                       Metadata={"rows": str(victim.record_count)}, MetadataDirective="REPLACE")


def test_the_dashboard_goes_to_s3_when_asked(run):
    """`dashboard --out s3://…` puts the page in the bucket (as text/html), not in a local folder named `s3:`."""
    ok(run.partition)
    url = f"s3://{run.bucket}/reports/dashboard.html"
    out = stdout_json(ok(cli(["dashboard", "--out", url], run.warehouse, run.catalog)))[-1]
    assert out["path"] == url
    obj = run.s3.get_object(Bucket=run.bucket, Key="reports/dashboard.html")
    assert obj["ContentType"].startswith("text/html")
    page = obj["Body"].read().decode()
    assert page.lstrip().lower().startswith("<!doctype html") and "impressions.fact_partitioned" in page
    assert not os.path.exists("s3:")
