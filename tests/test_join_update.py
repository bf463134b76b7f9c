"""Broadcast join and partition-exact update, checked against a plain-Python join of the raw files."""
from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.table.bucket import bucket_of
from pipeline.errors import UsageError
from pipeline.generate import generate
from pipeline.stages.join import join
from pipeline.stages.partition import partition
from pipeline.table.catalog import load_table, open_catalog, table_name
from pipeline.stages.update import update

BUCKETS = 64


def read_dim(path) -> dict:
    with gzip.open(path, "rt", newline="") as f:
        return {r["campaign_id"]: r for r in csv.DictReader(f)}


def impressions_per_campaign(path) -> Counter:
    with gzip.open(path, "rt", newline="") as f:
        return Counter(line.split(",")[2] for line in f)


def joined_by_campaign(table) -> dict:
    """campaign_id -> (rows, {campaign_name values}) as the table holds them."""
    t = table.scan(selected_fields=("campaign_id", "campaign_name")).to_arrow()
    out = defaultdict(lambda: [0, set()])
    for cid, name in zip(t["campaign_id"].to_pylist(), t["campaign_name"].to_pylist()):
        out[cid][0] += 1
        out[cid][1].add(name)
    return out


def check_attributes(table, counts: Counter, dim: dict):
    got = joined_by_campaign(table)
    assert {c: v[0] for c, v in got.items()} == dict(counts)
    for cid, (_, names) in got.items():
        want = dim[cid]["campaign_name"] if cid in dim else None
        assert names == {want}, cid


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return generate(str(d), rows=120_000, days=4, campaigns=30, changed=3, seed=11)


def files_of(table) -> dict:
    return {t.file.file_path: t.file for t in table.scan().plan_files()}


@pytest.fixture
def joined(client, settings, data):
    partition(client, settings, [data["impressions"]], "FACT_PARTITIONED", buckets=BUCKETS)
    record = join(client, settings, data["campaigns"], "FACT_PARTITIONED", "FACT_JOINED")
    return record


def catalog_of(settings):
    return open_catalog(settings.warehouse, settings.catalog)


def test_join_gives_every_row_the_attributes_of_its_campaign(joined, settings, data):
    counts = impressions_per_campaign(data["impressions"])
    dim = read_dim(data["campaigns"])
    table = load_table(catalog_of(settings), table_name("FACT_JOINED"))
    check_attributes(table, counts, dim)
    assert joined["orphans"] == sum(n for c, n in counts.items() if c not in dim) > 0
    assert joined["rows_written"] == sum(counts.values())
    props = table.current_snapshot().summary.additional_properties
    assert props["impressions.dimension-snapshot-id"]
    assert [f.name for f in table.spec().fields] == ["ad_date", "campaign_id_bucket"]


def test_update_in_place_rewrites_only_the_affected_buckets(client, settings, data, joined):
    catalog = catalog_of(settings)
    before_table = load_table(catalog, table_name("FACT_JOINED"))
    before = files_of(before_table)
    before_snapshot = before_table.current_snapshot().snapshot_id
    updated = read_dim(data["campaigns_updated"])
    affected = {bucket_of(c, BUCKETS) for c in updated}
    affected_bytes = sum(f.file_size_in_bytes for f in before.values() if f.partition[1] in affected)

    record = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_JOINED")
    assert record["status"] == "SUCCEEDED" and record["changed_keys"] == 4
    after_table = load_table(catalog, table_name("FACT_JOINED"))
    after = files_of(after_table)
    for path, f in before.items():
        if f.partition[1] not in affected:
            assert path in after and after[path].file_size_in_bytes == f.file_size_in_bytes
            assert os.path.getsize(path.removeprefix("file://")) == f.file_size_in_bytes
        else:
            assert path not in after
    assert record["bytes_rewritten"] == affected_bytes
    assert record["bytes_written"] <= 1.1 * affected_bytes
    assert after_table.current_snapshot().parent_snapshot_id == before_snapshot  # one snapshot

    dim = {**read_dim(data["campaigns"]), **updated}
    check_attributes(after_table, impressions_per_campaign(data["impressions"]), dim)
    assert after_table.scan().to_arrow().num_rows == 120_000

    again = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_JOINED")
    assert again["committed"] is False and again["changed_keys"] == 0
    assert load_table(catalog, table_name("FACT_JOINED")).current_snapshot().snapshot_id == \
        after_table.current_snapshot().snapshot_id


def test_update_into_another_table_copies_the_rest(client, settings, data, joined):
    record = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_UPDATED")
    assert record["status"] == "SUCCEEDED"
    catalog = catalog_of(settings)
    source = load_table(catalog, table_name("FACT_JOINED"))
    target = load_table(catalog, table_name("FACT_UPDATED"))
    dim = {**read_dim(data["campaigns"]), **read_dim(data["campaigns_updated"])}
    check_attributes(target, impressions_per_campaign(data["impressions"]), dim)
    check_attributes(source, impressions_per_campaign(data["impressions"]), read_dim(data["campaigns"]))
    # no file is shared between the two tables, so expiring either never breaks the other
    assert not set(files_of(source)) & set(files_of(target))
    again = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_UPDATED")
    assert again["status"] == "SKIPPED"
    assert load_table(catalog, table_name("FACT_UPDATED")).current_snapshot().snapshot_id == \
        target.current_snapshot().snapshot_id


def test_an_update_into_another_local_table_links_the_files_it_keeps(client, settings, data, joined, tmp_path):
    """On a local disk the unaffected files get a second name (a hard link) in the target's location instead of
    a byte copy: the same bytes, yet each table's own file — the source reads the same after every file the
    target linked is deleted (as cleaning up the target would)."""
    import os

    record = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_LINKED")
    assert record["status"] == "SUCCEEDED" and record["files_copied"] > 0
    catalog = catalog_of(settings)
    source = load_table(catalog, table_name("FACT_JOINED"))
    target = load_table(catalog, table_name("FACT_LINKED"))
    by_name = {f.rsplit("/", 1)[1]: f.removeprefix("file://") for f in files_of(source)}
    copied = [f.removeprefix("file://") for f in files_of(target) if "/copied-" in f]
    assert len(copied) == record["files_copied"]
    for path in copied:
        original = by_name[path.rsplit("/", 1)[1]]
        assert os.stat(path).st_ino == os.stat(original).st_ino and os.stat(path).st_nlink == 2
    dim = {**read_dim(data["campaigns"]), **read_dim(data["campaigns_updated"])}
    check_attributes(target, impressions_per_campaign(data["impressions"]), dim)
    before = source.scan().to_arrow().sort_by("impression_id")
    for path in copied:
        os.remove(path)
    after = load_table(catalog, table_name("FACT_JOINED")).scan().to_arrow().sort_by("impression_id")
    assert after.num_rows > 0 and after.equals(before)
    assert all(os.stat(by_name[p.rsplit("/", 1)[1]]).st_nlink == 1 for p in copied)


def test_dry_run_commits_nothing(client, settings, data, joined, capsys):
    catalog = catalog_of(settings)
    snap = load_table(catalog, table_name("FACT_JOINED")).current_snapshot().snapshot_id
    record = update(client, settings, data["campaigns_updated"], "FACT_JOINED", "FACT_JOINED", dry_run=True)
    assert record["files_rewritten"] > 0 and record["dry_run"]
    assert load_table(catalog, table_name("FACT_JOINED")).current_snapshot().snapshot_id == snap
    plan = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"update_plan"' in line]
    assert plan and plan[0]["files"]


def test_schema_evolution_and_full_snapshot(client, settings, data, joined, tmp_path):
    dim = read_dim(data["campaigns"])
    cid = sorted(dim)[0]
    path = tmp_path / "dim.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*dim[cid].keys(), "budget"])
        w.writeheader()
        w.writerow({**dim[cid], "budget": "1000"})
    update(client, settings, str(path), "FACT_JOINED", "FACT_JOINED")
    t = load_table(catalog_of(settings), table_name("FACT_JOINED")).scan().to_arrow()
    assert "budget" in t.column_names
    mine = t.filter(pc.equal(t["campaign_id"], cid))
    assert set(mine["budget"].to_pylist()) == {"1000"}
    others = t.filter(pc.not_equal(t["campaign_id"], cid))
    assert set(others["budget"].to_pylist()) <= {None}

    # --full-snapshot: the file is the whole dimension now, so every other campaign loses its attributes
    update(client, settings, str(path), "FACT_JOINED", "FACT_JOINED", full_snapshot=True)
    t = load_table(catalog_of(settings), table_name("FACT_JOINED")).scan().to_arrow()
    assert set(t.filter(pc.not_equal(t["campaign_id"], cid))["campaign_name"].to_pylist()) == {None}
    assert t.num_rows == 120_000


def test_bad_dimensions_are_usage_errors(client, settings, joined, tmp_path):
    dup = tmp_path / "dup.csv"
    dup.write_text("campaign_id,campaign_name\ncampaign_01,a\ncampaign_01,b\n")
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("id,campaign_name\ncampaign_01,a\n")
    shadow = tmp_path / "shadow.csv"
    shadow.write_text("campaign_id,video_id\ncampaign_01,a\n")
    for bad in (dup, nokey, shadow):
        with pytest.raises(UsageError):
            update(client, settings, str(bad), "FACT_JOINED", "FACT_JOINED")


def _cli(settings, *args):
    return [sys.executable, "-m", "pipeline", "--warehouse", settings.warehouse, "--workers", "1", *args]


def test_a_killed_update_leaves_the_previous_snapshot_and_the_rerun_completes(settings, data, joined):
    catalog = catalog_of(settings)
    snap = load_table(catalog, table_name("FACT_JOINED")).current_snapshot().snapshot_id
    proc = subprocess.Popen(_cli(settings, "update", data["campaigns_updated"], "FACT_JOINED", "FACT_JOINED"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen = b""
    for line in proc.stderr:  # the first progress line: one file rewritten, the others still to go
        seen += line
        if line.startswith(b"rewrite: "):
            break
    assert b"rewrite: " in seen, seen.decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    table = load_table(catalog, table_name("FACT_JOINED"))
    assert table.current_snapshot().snapshot_id == snap
    assert table.scan().to_arrow().num_rows == 120_000

    done = subprocess.run(_cli(settings, "update", data["campaigns_updated"], "FACT_JOINED", "FACT_JOINED"),
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    t = load_table(catalog, table_name("FACT_JOINED")).scan().to_arrow()
    assert t.num_rows == 120_000 and pc.count_distinct(t["impression_id"]).as_py() == 120_000
    dim = {**read_dim(data["campaigns"]), **read_dim(data["campaigns_updated"])}
    check_attributes(load_table(catalog, table_name("FACT_JOINED")), impressions_per_campaign(data["impressions"]), dim)


def test_run_job_file(tmp_path, data):
    job = tmp_path / "job.yaml"
    for name in ("impressions", "campaigns", "campaigns_updated"):
        os.symlink(data[name], tmp_path / os.path.basename(data[name]))
    job.write_text(
        "warehouse: wh\n"
        "steps:\n"
        "  - partition: {sources: [impressions.csv.gz], table: tables/FACT_PARTITIONED}\n"
        "  - join: {dimension: campaigns.csv.gz, source: FACT_PARTITIONED, table: FACT_JOINED}\n"
        "  - update: {dimension: campaigns_updated.csv.gz, source: FACT_JOINED, table: FACT_UPDATED}\n"
        "  - stats: {table: FACT_UPDATED}\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "--workers", "2", "run", str(job)],
                         capture_output=True, cwd="/", timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    last = json.loads(out.stdout.decode().splitlines()[-1])
    assert last["table"] == "impressions.fact_updated" and last["rows"] == 120_000
    assert (tmp_path / "wh" / "catalog.db").exists()


def test_two_racing_updates_keep_both_changes(settings, data, joined, tmp_path):
    dim = read_dim(data["campaigns"])
    ids = sorted(dim)
    paths = []
    for i, chosen in enumerate((ids[:2], ids[5:7])):
        p = tmp_path / f"race{i}.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dim[ids[0]].keys()))
            w.writeheader()
            for cid in chosen:
                w.writerow({**dim[cid], "campaign_name": f"race {i} {cid}"})
        paths.append(str(p))
    procs = [subprocess.Popen(_cli(settings, "update", p, "FACT_JOINED", "FACT_JOINED"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for p in paths]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-3000:] for o in outs]
    want = dict(dim)
    for i, chosen in enumerate((ids[:2], ids[5:7])):
        for cid in chosen:
            want[cid] = {**dim[cid], "campaign_name": f"race {i} {cid}"}
    table = load_table(catalog_of(settings), table_name("FACT_JOINED"))
    check_attributes(table, impressions_per_campaign(data["impressions"]), want)


def test_incremental_join_joins_only_new_loads(client, settings, data, joined, tmp_path):
    more = generate(str(tmp_path / "more"), rows=5_000, days=2, campaigns=30, changed=0, seed=12)
    partition(client, settings, [more["impressions"]], "FACT_PARTITIONED")
    record = join(client, settings, data["campaigns"], "FACT_PARTITIONED", "FACT_JOINED")
    assert record["rows_read"] == 5_000 and record["full"] is False
    table = load_table(catalog_of(settings), table_name("FACT_JOINED"))
    assert table.scan().to_arrow().num_rows == 125_000
    skipped = join(client, settings, data["campaigns"], "FACT_PARTITIONED", "FACT_JOINED")
    assert skipped["status"] == "SKIPPED"


def test_date_keyed_dimension_touches_only_the_changed_dates(client, settings, data, joined, tmp_path):
    import dataclasses

    dim = read_dim(data["campaigns"])
    cid = sorted(dim)[3]
    dated = tmp_path / "dated.csv"
    with open(dated, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ad_date", *dim[cid].keys()])
        w.writeheader()
        for d in ("2019-01-01", "2019-01-02", "2019-01-03", "2019-01-04"):
            for c, row in dim.items():
                w.writerow({"ad_date": d, **row})
    keyed = dataclasses.replace(settings, dimension_date_column="ad_date", dimension_table="campaigns_by_date")
    join(client, keyed, str(dated), "FACT_PARTITIONED", "FACT_BY_DATE")
    change = tmp_path / "change.csv"
    with open(change, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ad_date", *dim[cid].keys()])
        w.writeheader()
        w.writerow({"ad_date": "2019-01-02", **dim[cid], "campaign_name": "only on the 2nd"})
    catalog = catalog_of(settings)
    before = files_of(load_table(catalog, table_name("FACT_BY_DATE")))
    record = update(client, keyed, str(change), "FACT_BY_DATE", "FACT_BY_DATE")
    assert record["affected_partitions"] == 1
    after = files_of(load_table(catalog, table_name("FACT_BY_DATE")))
    import datetime as dt
    target = (dt.date(2019, 1, 2) - dt.date(1970, 1, 1)).days
    for path, f in before.items():
        if (f.partition[0], f.partition[1]) != (target, bucket_of(cid, BUCKETS)):
            assert path in after
    t = load_table(catalog, table_name("FACT_BY_DATE")).scan().to_arrow()
    mine = t.filter(pc.equal(t["campaign_id"], cid))
    names = Counter(zip([d.isoformat() for d in mine["ad_date"].to_pylist()], mine["campaign_name"].to_pylist()))
    assert {d for (d, n) in names if n == "only on the 2nd"} == {"2019-01-02"}
    assert all(n == dim[cid]["campaign_name"] for (d, n) in names if d != "2019-01-02")


def test_racing_joins_never_duplicate_rows(settings, data, joined, tmp_path):
    more = generate(str(tmp_path / "more"), rows=5_000, days=2, campaigns=30, changed=0, seed=13)
    done = subprocess.run(_cli(settings, "partition", more["impressions"], "FACT_PARTITIONED"), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    procs = [subprocess.Popen(_cli(settings, "join", data["campaigns"], "FACT_PARTITIONED", "FACT_JOINED"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 1]), [o[1].decode()[-1500:] for o in outs]
    catalog = catalog_of(settings)
    joined_rows = load_table(catalog, table_name("FACT_JOINED")).scan().to_arrow().num_rows
    assert joined_rows == load_table(catalog, table_name("FACT_PARTITIONED")).scan().to_arrow().num_rows == 125_000


def test_the_lookup_join_equals_arrows_hash_join():
    """join on campaign_id is a per-campaign lookup (dictionary-encoded attributes): row for row the same as
    Arrow's own left outer hash join, with orphans, null attribute values and an all-null attribute."""
    import random
    from datetime import date

    from pipeline.stages.join import MATCHED, lookup_join

    rng = random.Random(5)
    n = 5_000
    facts = pa.table({"ad_date": pa.array([date(2019, 1, 1 + i % 3) for i in range(n)], pa.date32()),
                      "impression_id": pa.array(range(n), pa.int64()),
                      "campaign_id": pa.array([f"campaign_{rng.randrange(30):02d}" for _ in range(n)]),
                      "video_id": pa.array([f"video_{i % 4}" for i in range(n)]),
                      "viewing_percentage": pa.array([rng.random() for _ in range(n)])})
    facts = pa.concat_tables([facts.slice(0, 2_000), facts.slice(2_000)])  # two chunks
    dim = pa.table({"campaign_id": [f"campaign_{i:02d}" for i in range(0, 40, 2)],  # odd ids are orphans
                    "name": [None if i % 6 == 0 else f"Campaign {i}" for i in range(0, 40, 2)],
                    "budget": pa.array([i * 10 for i in range(0, 40, 2)], pa.int64()),
                    "gone": pa.array([None] * 20, pa.string())})
    ours, orphans = lookup_join(facts, dim, ["name", "budget", "gone"])
    theirs = facts.join(dim.append_column(MATCHED, pa.array([True] * 20)), keys="campaign_id",
                        join_type="left outer")
    assert orphans == theirs[MATCHED].null_count > 0
    key = lambda t: t.select(["impression_id", "name", "budget", "gone"]).cast(  # noqa: E731
        pa.schema([("impression_id", pa.int64()), ("name", pa.string()), ("budget", pa.int64()),
                   ("gone", pa.string())])).sort_by("impression_id").to_pylist()
    assert key(ours) == key(theirs)
