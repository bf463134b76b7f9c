"""Data guarantees that must hold in every case (docs/interface.md, "Tables" and "Lineage and statistics live
with the table"): a committed source is never appended twice — not after another tool's maintenance, not when
the file is touched or copied —, --replace replaces, every documented compression writes a table others read,
one snapshot per table per command, bounded memory whatever the number of sources.

Judged from outside where it matters: pyiceberg's own expiry, an independent orphan sweep and DuckDB
(tests/outside.py).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import threading

import dask.config
import pyarrow as pa
import pytest

from conftest import swallowed_sigterm, write_gz
from outside import delete_unreachable_files, duckdb_connection, duckdb_rows, duckdb_stats, expire_all_but_current
from pipeline.config import load_settings
from pipeline.errors import UsageError
from pipeline.stages.join import join
from pipeline.stages.owners import balanced
from pipeline.stages.partition import partition
from pipeline.stages.table_stats import table_stats
from pipeline.stages.update import update
from pipeline.table.catalog import load_table, open_catalog, table_name


def lines(n: int, seed: int, first_id: int = 1, bad_every: int = 0) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            out.append(b"01/01/2019,not-a-number,campaign_01,video_0,0.5")
            continue
        out.append(f"{rng.choice(['01/01/2019', '01/02/2019', '01/03/2019'])},{first_id + i},"
                   f"campaign_{rng.randint(0, 20):02d},video_{rng.randint(0, 5)},{rng.randint(0, 10000) / 10000}"
                   .encode())
    return b"\n".join(out) + b"\n"


def table(settings, name):
    return load_table(open_catalog(settings.warehouse, settings.catalog), table_name(name))


def rows_of(settings, name) -> int:
    return table(settings, name).scan().to_arrow().num_rows


def agrees_with_duckdb(client, settings, name):
    ours = table_stats(client, settings, name)
    theirs = duckdb_stats(table(settings, name).metadata_location)
    assert ours["rows"] == theirs["rows"]
    if ours["rows"]:
        assert ours["vp_mean"] == pytest.approx(theirs["vp_mean"], rel=1e-12)
        assert ours["vp_std"] == pytest.approx(theirs["vp_std"], rel=1e-12)
    return ours


def test_maintenance_by_another_tool_never_makes_a_loaded_source_look_new(client, settings, tmp_path):
    a = write_gz(tmp_path / "a.csv.gz", lines(30_000, 1, bad_every=997))
    b = write_gz(tmp_path / "b.csv.gz", lines(20_000, 2, first_id=100_000))
    partition(client, settings, [a], "FACT")
    partition(client, settings, [b], "FACT")
    join(client, settings, _dimension(tmp_path), "FACT", "JOINED")
    for name in ("FACT", "JOINED"):
        t = table(settings, name)
        assert expire_all_but_current(t) >= 1 or name == "JOINED"
        deleted = delete_unreachable_files(t)
        assert name == "JOINED" or deleted, "the sweep should have had old metadata to delete"

    assert partition(client, settings, [a], "FACT")["status"] == "SKIPPED"
    assert partition(client, settings, [a, b], "FACT")["status"] == "SKIPPED"
    assert join(client, settings, _dimension(tmp_path), "FACT", "JOINED")["status"] == "SKIPPED"
    assert rows_of(settings, "FACT") == 30_000 - 30 + 20_000
    s = agrees_with_duckdb(client, settings, "FACT")
    assert s["rows"] == 30_000 - 30 + 20_000
    agrees_with_duckdb(client, settings, "JOINED")

    # --replace still finds the source's rows after the sweep
    a2 = write_gz(tmp_path / "a.csv.gz", lines(5_000, 9, first_id=900_000))
    rec = partition(client, settings, [a2], "FACT", replace=True)
    assert rec["status"] == "SUCCEEDED" and rec["replaced_sources"] == [os.path.abspath(a)]
    assert rows_of(settings, "FACT") == 5_000 + 20_000
    agrees_with_duckdb(client, settings, "FACT")
    ids = [r[0] for r in duckdb_rows(table(settings, "FACT").metadata_location, "impression_id")]
    assert len(ids) == len(set(ids)) == 25_000 and min(ids) == 100_000
    # the incremental join notices the replaced load
    rec = join(client, settings, _dimension(tmp_path), "FACT", "JOINED")
    assert rec["status"] == "SUCCEEDED" and not rec["full"]
    assert rows_of(settings, "JOINED") == 25_000
    agrees_with_duckdb(client, settings, "JOINED")


def test_a_touched_or_copied_file_is_the_same_source_and_new_bytes_at_an_old_path_are_refused(client, settings,
                                                                                           tmp_path):
    a = write_gz(tmp_path / "a.csv.gz", lines(10_000, 3))
    assert partition(client, settings, [a], "FACT")["status"] == "SUCCEEDED"
    os.utime(a, (1, 1))  # touched
    assert partition(client, settings, [a], "FACT")["status"] == "SKIPPED"
    copy = str(tmp_path / "downloaded-again.csv.gz")
    shutil.copy(a, copy)  # re-downloaded under another name
    assert partition(client, settings, [copy], "FACT")["status"] == "SKIPPED"
    assert rows_of(settings, "FACT") == 10_000

    write_gz(tmp_path / "a.csv.gz", lines(4_000, 4, first_id=50_000))  # other bytes at the same path
    with pytest.raises(UsageError, match="--replace.*--append"):
        partition(client, settings, [a], "FACT")
    assert rows_of(settings, "FACT") == 10_000
    assert partition(client, settings, [a], "FACT", append=True)["status"] == "SUCCEEDED"
    assert rows_of(settings, "FACT") == 14_000


@pytest.mark.parametrize("codec", ["zstd", "snappy", "gzip", "lz4", "brotli", "none"])
def test_every_documented_compression_writes_a_table_others_read_back(client, tmp_path, codec):
    with dask.config.set({"impressions.write.compression": codec, "impressions.buckets": 4,
                          "impressions.read.small-file": "16 KiB", "impressions.read.range-size": "256 KiB",
                          "impressions.read.block-size": "64 KiB"}):
        settings = load_settings(warehouse=str(tmp_path / "wh"))
    data = lines(8_000, 5)
    partition(client, settings, [write_gz(tmp_path / "in.csv.gz", data)], "FACT")
    t = table(settings, "FACT")
    want = sorted((int(x.split(b",")[1]), float(x.split(b",")[4])) for x in data.splitlines())
    assert duckdb_rows(t.metadata_location, "impression_id, viewing_percentage") == want
    import pyarrow.parquet as pq

    files = [task.file.file_path for task in t.scan().plan_files()]
    meta = pq.ParquetFile(files[0].removeprefix("file://")).metadata
    assert meta.row_group(0).column(0).compression.lower() == {"none": "uncompressed"}.get(codec, codec)


def test_one_snapshot_per_table_per_command_and_a_new_dimension_version_is_kept(client, settings, tmp_path):
    src = write_gz(tmp_path / "f.csv.gz", lines(6_000, 6, bad_every=500))
    dim = _dimension(tmp_path)
    snaps = lambda name: len(table(settings, name).metadata.snapshots)  # noqa: E731
    partition(client, settings, [src], "FACT", buckets=64)
    assert snaps("FACT") == 1 and snaps("quarantine") == 1
    join(client, settings, dim, "FACT", "JOINED")
    assert snaps("JOINED") == 1 and snaps("campaigns") == 1
    join(client, settings, dim, "FACT", "JOINED2")  # the same dimension content: stored once
    assert snaps("campaigns") == 1

    # a change to a campaign that has no rows yet: one snapshot that records the new version
    from pipeline.table.bucket import bucket_of

    used = {bucket_of(f"campaign_{i:02d}", 64) for i in range(21)}
    new_id = next(c for c in (f"campaign_new_{k}" for k in range(1000)) if bucket_of(c, 64) not in used)
    unseen = tmp_path / "unseen.csv"
    unseen.write_text(f"campaign_id,campaign_name\n{new_id},Not yet in the facts\n")
    rec = update(client, settings, str(unseen), "JOINED", "JOINED")
    assert rec["status"] == "SUCCEEDED" and rec["files_rewritten"] == 0 and snaps("JOINED") == 2
    # a later update diffs against that version, so the first change is not lost
    later = tmp_path / "later.csv"
    later.write_text("campaign_id,campaign_name\ncampaign_01,Renamed\n")
    update(client, settings, str(later), "JOINED", "JOINED")
    from pipeline.stages.dimension import load_version
    from pipeline.stages.update import dimension_snapshot_of

    version = load_version(open_catalog(settings.warehouse, settings.catalog), "impressions", settings,
                           dimension_snapshot_of(table(settings, "JOINED")))
    names = dict(zip(version.rows["campaign_id"].to_pylist(), version.rows["campaign_name"].to_pylist()))
    assert names[new_id] == "Not yet in the facts" and names["campaign_01"] == "Renamed"


def test_replace_drops_the_replaced_sources_quarantine_rows(client, settings, tmp_path):
    a = write_gz(tmp_path / "a.csv.gz", lines(5_000, 7, bad_every=100))
    partition(client, settings, [a], "FACT")
    q = table(settings, "quarantine").scan().to_arrow()
    assert q.num_rows == 50
    write_gz(tmp_path / "a.csv.gz", lines(5_000, 8, bad_every=1000))
    partition(client, settings, [a], "FACT", replace=True)
    q = table(settings, "quarantine").scan().to_arrow()
    assert q.num_rows == 5 and len(set(q["load_id"].to_pylist())) == 1


def test_two_loads_at_once_of_different_sources_both_land_and_of_one_source_only_one(client, settings, tmp_path):
    a = write_gz(tmp_path / "a.csv.gz", lines(8_000, 10))
    b = write_gz(tmp_path / "b.csv.gz", lines(8_000, 11, first_id=100_000))
    results = {}

    def load(name, path):
        try:
            results[name] = partition(client, settings, [path], "FACT")
        except Exception as e:  # noqa: BLE001 - shown by the assertion below
            results[name] = {"status": "raised", "error": repr(e)}

    threads = [threading.Thread(target=load, args=(n, p)) for n, p in (("a", a), ("b", b), ("a-again", a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    statuses = sorted(r["status"] for r in results.values())
    assert statuses == ["SKIPPED", "SUCCEEDED", "SUCCEEDED"], results
    assert rows_of(settings, "FACT") == 16_000
    agrees_with_duckdb(client, settings, "FACT")


def test_the_memory_budget_holds_across_many_sources_on_one_worker(tmp_path):
    """Outside a Dask worker the accumulators live in this process: after every range, what is buffered in
    memory stays within the budget plus the one range just added, however many sources the load has; the rest
    is spilled to disk, and the load still ends in one file per (source, partition), the spills deleted."""
    import os

    from pipeline.read.sources import describe
    from pipeline.stages import accumulate
    from pipeline.stages.partition import read_range
    from pipeline.read.ranges import ByteRange
    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, fact_schema, fact_spec
    from pipeline.table.write import WriteTarget

    with dask.config.set({"impressions.write.memory-budget": "256 KiB"}):
        settings = load_settings(warehouse=str(tmp_path / "wh"))
    cat = open_catalog(settings.warehouse, None)
    t = create_or_load(cat, ("impressions", "fact"), fact_schema(), fact_spec(8), table_properties(settings))
    q = create_or_load(cat, ("impressions", "quarantine"), QUARANTINE_ICEBERG, QUARANTINE_SPEC,
                       table_properties(settings))
    target, qtarget = WriteTarget.of(t), WriteTarget.of(q)
    peak, written = 0, 0
    for i in range(12):
        s = describe(write_gz(tmp_path / f"s{i}.csv.gz", lines(3_000, 20 + i, first_id=i * 10_000)))
        out = read_range(s, ByteRange(i, 0, 0, None, "stream"), "load-x", balanced([0] * 8, 1), 8, settings)
        accumulate.absorb("load-x.run", "load-x", [out[0]], target, qtarget, settings.memory_budget)
        written += out["result"].written
        peak = max(peak, accumulate.buffered_bytes())
    assert peak <= 256 * 1024 + 3_000 * 64, peak  # the budget, plus one range's Arrow rows
    acc = accumulate._registry()["load-x.run"]
    spilled = [s.path for s in acc.spills]
    assert len(spilled) >= 2 and all(os.path.getsize(p) for p in spilled)
    groups = acc.held().union(*(s.spans for s in acc.spills))
    out = accumulate.finish_load("load-x.run")
    assert not any(os.path.exists(p) for p in spilled)
    assert len(out["files"]) == len(groups)  # one file per (source, partition), however often it spilled
    assert sum(f.data_file.record_count for f in out["files"]) == written == 36_000
    assert {f.source for f in out["files"]} == {describe(str(tmp_path / f"s{i}.csv.gz")).fingerprint
                                                 for i in range(12)}


def test_a_partition_whose_shares_differ_in_code_width_is_written_whole(tmp_path):
    """A share carries its dictionary codes in 16 bits only where its dictionary fits (accumulate.narrow), so one
    partition can get shares of both widths, in one spill and in memory: its file still holds exactly their rows,
    with the dates and strings as read."""
    from datetime import date

    import pyarrow.parquet as pq

    from pipeline.read.parse import parse_block
    from pipeline.stages import accumulate
    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, fact_schema, fact_spec
    from pipeline.table.write import WriteTarget

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    cat = open_catalog(settings.warehouse, None)
    t = create_or_load(cat, ("impressions", "fact"), fact_schema(), fact_spec(8), table_properties(settings))
    q = create_or_load(cat, ("impressions", "quarantine"), QUARANTINE_ICEBERG, QUARANTINE_SPEC,
                       table_properties(settings))
    many = "".join(f"01/02/2019,{i},campaign_01,video_{i:05d},0.5\n" for i in range(40_000))  # 40,000 videos
    few = "".join(f"01/02/2019,{40_000 + i},campaign_01,video_7,0.25\n" for i in range(500))
    more = "".join(f"01/02/2019,{50_000 + i},campaign_01,video_9,1\n" for i in range(300))
    owners = balanced([0] * 8, 1)
    shares = [accumulate.split_by_owner(parse_block(text.encode(), 0).rows, 8, owners)[0]
              for text in (many, few, more)]
    assert [s.rows["video_id"].type.index_type.bit_width for s in shares] == [32, 16, 16]
    acc = accumulate.Accumulator("load-w", WriteTarget.of(t), WriteTarget.of(q), 8)
    acc.add_part("r0@0", "fp", shares[0], None)
    acc.add_part("r1@0", "fp", shares[1], None)
    acc.flush()  # one spill holding both widths for the one partition
    acc.add_part("r2@0", "fp", shares[2], None)
    out = acc.finish()
    assert len(out["files"]) == 1
    got = pq.read_table(out["files"][0].data_file.file_path.removeprefix("file://")).sort_by("impression_id")
    assert got["impression_id"].to_pylist() == list(range(40_000)) + list(range(40_000, 40_500)) + \
        list(range(50_000, 50_300))
    assert got["video_id"].to_pylist() == [f"video_{i:05d}" for i in range(40_000)] + ["video_7"] * 500 + \
        ["video_9"] * 300
    assert set(got["ad_date"].to_pylist()) == {date(2019, 1, 2)}
    assert got["viewing_percentage"].to_pylist() == [0.5] * 40_000 + [0.25] * 500 + [1.0] * 300


@pytest.mark.parametrize("large_text", [False, True], ids=["32-bit offsets", "64-bit offsets"])
def test_each_data_file_stores_only_the_strings_its_own_rows_hold(tmp_path, large_text, monkeypatch):
    """A read's shares carry its dictionaries whole (every video id of the range): a partition's file keeps only
    the values of its rows, from memory and from a spill alike, and holds them as read — also where the decoded
    strings were held with 64-bit offsets (a large memory budget; the limit lowered here to reach it)."""
    import pyarrow.parquet as pq

    from pipeline.read.parse import parse_block
    from pipeline.stages import accumulate

    if large_text:
        monkeypatch.setattr(accumulate, "LARGE_TEXT", 0)
    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, fact_schema, fact_spec
    from pipeline.table.write import WriteTarget

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    cat = open_catalog(settings.warehouse, None)
    t = create_or_load(cat, ("impressions", "fact"), fact_schema(), fact_spec(8), table_properties(settings))
    q = create_or_load(cat, ("impressions", "quarantine"), QUARANTINE_ICEBERG, QUARANTINE_SPEC,
                       table_properties(settings))
    texts = ["".join(f"01/0{day}/2019,{day * 100_000 + i},campaign_{i % 300:03d},video_{i:05d},0.5\n"
                     for i in range(20_000)) for day in (1, 2)]  # 300 campaigns, 20,000 videos a read
    texts.append("".join(f"01/01/2019,{50_000 + i},campaign_{i % 300:03d},video_{i % 3:05d},0.5\n"
                         for i in range(3_000)))  # the first date again, with a small dictionary
    video_of = {int(line.split(",")[1]): line.split(",")[3] for text in texts for line in text.splitlines()}
    owners = balanced([0] * 8, 1)
    shares = [accumulate.split_by_owner(parse_block(text.encode(), 0).rows, 8, owners)[0] for text in texts]
    acc = accumulate.Accumulator("load-d", WriteTarget.of(t), WriteTarget.of(q), 8)
    acc.add_part("r0@0", "fp", shares[0], None)
    acc.flush()  # the first date's rows from a spill (videos decoded) and from memory (still a dictionary)
    acc.add_part("r1@0", "fp", shares[1], None)
    acc.add_part("r2@0", "fp", shares[2], None)
    files = acc.finish()["files"]
    assert len(files) == 16  # 2 dates x 8 buckets
    rows = 0
    for f in files:
        got = pq.read_table(f.data_file.file_path.removeprefix("file://"), read_dictionary=["campaign_id", "video_id"])
        for name in ("campaign_id", "video_id"):
            stored = set(got[name].chunk(0).dictionary.to_pylist())
            assert stored == set(got[name].to_pylist()), name  # no value the file's rows do not hold
        assert got["video_id"].to_pylist() == [video_of[i] for i in got["impression_id"].to_pylist()]
        rows += got.num_rows
    assert rows == 43_000


def _dimension(tmp_path) -> str:
    path = tmp_path / "campaigns.csv"
    if not path.exists():
        path.write_text("campaign_id,campaign_name,channel\n" +
                        "".join(f"campaign_{i:02d},Campaign {i},{['video', 'search'][i % 2]}\n" for i in range(21)))
    return str(path)


def test_a_group_larger_than_the_target_file_size_rolls_into_several_files(tmp_path):
    """Rows streamed to the writer piece by piece (as from a spill) go into files of about the table's
    write.target-file-size-bytes, each with its own rows' moments; together exactly the rows given."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datetime import date

    from pipeline.report import stats
    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import fact_schema, fact_spec
    from pipeline.table.write import WriteTarget, write_data_files

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    props = {**table_properties(settings), "write.target-file-size-bytes": str(16 * 1024),
             "write.parquet.row-group-limit": "5000"}
    t = create_or_load(open_catalog(settings.warehouse, None), ("impressions", "fact"), fact_schema(), fact_spec(8),
                       props)
    pieces = [pa.table({"ad_date": pa.array([date(2019, 1, 1)] * 7_000, pa.date32()),
                        "impression_id": pa.array(range(i * 7_000, (i + 1) * 7_000), pa.int64()),
                        "campaign_id": pa.array(["campaign_01"] * 7_000).dictionary_encode(),
                        "video_id": pa.array([f"video_{i}"] * 7_000).dictionary_encode(),
                        "viewing_percentage": pa.array([(j % 997) / 997 for j in range(7_000)])})
              for i in range(10)]
    written = write_data_files(WriteTarget.of(t), [((date(2019, 1, 1), 3), "a" * 24, lambda: iter(pieces))])
    assert len(written) > 2
    sizes = [w.data_file.file_size_in_bytes for w in written]
    assert all(s < 16 * 1024 + 32 * 1024 for s in sizes), sizes  # the target, plus at most one row group
    ids = pa.concat_tables([pq.read_table(w.data_file.file_path.removeprefix("file://")) for w in written])
    assert sorted(ids["impression_id"].to_pylist()) == list(range(70_000))
    assert sum(w.data_file.record_count for w in written) == 70_000
    whole = stats.chunk(pa.concat_tables(pieces)["viewing_percentage"])
    merged = stats.combine_many(w.moments for w in written)
    assert merged.n == whole.n and merged.mean == pytest.approx(whole.mean, rel=1e-12)


@pytest.mark.parametrize("values, rows, encoded", [
    ("4 decimals", 100_000, True), ("full precision", 100_000, False), ("4 decimals", 5_000, False)])
def test_viewing_percentage_is_dictionary_encoded_only_where_that_pays(tmp_path, values, rows, encoded):
    """Percentages on a coarse grid (0.33, 0.1181) repeat: a large file stores them as a dictionary; doubles
    of full precision do not repeat, and a small file's dictionary costs more than it saves. Either way the ids
    stay delta-encoded and another engine reads back the same values."""
    import numpy as np
    import pyarrow.parquet as pq
    from datetime import date

    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import fact_schema, fact_spec
    from pipeline.table.write import WriteTarget, write_data_files

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    t = create_or_load(open_catalog(settings.warehouse, None), ("impressions", "fact"), fact_schema(), fact_spec(8),
                       table_properties(settings))
    vp = np.random.default_rng(3).random(rows)
    vp = np.round(vp, 4) if values == "4 decimals" else vp
    table = pa.table({"ad_date": pa.array([date(2019, 1, 1)] * rows, pa.date32()),
                      "impression_id": pa.array(range(rows), pa.int64()),
                      "campaign_id": pa.array(["campaign_01"] * rows).dictionary_encode(),
                      "video_id": pa.array(["video_1"] * rows).dictionary_encode(),
                      "viewing_percentage": pa.array(vp)})
    [written] = write_data_files(WriteTarget.of(t), [((date(2019, 1, 1), 3), "a" * 24, table)])
    path = written.data_file.file_path.removeprefix("file://")
    group = pq.ParquetFile(path).metadata.row_group(0)
    column = group.column(4)
    assert column.path_in_schema == "viewing_percentage"
    assert column.has_dictionary_page is encoded, column.encodings
    assert "DELTA_BINARY_PACKED" in group.column(1).encodings  # the ids keep theirs either way
    n, mean, std = duckdb_connection().execute(
        "SELECT count(*), avg(viewing_percentage), stddev_pop(viewing_percentage) FROM read_parquet(?)",
        [path]).fetchone()
    assert (n, mean, std) == pytest.approx((rows, float(np.mean(vp)), float(np.std(vp))), rel=1e-12)
    assert pq.read_table(path)["viewing_percentage"].to_numpy().tolist() == vp.tolist()


@pytest.mark.parametrize("typed, distinct, encoded", [
    ("dictionary", 5_000, False), ("dictionary", 2_600, False), ("dictionary", 2_400, True), ("dictionary", 40, True),
    ("plain", 5_000, False), ("plain", 1_000, False), ("plain", 100, True), ("plain", 40, True)])
def test_text_is_dictionary_encoded_only_where_its_values_repeat(tmp_path, typed, distinct, encoded):
    """A backfill's small files hold mostly distinct video ids: a dictionary of them costs time and bytes, so a
    file stores a text column as a dictionary only where its values repeat twice or more on average: exactly so
    for a dictionary column (5,000 rows: 2,400 distinct values repeat, 2,600 do not), judged from the first 256
    values of a plain one (1,000 values spread over 5,000 rows look distinct there, 100 repeat). Either way
    every engine reads back the same strings."""
    import numpy as np
    import pyarrow.parquet as pq
    from datetime import date

    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import fact_schema, fact_spec
    from pipeline.table.write import WriteTarget, write_data_files

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    t = create_or_load(open_catalog(settings.warehouse, None), ("impressions", "fact"), fact_schema(), fact_spec(8),
                       table_properties(settings))
    rows = 5_000
    order = np.random.default_rng(5).permutation(rows)  # distinct values spread over the file, not in runs
    videos = pa.array([f"video_{i % distinct:05d}" for i in order])
    if typed == "dictionary":  # with unused values too, as a share's dictionary holds its read's whole column
        videos = pa.DictionaryArray.from_arrays(
            pa.array(order % distinct, pa.int32()), pa.array([f"video_{i:05d}" for i in range(rows * 2)]))
    table = pa.table({"ad_date": pa.array([date(2019, 1, 1)] * rows, pa.date32()),
                      "impression_id": pa.array(range(rows), pa.int64()),
                      "campaign_id": pa.array([f"campaign_{i % 7}" for i in range(rows)]).dictionary_encode(),
                      "video_id": videos,
                      "viewing_percentage": pa.array(np.linspace(0, 1, rows))})
    [written] = write_data_files(WriteTarget.of(t), [((date(2019, 1, 1), 3), "a" * 24, table)])
    path = written.data_file.file_path.removeprefix("file://")
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert [group.column(i).path_in_schema for i in (0, 2, 3)] == ["ad_date", "campaign_id", "video_id"]
    assert group.column(3).has_dictionary_page is encoded, group.column(3).encodings
    assert group.column(0).has_dictionary_page and group.column(2).has_dictionary_page  # one date, 7 campaigns
    expected = [f"video_{i % distinct:05d}" for i in order]
    assert pq.read_table(path)["video_id"].to_pylist() == expected
    got = duckdb_connection().execute("SELECT video_id FROM read_parquet(?)", [path]).fetchall()
    assert [v for (v,) in got] == expected


def test_data_files_land_where_pyiceberg_puts_them_and_take_each_column_in_the_tables_type(tmp_path):
    """The writer derives a partition's directory itself (once per write, not once per file) and conforms rows
    to the table's columns once per input schema: the directory is pyiceberg's `PartitionKey.to_path` for
    values that need quoting too, and a missing column is null, a narrower int is widened, a dictionary kept."""
    import pyarrow.parquet as pq
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import BucketTransform, IdentityTransform
    from pyiceberg.types import DoubleType, LongType, NestedField, StringType

    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.write import WriteTarget, partition_key, write_data_files

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    schema = Schema(NestedField(1, "name", StringType(), required=False), NestedField(2, "n", LongType(), required=False),
                    NestedField(3, "x", DoubleType(), required=False))
    spec = PartitionSpec(PartitionField(1, 1000, IdentityTransform(), "name"),
                         PartitionField(2, 1001, BucketTransform(4), "n_bucket"))
    t = create_or_load(open_catalog(settings.warehouse, None), ("impressions", "odd"), schema, spec,
                       table_properties(settings))
    target = WriteTarget.of(t)
    rows = pa.table({"n": pa.array([1, 2, 3], pa.int32()), "name": pa.array(["a b/c=d%"] * 3).dictionary_encode()})
    other = pa.table({"name": pa.array(["é?&"] * 2), "n": pa.array([4, 5], pa.int64()), "x": [0.5, 0.25]})
    groups = [(("a b/c=d%", 1), "a" * 24, rows), (("é?&", 2), "b" * 24, other), (("a b/c=d%", 3), "c" * 24, rows)]
    written = write_data_files(target, groups)
    for (values, _, given), w in zip(groups, written):
        directory = w.data_file.file_path.rsplit("/", 1)[0]
        assert directory.endswith("/data/" + partition_key(target, values).to_path()), directory
        back = pq.read_table(w.data_file.file_path.removeprefix("file://"))
        assert back.schema.names == ["name", "n", "x"] and back["n"].type == pa.int64()
        assert back["n"].to_pylist() == given["n"].to_pylist()
        assert back["x"].to_pylist() == (given["x"].to_pylist() if "x" in given.column_names else [None] * 3)


def test_an_absorb_that_comes_after_its_load_was_dropped_keeps_nothing(tmp_path):
    """A failed load is dropped on every worker while some of its absorbs may still be queued: those must not
    start a new accumulator (rows of a failed load held until the worker dies), nor spill to disk."""
    from pipeline.read.ranges import ByteRange
    from pipeline.read.sources import describe
    from pipeline.stages import accumulate
    from pipeline.stages.partition import read_range
    from pipeline.table.catalog import create_or_load, table_properties
    from pipeline.table.schema import QUARANTINE_ICEBERG, QUARANTINE_SPEC, fact_schema, fact_spec
    from pipeline.table.write import WriteTarget

    settings = load_settings(warehouse=str(tmp_path / "wh"))
    cat = open_catalog(settings.warehouse, None)
    t = create_or_load(cat, ("impressions", "fact"), fact_schema(), fact_spec(8), table_properties(settings))
    q = create_or_load(cat, ("impressions", "quarantine"), QUARANTINE_ICEBERG, QUARANTINE_SPEC,
                       table_properties(settings))
    s = describe(write_gz(tmp_path / "s.csv.gz", lines(2_000, 3)))
    out = read_range(s, ByteRange(0, 0, 0, None, "stream"), "load-y", balanced([0] * 8, 1), 8, settings)
    assert accumulate.absorb("load-y.a", "load-y", [out[0]], WriteTarget.of(t), WriteTarget.of(q), 1) == [out[0][0]]
    spill_dir = accumulate._registry()["load-y.a"].spill_dir  # a 1-byte budget: it spilled at once
    assert spill_dir and os.path.isdir(spill_dir)
    assert accumulate.drop_load("load-y.a") == 1 and not os.path.exists(spill_dir)
    assert accumulate.absorb("load-y.a", "load-y", [out[0]], WriteTarget.of(t), WriteTarget.of(q), 1) == []
    assert "load-y.a" not in accumulate._registry() and accumulate.buffered_bytes() == 0


def test_sources_hashed_while_the_cluster_starts_are_the_same_sources(tmp_path):
    """The CLI hashes its local sources on a thread while its cluster starts: the result is what describing
    them in line gives, a source already described is kept, and a file that vanished in between fails the
    command with the same error, raised where the load waits for it."""
    from pipeline.read.sources import describe, describe_all, describe_in_background

    a = write_gz(tmp_path / "a.csv.gz", lines(500, 1))
    b = write_gz(tmp_path / "b.csv.gz", lines(500, 2))
    assert describe_in_background([a, b]).result(timeout=30) == [describe(a), describe(b)]
    already = describe(a)
    assert describe_all([already, b])[0] is already
    gone = describe_in_background([str(tmp_path / "gone.csv.gz")])
    with pytest.raises(UsageError, match="input not found"):
        gone.result(timeout=30)


def test_a_swallowed_interrupt_stops_the_wait_for_tasks_that_still_run(client):
    """The driver waits at most a second at a time for its tasks, so a signal dropped while it waits stops the
    command while a task still runs, not when it ends (as_completed alone would wait the task's 6 s)."""
    import time

    from pipeline import interrupts
    from pipeline.errors import Interrupted
    from pipeline.stages.tasks import map_shared

    with interrupts.handled():
        # half a second into the wait, what a handler whose raise was dropped leaves behind: the signal, recorded
        signalled = threading.Timer(0.5, interrupts._received.append, [signal.SIGTERM])
        signalled.start()
        started = time.monotonic()
        try:
            with pytest.raises(Interrupted, match="SIGTERM"):
                map_shared(client, time.sleep, [], [(6,)], "drill")
        finally:
            signalled.cancel()
        assert 0.4 < time.monotonic() - started < 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise, on purpose
@pytest.mark.parametrize("catalog_kind", ["sql", "glue"])
def test_after_a_swallowed_interrupt_no_commit_of_any_kind_reaches_the_catalog(catalog_kind, tmp_path, request):
    """Every pyiceberg commit ends in its catalog's commit_table, which the catalogs we open check: pyiceberg's own
    append, a property change and a schema change commit nothing; a commit inside interrupts.recording does."""
    from pipeline import interrupts
    from pipeline.errors import Interrupted
    from pipeline.table.catalog import ensure_namespace
    from pyiceberg.types import StringType

    if catalog_kind == "glue":  # AWS Glue and S3 on moto's server (loopback), as in production
        warehouse, uri = f"s3://{request.getfixturevalue('s3_bucket')}/wh", "glue"
    else:
        warehouse, uri = str(tmp_path / "wh"), None
    catalog = open_catalog(warehouse, uri)
    ensure_namespace(catalog, "impressions")
    t = catalog.create_table(("impressions", "t"), schema=pa.schema([pa.field("x", pa.int64(), nullable=False)]))
    t.append(pa.table({"x": pa.array([1], pa.int64())}, schema=t.schema().as_arrow()))
    before = catalog.load_table(("impressions", "t")).metadata_location

    def add_column():
        with t.update_schema() as u:
            u.add_column("y", StringType())

    with interrupts.handled():
        swallowed_sigterm()
        for change in (lambda: t.append(pa.table({"x": pa.array([2], pa.int64())}, schema=t.schema().as_arrow())),
                       lambda: t.transaction().set_properties(owner="drill").commit_transaction(),
                       add_column):
            with pytest.raises(Interrupted, match="SIGTERM"):
                change()
        assert catalog.load_table(("impressions", "t")).metadata_location == before
        with pytest.raises(Interrupted, match="SIGTERM"):  # pyiceberg makes a table without commit_table
            catalog.create_table(("impressions", "t2"), schema=t.schema())
        with pytest.raises(Interrupted, match="SIGTERM"):
            catalog.create_namespace("other")
        assert not catalog.table_exists(("impressions", "t2"))
        assert ("other",) not in catalog.list_namespaces()
        with interrupts.recording():
            t.append(pa.table({"x": pa.array([3], pa.int64())}, schema=t.schema().as_arrow()))
    assert sorted(catalog.load_table(("impressions", "t")).scan().to_arrow()["x"].to_pylist()) == [1, 3]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise, on purpose
def test_an_update_after_a_swallowed_interrupt_commits_nothing_but_its_history_is_kept(client, settings,
                                                                                        tmp_path):
    from pipeline import interrupts
    from pipeline.errors import Interrupted
    from pipeline.table.events import ARROW, append, open_events

    partition(client, settings, [write_gz(tmp_path / "f.csv.gz", lines(3_000, 9))], "FACT", buckets=16)
    join(client, settings, _dimension(tmp_path), "FACT", "JOINED")
    before = {name: table(settings, name).metadata_location for name in ("JOINED", "campaigns")}
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("campaign_id,campaign_name\ncampaign_01,Renamed\n")
    with interrupts.handled():
        swallowed_sigterm()  # the load would run on without interrupts.check
        assert interrupts._received == [signal.SIGTERM]
        with pytest.raises(Interrupted, match="SIGTERM"):
            update(client, settings, str(renamed), "JOINED", "JOINED")
        # no commit of any kind: data, schema, properties, the dimension's new version
        assert {name: table(settings, name).metadata_location for name in before} == before
        # the record of an interrupted load still commits (interrupts.recording)
        events = open_events(open_catalog(settings.warehouse, settings.catalog), ("impressions", "drill_events"), {})
        append(events, [dict.fromkeys(ARROW.names) | {"status": "FAILED", "stage": "update"}])
        assert events.refresh().scan().to_arrow().column("status").to_pylist() == ["FAILED"]
    assert not interrupts._received  # cleared when the command ends
