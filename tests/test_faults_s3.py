"""The CLI against an S3 that fails the way S3 does: through the fault proxy (tests/faultproxy.py).

The `impressions` command runs in a subprocess with AWS_ENDPOINT_URL pointing at the proxy, a real separate
process in front of the session's moto server; nothing in boto3, s3fs or pyarrow is patched. Results are checked
from outside, directly against moto (no faults): pyiceberg's own SqlCatalog reads the tables, boto3 lists objects.

1. With 5% of requests failing (503 SlowDown, 500 InternalError, connection resets before and after the server
   saw the request) partition → join → update → stats succeed and make exactly the tables of a run without faults.
2. Permanent errors (access denied on a source or on the warehouse, a missing object, a missing bucket) fail at
   once: exit non-zero, ONE line on stderr naming the object, no traceback, nothing committed.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = 20_000
BUCKETS = 4

SMALL_READS = {  # a ~0.25 MB gzip file is still indexed and read by several tasks
    "DASK_IMPRESSIONS__READ__RANGE_SIZE": "256 KiB",
    "DASK_IMPRESSIONS__READ__INDEX_SPACING": "64 KiB",
    "DASK_IMPRESSIONS__READ__SMALL_FILE": "64 KiB",
    "DASK_IMPRESSIONS__READ__BLOCK_SIZE": "64 KiB",
}
# 5% of requests fail: throttling, server errors, connections reset before the server saw the request, and
# responses cut off after it did
FIVE_PERCENT = {"slowdown": 0.02, "internal": 0.01, "reset": 0.01, "drop": 0.01}


# ------------------------------------------------------------------ helpers


def cli(args: list[str], endpoint: str, warehouse: str, catalog: str, timeout: int = 240,
        env: dict | None = None, workers: int = 2) -> subprocess.CompletedProcess:
    """`python -m pipeline --warehouse … --catalog … --workers 2 ARGS` with S3 at `endpoint`."""
    full = dict(os.environ)
    full.update(SMALL_READS)
    full["AWS_ENDPOINT_URL"] = endpoint
    assert endpoint.startswith("http://127.0.0.1:")
    for key in ("DASK_SCHEDULER_ADDRESS", "IMPRESSIONS_DEBUG", "AWS_PROFILE"):
        full.pop(key, None)
    full.update(env or {})
    cmd = [sys.executable, "-m", "pipeline", "--warehouse", warehouse, "--catalog", catalog, "--workers",
           str(workers), *args]
    return subprocess.run(cmd, env=full, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stdout_json(proc: subprocess.CompletedProcess) -> list[dict]:
    out = []
    for line in proc.stdout.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"non-JSON line on stdout: {line!r}")
    return out


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    stdout_json(proc)
    return proc


def last_status(proc) -> dict:
    statuses = [o for o in stdout_json(proc) if o.get("event") == "load_status"]
    assert statuses, f"no status line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return statuses[-1]


def failed_cleanly(proc: subprocess.CompletedProcess, url: str) -> str:
    """Non-zero exit, no traceback, stdout still JSON lines, and ONE stderr line naming `url`; returns it."""
    assert proc.returncode in (1, 2), f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not [o for o in stdout_json(proc) if o.get("status") == "SUCCEEDED"]
    naming = [line for line in proc.stderr.splitlines() if url in line]
    assert len(naming) == 1, f"expected one line naming {url}:\n{proc.stderr}"
    assert naming[0].startswith("impressions:"), naming
    print(naming[0])  # shown with pytest -s: the line a user reads
    return naming[0]


def iceberg_catalog(catalog_uri: str, warehouse: str, endpoint: str):
    """pyiceberg's own SqlCatalog, as an outside Iceberg client would configure it (no pipeline code)."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("impressions", uri=catalog_uri, warehouse=warehouse, **{
        "s3.endpoint": endpoint,
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


def table_rows(cat, name: str) -> list[tuple]:
    t = cat.load_table(("impressions", name)).scan().to_arrow()
    cols = sorted(t.column_names)
    return sorted(zip(*(t[c].to_pylist() for c in cols)), key=lambda r: tuple(str(x) for x in r))


def tables_in(catalog_db: Path, warehouse: str, endpoint: str) -> list:
    if not catalog_db.exists():
        return []
    cat = iceberg_catalog(f"sqlite:///{catalog_db}", warehouse, endpoint)
    return [t for ns in cat.list_namespaces() for t in cat.list_tables(ns)]


def rel_close(a, b, rel=1e-12) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


# ------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def inputs(s3_endpoint, tmp_path_factory):
    """Generated inputs uploaded straight to moto (no proxy); one bucket for the module."""
    import boto3

    from pipeline.generate import generate

    tmp = tmp_path_factory.mktemp("faults")
    gen = generate(str(tmp / "data"), rows=ROWS, days=2, campaigns=8, changed=2, seed=5)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    urls = {}
    for kind in ("impressions", "campaigns", "campaigns_updated"):
        key = f"input/{os.path.basename(gen[kind])}"
        s3.upload_file(gen[kind], bucket, key)
        urls[kind] = f"s3://{bucket}/{key}"
    return SimpleNamespace(gen=gen, bucket=bucket, s3=s3, urls=urls, tmp=tmp, endpoint=s3_endpoint)


def run_pipeline(inputs, endpoint: str, name: str) -> SimpleNamespace:
    """partition → join → update → stats, each its own CLI process, into warehouse s3://bucket/<name>."""
    warehouse, catalog = f"s3://{inputs.bucket}/{name}", f"sqlite:///{inputs.tmp / (name + '.db')}"
    steps = pipeline_steps(inputs)
    procs, seconds = {}, {}
    for step, args in steps.items():
        t = time.monotonic()
        procs[step] = ok(cli(args, endpoint, warehouse, catalog))
        seconds[step] = round(time.monotonic() - t, 1)
    return SimpleNamespace(warehouse=warehouse, catalog=catalog, procs=procs, seconds=seconds,
                           statuses={k: last_status(p) for k, p in procs.items() if k != "stats"},
                           stats=stdout_json(procs["stats"])[-1])


def run_job(inputs, endpoint: str, name: str) -> SimpleNamespace:
    """The same four steps as one `impressions run JOB.yaml` (one process, one cluster: the quick reference)."""
    import yaml

    warehouse, catalog = f"s3://{inputs.bucket}/{name}", f"sqlite:///{inputs.tmp / (name + '.db')}"
    u = inputs.urls
    job = inputs.tmp / f"{name}.yaml"
    job.write_text(yaml.safe_dump({"steps": [
        {"partition": {"sources": [u["impressions"]], "table": "FACT_PARTITIONED", "buckets": BUCKETS}},
        {"join": {"dimension": u["campaigns"], "source": "FACT_PARTITIONED", "table": "FACT_JOINED"}},
        {"update": {"dimension": u["campaigns_updated"], "source": "FACT_JOINED", "table": "FACT_UPDATED"}},
        {"stats": {"table": "FACT_UPDATED", "recount": True}},
    ]}))
    t = time.monotonic()
    proc = ok(cli(["run", str(job)], endpoint, warehouse, catalog))
    out = stdout_json(proc)
    statuses = {o["stage"]: o for o in out if o.get("event") == "load_status" and o.get("status") != "RUNNING"}
    return SimpleNamespace(warehouse=warehouse, catalog=catalog, procs={"run": proc},
                           seconds={"run": round(time.monotonic() - t, 1)}, statuses=statuses, stats=out[-1])


def pipeline_steps(inputs) -> dict[str, list[str]]:
    u = inputs.urls
    return {
        "partition": ["partition", u["impressions"], "FACT_PARTITIONED", "--buckets", str(BUCKETS)],
        "join": ["join", u["campaigns"], "FACT_PARTITIONED", "FACT_JOINED"],
        "update": ["update", u["campaigns_updated"], "FACT_JOINED", "FACT_UPDATED"],
        "stats": ["stats", "FACT_UPDATED", "--json", "--recount"],
    }


# ------------------------------------------------------------------ 1. transient faults: exact results


@pytest.fixture(scope="module")
def clean_run(inputs):
    return run_job(inputs, inputs.endpoint, "clean")


def test_pipeline_through_five_percent_faults_equals_clean_run(inputs, clean_run, fault_proxy):
    fault_proxy.configure(seed=7, **FIVE_PERCENT)  # any N >= 150 requests: every kind drawn, 2.5-7.5% in all
    faulty = run_pipeline(inputs, fault_proxy.url, "faulty")
    injected = fault_proxy.stats()["counts"]
    fault_proxy.clean()
    print(f"clean {clean_run.seconds} s, with faults {faulty.seconds} s, injected {injected}")

    # the faults really happened, of every kind, at about the configured share
    assert all(injected[k] > 0 for k in FIVE_PERCENT), injected
    share = sum(injected[k] for k in FIVE_PERCENT) / injected["requests"]
    assert 0.025 < share < 0.075, injected

    for step in ("partition", "join", "update"):
        a, b = clean_run.statuses[step], faulty.statuses[step]
        assert a["status"] == b["status"] == "SUCCEEDED", (step, a, b)
        for field in ("rows_read", "rows_written", "rows_quarantined", "quarantine", "orphans", "changed_keys",
                      "affected_partitions"):
            assert a.get(field) == b.get(field), (step, field, a.get(field), b.get(field))

    # stats --recount read every data file through the faults and agree with the metadata
    s, c = faulty.stats, clean_run.stats
    assert s["recount_matches"] is True and s["recount_rows"] == s["rows"] == ROWS
    for field in ("rows", "vp_mean", "vp_std", "vp_std_sample", "vp_min", "vp_max"):
        assert rel_close(s[field], c[field]), (field, s[field], c[field])

    # the tables, read by pyiceberg straight from moto: the same rows, one snapshot each, same per-table stats
    clean_cat = iceberg_catalog(clean_run.catalog, clean_run.warehouse, inputs.endpoint)
    faulty_cat = iceberg_catalog(faulty.catalog, faulty.warehouse, inputs.endpoint)
    for name in ("fact_partitioned", "fact_joined", "fact_updated", "quarantine", "campaigns"):
        assert table_rows(faulty_cat, name) == table_rows(clean_cat, name), name
        t = faulty_cat.load_table(("impressions", name))
        assert len(t.metadata.snapshots) == len(clean_cat.load_table(("impressions", name)).metadata.snapshots)
    for name in ("fact_partitioned", "fact_joined", "fact_updated"):
        t = faulty_cat.load_table(("impressions", name))
        assert len(t.metadata.snapshots) == 1, name
        vp = t.scan().to_arrow()["viewing_percentage"].to_pylist()
        ref = clean_cat.load_table(("impressions", name)).scan().to_arrow()["viewing_percentage"].to_pylist()
        assert len(vp) == len(ref) == ROWS
        assert math.fsum(vp) == math.fsum(ref)
        # every data file of the table exists (no file lost to a cut-off upload)
        prefix = f"s3://{inputs.bucket}/"
        keys = set(list_keys(inputs.s3, inputs.bucket, f"faulty/impressions/{name}/"))
        assert {task.file.file_path[len(prefix):] for task in t.scan().plan_files()} <= keys, name


# ------------------------------------------------------------------ 2. permanent errors: one line, nothing committed


def fresh(inputs, name: str) -> SimpleNamespace:
    """A warehouse and catalog no test used before."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    return SimpleNamespace(warehouse=f"s3://{inputs.bucket}/{name}", db=inputs.tmp / f"{name}.db",
                           catalog=f"sqlite:///{inputs.tmp / (name + '.db')}", prefix=f"{name}/")


def nothing_written(inputs, w: SimpleNamespace) -> None:
    assert list_keys(inputs.s3, inputs.bucket, w.prefix) == {}, "objects were written"
    assert tables_in(w.db, w.warehouse, inputs.endpoint) == [], "tables were created"


def test_source_access_denied(inputs, fault_proxy):
    url = inputs.urls["impressions"]
    fault_proxy.configure(rules=[{"prefix": url, "status": 403}])
    w = fresh(inputs, "denied-source")
    proc = cli(["partition", url, "FACT_PARTITIONED"], fault_proxy.url, w.warehouse, w.catalog, workers=1)
    line = failed_cleanly(proc, url)
    assert "denied" in line or "permission" in line, line
    nothing_written(inputs, w)


def test_source_readable_by_head_but_not_by_get(inputs, fault_proxy):
    """The role may stat the object but not read it (GET denied): the read tasks fail on the workers."""
    url = inputs.urls["impressions"]
    fault_proxy.configure(rules=[{"prefix": url, "methods": ["GET"], "status": 403}])
    w = fresh(inputs, "denied-get")
    proc = cli(["partition", url, "FACT_PARTITIONED"], fault_proxy.url, w.warehouse, w.catalog, workers=1)
    line = failed_cleanly(proc, url)
    assert "access denied (the role needs s3:GetObject on it)" in line, line
    assert list_keys(inputs.s3, inputs.bucket, w.prefix + "impressions/fact_partitioned/data/") == {}
    if w.db.exists():  # the empty tables may exist; no snapshot was committed to any data table
        cat = iceberg_catalog(w.catalog, w.warehouse, inputs.endpoint)
        for ident in [t for ns in cat.list_namespaces() for t in cat.list_tables(ns)]:
            if ident[-1] == "loads":  # the load history records the failure: that is what it is for
                statuses = cat.load_table(ident).scan().to_arrow().column("status").to_pylist()
                assert statuses[-1:] == ["FAILED"] or "FAILED" in statuses, statuses
                continue
            assert cat.load_table(ident).metadata.snapshots == [], ident


def test_dimension_access_denied(inputs, clean_run, fault_proxy):
    url = inputs.urls["campaigns"]
    fault_proxy.configure(rules=[{"prefix": url, "status": 403}])
    proc = cli(["join", url, "FACT_PARTITIONED", "FACT_JOINED_DENIED"], fault_proxy.url, clean_run.warehouse,
               clean_run.catalog)
    failed_cleanly(proc, url)
    cat = iceberg_catalog(clean_run.catalog, clean_run.warehouse, inputs.endpoint)
    assert ("impressions", "fact_joined_denied") not in cat.list_tables("impressions")


def test_warehouse_write_denied(inputs, fault_proxy):
    """The role may read the sources but not write under the warehouse prefix (no s3:PutObject)."""
    w = fresh(inputs, "denied-warehouse")
    prefix = f"{w.warehouse}/"
    fault_proxy.configure(rules=[{"prefix": prefix, "methods": ["PUT", "POST"], "status": 403}])
    proc = cli(["partition", inputs.urls["impressions"], "FACT_PARTITIONED"], fault_proxy.url, w.warehouse,
               w.catalog, workers=1)
    line = failed_cleanly(proc, prefix)
    assert "access denied (the role needs s3:PutObject on it)" in line, line
    nothing_written(inputs, w)


def test_missing_dimension_object(inputs, clean_run, fault_proxy):
    url = f"s3://{inputs.bucket}/input/no-such-campaigns.csv.gz"
    proc = cli(["join", url, "FACT_PARTITIONED", "FACT_JOINED_MISSING"], fault_proxy.url, clean_run.warehouse,
               clean_run.catalog)
    failed_cleanly(proc, url)


def test_missing_warehouse_bucket(inputs, fault_proxy):
    bucket = f"no-such-{uuid.uuid4().hex[:10]}"
    warehouse = f"s3://{bucket}/wh"
    db = inputs.tmp / f"{bucket}.db"
    proc = cli(["partition", inputs.urls["impressions"], "FACT_PARTITIONED"], fault_proxy.url, warehouse,
               f"sqlite:///{db}", workers=1)
    line = failed_cleanly(proc, f"s3://{bucket}/")
    assert f"bucket {bucket} does not exist" in line, line
    assert tables_in(db, warehouse, inputs.endpoint) == []


def test_missing_bucket_answered_by_the_proxy(inputs, fault_proxy):
    """S3's 404 NoSuchBucket for the source, as the proxy answers it (a bucket deleted between runs)."""
    url = inputs.urls["impressions"]
    fault_proxy.configure(rules=[{"prefix": f"s3://{inputs.bucket}/input/", "status": 404, "code": "NoSuchBucket"}])
    w = fresh(inputs, "nobucket")
    proc = cli(["partition", url, "FACT_PARTITIONED"], fault_proxy.url, w.warehouse, w.catalog, workers=1)
    failed_cleanly(proc, url)
    nothing_written(inputs, w)


def test_persistent_throttling_fails_in_bounded_time(inputs, fault_proxy):
    """An object that answers SlowDown to every request: a clean failure after max-attempts, never a hang."""
    url = inputs.urls["impressions"]
    fault_proxy.configure(rules=[{"prefix": url, "status": 503, "code": "SlowDown"}])
    w = fresh(inputs, "throttled")
    t = time.monotonic()
    proc = cli(["partition", url, "FACT_PARTITIONED"], fault_proxy.url, w.warehouse, w.catalog, workers=1,
               env={"DASK_IMPRESSIONS__S3__MAX_ATTEMPTS": "2"})
    line = failed_cleanly(proc, url)
    assert time.monotonic() - t < 120
    assert "S3 kept throttling" in line and "(impressions.s3.max-attempts: 2)" in line, line
    nothing_written(inputs, w)


def test_data_file_writes_denied_after_the_load_began(inputs, fault_proxy):
    """The role may write table metadata but not data files: a small data file's PutObject and a large one's
    CompleteMultipartUpload are denied, so the data-file writes on the workers fail after the load began."""
    w = fresh(inputs, "denied-complete")
    data = f"{w.warehouse}/impressions/fact_partitioned/data/"
    fault_proxy.configure(rules=[{"prefix": data, "methods": ["POST"], "query": "uploadId=", "status": 403},
                                 {"prefix": data, "methods": ["PUT"], "status": 403}])
    proc = cli(["partition", inputs.urls["impressions"], "FACT_PARTITIONED"], fault_proxy.url, w.warehouse,
               w.catalog, workers=1)
    line = failed_cleanly(proc, data)
    assert "access denied (the role needs s3:PutObject on it)" in line, line
