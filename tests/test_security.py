"""Security drills (issue 8): paths stay inside the warehouse, credentials stay out of everything we write, the Dask
dashboard is never published.

1. Table names, namespaces and configured table names that try to leave the warehouse (`../../etc/x`, absolute
   paths, `..` in namespaces, `ns.../x`) are refused with exit 2 and one line, or normalised to a table inside the
   warehouse: after the runs, every file they created is under the warehouse.
2. A load on a loopback S3 (moto) with recognisable credentials in the environment: the credentials appear
   nowhere — not on stdout or stderr (debug output included), not in any object of the warehouse (metadata JSON,
   manifests, data, indexes), object metadata or bucket tags, not in the catalog database, not in the repository.
   The repository (docker/, batch/, docs/, code) holds no AWS keys or private keys, and the image copies no
   credentials in.
3. The CloudFormation template opens the Dask ports (8786 scheduler, 8787 dashboard) to the nodes' own security
   group only: no CIDR, prefix list or other group can reach them.
"""
from __future__ import annotations

import gzip
import os
import random
import re
import string
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from drills_cli import ROOT, cli_env, dimension_csv, impression_bytes, impressions, one_error_line, run
from drills_judge import state

BOUND = 240


def files_under(root: Path) -> set[str]:
    return {os.path.join(d, n) for d, _, names in os.walk(root) for n in names}


def outside(root: Path, warehouse: Path, before: set[str]) -> list[str]:
    """Files created under `root` since `before`, other than in the warehouse and the test's own inputs."""
    wh = str(warehouse) + os.sep
    return sorted(p for p in files_under(root) - before if not p.startswith(wh))


# ------------------------------------------------------------------ 1. names and paths

REFUSED = ["..", ".x", "a..b", "x/..", "..\\..\\x"]
NORMALISED = {  # what each name must become: a table inside the warehouse (or be refused)
    "../../etc/drill_x": "impressions.drill_x",
    "/etc/drill_abs": "impressions.drill_abs",
    "ns.../drill_z": "impressions.drill_z",
    "tables/../../drill_w": "impressions.drill_w",
    "../other.drill_v": "other.drill_v",
}


@pytest.fixture
def tree(tmp_path):
    """tmp/a/b/warehouse, so a path that climbs two levels out of it is still inside tmp (and can be seen)."""
    wh = tmp_path / "a" / "b" / "warehouse"
    wh.mkdir(parents=True)
    src = tmp_path / "in.csv.gz"
    src.write_bytes(gzip.compress(impression_bytes(500, seed=1) + b"a quarantined line\n"))
    return tmp_path, wh, str(src)


def test_hostile_table_names_are_refused_with_one_line(tree, client):
    tmp, wh, src = tree
    before = files_under(tmp)

    def one(name):
        return name, run(impressions(wh, "partition", src, name, scheduler=client.scheduler.address), timeout=BOUND)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(one, REFUSED))
    for name, proc in results.items():
        one_error_line(proc, 2, "invalid table name")
    assert outside(tmp, wh, before) == []
    assert all(n == 0 for n, _ in state(str(wh)).values())


def test_hostile_table_names_that_are_accepted_are_normalised_inside_the_warehouse(tree, client):
    tmp, wh, src = tree
    job = tmp / "job.yaml"
    job.write_text("steps:\n" + "".join(f"  - partition: {{sources: [{src}], table: '{n}'}}\n" for n in NORMALISED))
    before = files_under(tmp)
    proc = run(impressions(wh, "run", str(job), scheduler=client.scheduler.address), timeout=BOUND)
    assert proc.proc.returncode == 0, proc.tail()
    tables = {o["table"] for o in proc.statuses()}
    assert tables == set(NORMALISED.values())
    assert outside(tmp, wh, before) == []
    for name in ("etc/drill_x", "etc/drill_abs", "drill_z", "drill_w"):
        assert not os.path.exists(os.path.join("/", name))
    got = state(str(wh))
    for t in NORMALISED.values():
        assert got[t][0] == 1, got


@pytest.mark.parametrize("env, refused", [
    ({"DASK_IMPRESSIONS__NAMESPACE": "../../escaped_ns"}, True),
    ({"DASK_IMPRESSIONS__TABLES__QUARANTINE": "../../escaped_quarantine",
      "DASK_IMPRESSIONS__TABLES__DIMENSION": "../../escaped_dimension",
      "DASK_IMPRESSIONS__TABLES__LOADS": "../../escaped_loads"}, True),
], ids=["namespace", "configured-table-names"])
def test_configured_names_are_refused_or_stay_inside_the_warehouse(env, refused, tree, client):
    tmp, wh, src = tree
    dim = dimension_csv(tmp / "campaigns.csv", {f"campaign_{i:02d}": f"C{i}" for i in range(40)})
    job = tmp / "job.yaml"
    job.write_text("steps:\n"
                   f"  - partition: {{sources: [{src}], table: FACT}}\n"
                   f"  - join: {{dimension: {dim}, source: FACT, table: JOINED}}\n")
    before = files_under(tmp)
    proc = run(impressions(wh, "run", str(job), scheduler=client.scheduler.address), env=cli_env(env),
               timeout=BOUND)
    if proc.proc.returncode == 2:
        one_error_line(proc, 2)
    else:
        assert not refused, f"expected a refusal (exit 2)\n{proc.tail()}"
        assert proc.proc.returncode == 0, proc.tail()
    escaped = outside(tmp, wh, before)
    assert escaped == [], f"files written outside the warehouse {wh}: {escaped[:5]}"


# ------------------------------------------------------------------ 2. credentials


def _recognisable() -> dict:
    rng = random.Random()
    upper = string.ascii_uppercase + string.digits
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(rng.choice(upper) for _ in range(16)),
        "AWS_SECRET_ACCESS_KEY": "drillSECRET" + "".join(rng.choice(string.ascii_letters + string.digits + "/+")
                                                          for _ in range(29)),
        "AWS_SESSION_TOKEN": "drillTOKEN" + "".join(rng.choice(string.ascii_letters) for _ in range(40)),
    }


def _hits(blob: bytes, secrets: dict) -> list[str]:
    return [k for k, v in secrets.items() if v.encode() in blob]


def test_no_credentials_in_output_warehouse_or_repository(s3_endpoint, s3_bucket, tmp_path):
    import boto3

    secrets = _recognisable()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    facts = impression_bytes(2_000, seed=2) + b"a quarantined line\n"
    s3.put_object(Bucket=s3_bucket, Key="in/facts.csv.gz", Body=gzip.compress(facts))
    s3.put_object(Bucket=s3_bucket, Key="in/bad.csv.gz", Body=gzip.compress(facts)[:-40])
    dim = dimension_csv(tmp_path / "campaigns.csv", {f"campaign_{i:02d}": f"C{i}" for i in range(40)})
    s3.upload_file(dim, s3_bucket, "in/campaigns.csv")
    s3.put_object(Bucket=s3_bucket, Key="in/changed.csv", Body=b"campaign_id,campaign_name,channel\n"
                                                              b"campaign_03,Renamed,video\n")
    job = tmp_path / "job.yaml"
    b = f"s3://{s3_bucket}"
    job.write_text("steps:\n"
                   f"  - partition: {{sources: [{b}/in/facts.csv.gz], table: FACT}}\n"
                   f"  - join: {{dimension: {b}/in/campaigns.csv, source: FACT, table: JOINED}}\n"
                   f"  - update: {{dimension: {b}/in/changed.csv, source: JOINED, table: JOINED}}\n"
                   "  - stats: {table: JOINED}\n")
    db = tmp_path / "catalog.db"
    wh = f"{b}/warehouse"
    env = cli_env({"AWS_ENDPOINT_URL": s3_endpoint, **secrets})
    load = run(impressions(wh, "run", str(job), workers=1, catalog=f"sqlite:///{db}"), env=env, timeout=BOUND)
    assert load.proc.returncode == 0, load.tail()
    # the noisiest run there is: a failing load with debug output (tracebacks, worker logs at INFO)
    debug = run(impressions(wh, "partition", f"{b}/in/bad.csv.gz", "OTHER", workers=1, catalog=f"sqlite:///{db}"),
                env={**env, "IMPRESSIONS_DEBUG": "1"}, timeout=BOUND)
    assert debug.proc.returncode == 1, debug.tail()

    for proc in (load, debug):
        assert _hits((proc.stdout + proc.stderr).encode(), secrets) == [], proc.tail()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    assert any(k.endswith(".metadata.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    for key in keys:
        obj = s3.get_object(Bucket=s3_bucket, Key=key)
        assert _hits(obj["Body"].read(), secrets) == [], key
        assert _hits(repr(obj.get("Metadata", {})).encode(), secrets) == [], key
    try:
        tags = s3.get_bucket_tagging(Bucket=s3_bucket)["TagSet"]
    except s3.exceptions.ClientError:
        tags = []
    assert _hits(repr(tags).encode(), secrets) == []
    assert _hits(db.read_bytes(), secrets) == []
    with sqlite3.connect(db) as con:  # the catalog's own view: every property of every table
        rows = con.execute("SELECT * FROM iceberg_tables").fetchall()
    assert rows and _hits(repr(rows).encode(), secrets) == []
    from drills_judge import catalog

    cat = catalog(wh, uri=f"sqlite:///{db}", endpoint=s3_endpoint)
    for ident in cat.list_tables("impressions"):
        t = cat.load_table(ident)
        props = dict(t.properties)
        assert not [k for k in props if "secret" in k or "access-key" in k or "token" in k], props
        for snapshot in t.metadata.snapshots:
            assert _hits(repr(snapshot.summary).encode(), secrets) == []

    # nothing the runs left in the repository (cwd) either
    for path in _repository_files():
        assert _hits(Path(path).read_bytes(), secrets) == [], path


SKIP_DIRS = {".git", ".venv", ".hypothesis", ".pytest_cache", "__pycache__", "node_modules", "data", ".venvs"}
EXAMPLE_KEYS = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}  # AWS's documented examples


def _repository_files(limit: int = 5 << 20):
    for d, dirs, names in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.path.getsize(p) <= limit:
                yield p


SECRET_PATTERNS = [
    re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(rb"(?i)aws_?secret_?access_?key['\"]?\s*[:=]\s*['\"]?([A-Za-z0-9/+=]{40})\b"),
    re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def test_the_repository_holds_no_credentials():
    found = []
    for path in _repository_files():
        if path.startswith(str(ROOT / "tests")) and os.path.basename(path).startswith(("test_security", "drills_")):
            continue  # the patterns themselves
        blob = Path(path).read_bytes()
        for rx in SECRET_PATTERNS:
            for m in rx.finditer(blob):
                value = (m.group(1) if m.groups() else m.group(0)).decode(errors="replace")
                if value not in EXAMPLE_KEYS:
                    found.append(f"{os.path.relpath(path, ROOT)}: {m.group(0)[:60]!r}")
    assert found == []
    # images and templates: no credentials set, no credential files copied in
    for path in list((ROOT / "docker").glob("*")) + list((ROOT / "batch").glob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        assert not re.search(r"(?m)^\s*(ENV|ARG)\s+.*AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", text), path
        assert not re.search(r"(?i)\{?\s*Name:\s*AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", text), path
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = re.findall(r"(?m)^\s*(?:COPY|ADD)\s+(?:--\S+\s+)*(.+?)\s+\S+\s*$", dockerfile)
    assert copied and all(not re.search(r"\.aws|credentials|\.env\b|^\.$", c) for c in copied), copied


# ------------------------------------------------------------------ 3. the dashboard is never published


class _Tagged(yaml.SafeLoader):
    """CloudFormation YAML: short-form intrinsics (!Ref, !Sub, !GetAtt …) read as {tag: value}."""


def _intrinsic(loader, tag_suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {tag_suffix: value}


_Tagged.add_multi_constructor("!", _intrinsic)

DASK_PORTS = (8786, 8787)


def _covers(rule: dict, port: int) -> bool:
    proto = str(rule.get("IpProtocol", "")).lower()
    if proto in ("-1", "all"):
        return True
    if proto not in ("tcp", "6"):
        return False
    lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
    return not isinstance(lo, int) or not isinstance(hi, int) or lo <= port <= hi  # unknown ports: assume covered


def test_the_stack_never_publishes_the_dask_dashboard_or_scheduler():
    path = ROOT / "batch" / "stack.yaml"
    if not path.exists():
        pytest.skip("no CloudFormation template (batch/stack.yaml)")
    template = yaml.load(path.read_text(), Loader=_Tagged)
    resources = template["Resources"]
    groups = {name for name, r in resources.items() if r["Type"] == "AWS::EC2::SecurityGroup"}
    rules = []
    for name, r in resources.items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::EC2::SecurityGroup":
            rules += [(name, rule) for rule in props.get("SecurityGroupIngress", [])]
        elif r["Type"] == "AWS::EC2::SecurityGroupIngress":
            rules.append((name, props))
    assert rules, "no ingress rule found: the nodes could not reach each other"
    for name, rule in rules:
        for port in DASK_PORTS:
            if not _covers(rule, port):
                continue
            assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule), (name, port, rule)
            source = rule.get("SourceSecurityGroupId")
            assert isinstance(source, dict) and source.get("Ref") in groups, (name, port, rule)
            target = rule.get("GroupId") or {"Ref": name}
            assert source == target or (isinstance(target, dict) and target.get("Ref") == source.get("Ref")), \
                f"{name}: port {port} reachable from another group ({source} -> {target})"
    for name, r in resources.items():  # no load balancer or published container port either
        assert not r["Type"].startswith("AWS::ElasticLoadBalancing"), name
        text = yaml.safe_dump(r.get("Properties", {}), default_flow_style=True)
        assert not re.search(r"(?i)(hostPort|containerPort)\W+87(86|87)", text), name
