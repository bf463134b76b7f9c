"""Blocked gzip reading and parsing, end to end through the partition stage, against a reference reader.

Every case runs with small read ranges (tests/conftest.py) so a file of a few MB is read by many tasks, and
compares the table with a plain-Python reading of the same bytes: the same rows, and every other line
quarantined with its reason and byte offset.
"""
from __future__ import annotations

import csv
import gzip
import random
import re
from collections import Counter
from datetime import datetime

import pyarrow as pa
import pytest

from conftest import write_gz
from pipeline.errors import LoadError
from pipeline.stages.partition import partition
from pipeline.table.catalog import load_table, open_catalog, table_name

# ------------------------------------------------------------------ the reference reader (independent)


def reference(data: bytes):
    """(good rows as tuples, Counter of reasons, {offset: reason}) by the rules of DESIGN.md, line by line."""
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    rows, bad = [], {}
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl
        raw = data[pos:end]
        line = raw[:-1] if raw.endswith(b"\r") else raw
        reason, row = classify(line)
        if reason:
            bad[pos] = reason
        else:
            rows.append(row)
        pos = end + 1
    return rows, Counter(bad.values()), bad


def classify(line: bytes):
    """docs/interface.md, Inputs: blanks around numbers and dates ignored, ids that fit int64, decimal numbers."""
    if len(line) > 64 * 1024:
        return "line_too_long", None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "encoding", None
    try:  # strict: a quote left open at the end of the line is a line break inside a record
        fields = next(csv.reader([text], strict=True)) if text else []
    except csv.Error:
        fields = next(csv.reader([text])) if text.count('"') % 2 == 0 else []
    if len(fields) != 5 or "\r" in text:
        return "field_count", None
    d, ident, camp, video, vp = (f.strip(" \t") if i in (0, 1, 4) else f for i, f in enumerate(fields))
    try:
        if not re.fullmatch(r"[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}", d):
            raise ValueError
        day = datetime.strptime(d, "%m/%d/%Y").date()
    except ValueError:
        return "bad_date", None
    if not re.fullmatch(r"-?[0-9]+", ident) or not -2**63 <= int(ident) < 2**63:
        return "bad_number", None
    if camp == "":
        return "empty_campaign", None
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", vp):
        return "bad_number", None
    value = float(vp)
    if not 0.0 <= value <= 1.0:
        return "out_of_range", None
    return None, (day, int(ident), camp, video, value)


# ------------------------------------------------------------------ helpers


def good_lines(n: int, seed: int = 0, first_id: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    # few distinct dates, as in a daily file, so the table has tens of partitions rather than thousands
    return [f"{rng.choice(['01/01/2019', '01/02/2019', '12/31/2018', '2/3/2019'])},{first_id + i},"
            f"campaign_{rng.randint(0, 30):02d},video_{rng.randint(0, 9)},{rng.randint(0, 10000) / 10000}".encode()
            for i in range(n)]


def load(client, settings, path, table="FACT"):
    record = partition(client, settings, [str(path)], table)
    catalog = open_catalog(settings.warehouse, settings.catalog)
    t = load_table(catalog, table_name(table))
    rows = t.scan().to_arrow()
    q = load_table(catalog, table_name("quarantine")).scan().to_arrow()
    return record, rows, q


def as_tuples(t: pa.Table):
    cols = [t[c].to_pylist() for c in ("ad_date", "impression_id", "campaign_id", "video_id", "viewing_percentage")]
    return sorted(zip(*cols))


def check_against_reference(client, settings, tmp_path, data: bytes, members: int = 1):
    path = write_gz(tmp_path / "input.csv.gz", data, members)
    record, rows, q = load(client, settings, path)
    want_rows, want_reasons, want_bad = reference(data)
    assert record["status"] == "SUCCEEDED"
    assert record["rows_read"] == record["rows_written"] + record["rows_quarantined"]
    assert record["rows_written"] == len(want_rows) == rows.num_rows
    assert record["quarantine"] == dict(want_reasons)
    assert as_tuples(rows) == sorted(want_rows)
    got_bad = dict(zip(q["byte_offset"].to_pylist(), q["reason"].to_pylist()))
    assert got_bad == want_bad
    return record, rows, q


# ------------------------------------------------------------------ cases


def test_many_read_tasks_give_exactly_the_reference_rows(client, settings, tmp_path):
    data = b"\n".join(good_lines(60_000)) + b"\n"
    record, _, _ = check_against_reference(client, settings, tmp_path, data)
    assert record["read_tasks"] > 4
    assert record["rows_quarantined"] == 0


@pytest.mark.parametrize("members", [1, 3])
def test_an_index_pass_on_several_threads_gives_the_same_rows(client, settings, tmp_path, members):
    """`read.index-threads`: rapidgzip's parallel decoder builds the index; the read tasks seek with it as with
    one built on one thread (one gzip member and several)."""
    import dataclasses

    threaded = dataclasses.replace(settings, read=dataclasses.replace(settings.read, index_threads=4))
    data = b"\n".join(good_lines(60_000, seed=members)) + b"\n"
    record, _, _ = check_against_reference(client, threaded, tmp_path, data, members)
    assert record["read_tasks"] > 4


def test_crlf_no_final_newline_bom_and_several_members_with_an_empty_one(client, settings, tmp_path):
    lines = good_lines(40_000, seed=1)
    data = b"\xef\xbb\xbf" + b"\r\n".join(lines)  # CRLF, no final line break
    path = tmp_path / "input.csv.gz"
    cut = len(data) // 3
    with open(path, "wb") as f:
        f.write(gzip.compress(data[:cut]))
        f.write(gzip.compress(b""))  # an empty member
        f.write(gzip.compress(data[cut:2 * cut]))
        f.write(gzip.compress(data[2 * cut:]))
    record, rows, q = load(client, settings, path)
    want_rows, _, _ = reference(data)
    assert record["rows_written"] == len(want_rows) == 40_000
    assert record["rows_quarantined"] == 0
    assert as_tuples(rows) == sorted(want_rows)
    assert record["read_tasks"] > 1


def test_every_kind_of_malformed_line_is_quarantined_with_its_reason_and_offset(client, settings, tmp_path):
    bad = [
        b"01/01/2019,1,campaign_00,video_0",               # field_count
        b"01/01/2019,1,campaign_00,video_0,0.5,extra",     # field_count
        b"",                                               # field_count (blank line)
        b'01/01/2019,1,"campaign, quoted",video_0,0.5',  # a good quoted field
        b'"01/01/2019,1,campaign_00,video_0,0.5',          # field_count (unbalanced quote)
        b"02/30/2019,1,campaign_00,video_0,0.5",           # bad_date
        b"2019-01-01,1,campaign_00,video_0,0.5",           # bad_date
        b" 01/01/2019,1,campaign_00,video_0,0.5",          # good: blanks around a date are ignored
        b"01/01/2019,9223372036854775807,campaign_00,video_0, 0.5 ",  # good: fits int64; blanks ignored
        b"01/01/2019,9223372036854775808,campaign_00,video_0,0.5",    # bad_number: beyond int64
        b"01/01/2019,0x10,campaign_00,video_0,0.5",        # bad_number: not decimal
        b"01/01/2019,1,campaign_00,video_0,nan",           # bad_number: not a decimal number
        b"01/01/2019,abc,campaign_00,video_0,0.5",         # bad_number
        b"01/01/2019,1.0,campaign_00,video_0,0.5",         # bad_number
        b"01/01/2019,1,campaign_00,video_0,half",          # bad_number
        b"01/01/2019,1,campaign_00,video_0,1.5",           # out_of_range
        b"01/01/2019,1,campaign_00,video_0,-0.1",          # out_of_range
        b"01/01/2019,1,,video_0,0.5",                      # empty_campaign
        b"01/01/2019,1,campaign_\xff,video_0,0.5",        # encoding
        b"01/01/2019,1,campaign_00,video_0,0.5\r\r",       # field_count (stray CR)
    ]
    lines = good_lines(30_000, seed=2)
    rng = random.Random(3)
    for i, b in enumerate(bad * 20):
        lines.insert(rng.randrange(len(lines)), b)
    data = b"\n".join(lines) + b"\n"
    record, rows, q = check_against_reference(client, settings, tmp_path, data, members=3)
    assert set(record["quarantine"]) == {"field_count", "bad_date", "bad_number", "out_of_range",
                                         "empty_campaign", "encoding"}
    assert rows.filter(pa.compute.equal(rows["campaign_id"], "campaign, quoted")).num_rows == 20
    # the raw line is kept, so a quarantined line can be replayed
    one = q.filter(pa.compute.equal(q["reason"], "encoding"))
    assert one["line"][0].as_py() == b"01/01/2019,1,campaign_\xff,video_0,0.5"


def test_lines_longer_than_a_range_and_lines_over_the_cap(client, settings, tmp_path):
    # range size is 256 KiB and the cap 64 KiB (conftest): a 60 KiB video_id is a long but legal line that many
    # small ranges fall inside; 100 KiB and 1 MiB lines are over the cap and quarantined by their prefix.
    lines = good_lines(20_000, seed=4)
    long_ok = b"01/01/2019,7,campaign_01,video_" + b"x" * 60_000 + b",0.5"
    over = b"01/01/2019,8,campaign_01,video_" + b"y" * 100_000 + b",0.5"
    huge = b"01/01/2019,9,campaign_01,video_" + b"z" * 1_000_000 + b",0.5"
    for pos, line in [(100, long_ok), (5000, over), (9000, huge), (9001, long_ok), (15000, over)]:
        lines.insert(pos, line)
    data = b"\n".join(lines) + b"\n" + over  # the last line is over the cap and has no newline
    record, rows, q = check_against_reference(client, settings, tmp_path, data)
    assert record["quarantine"] == {"line_too_long": 4}
    assert max(len(x) for x in q["line"].to_pylist()) <= 65536


def test_truncated_gzip_fails_with_one_line_and_commits_nothing(client, settings, tmp_path):
    data = b"\n".join(good_lines(50_000, seed=5)) + b"\n"
    whole = gzip.compress(data)
    good = tmp_path / "good.csv.gz"  # a first, good load of another file into the same table
    good.write_bytes(gzip.compress(b"\n".join(good_lines(100, seed=6)) + b"\n"))
    partition(client, settings, [str(good)], "FACT")
    catalog = open_catalog(settings.warehouse, settings.catalog)
    before = load_table(catalog, table_name("FACT")).current_snapshot().snapshot_id
    for cut in (1000, 3):
        bad = tmp_path / f"truncated{cut}.csv.gz"
        bad.write_bytes(whole[:-cut])
        with pytest.raises(LoadError) as err:
            partition(client, settings, [str(bad)], "FACT")
        message = str(err.value)
        assert str(bad) in message and "\n" not in message
        assert load_table(catalog, table_name("FACT")).current_snapshot().snapshot_id == before


def test_plain_and_small_gzip_files_and_idempotent_reloads(client, settings, tmp_path):
    data = b"\n".join(good_lines(20_000, seed=7)) + b"\n"
    plain = tmp_path / "plain.csv"
    plain.write_bytes(data)
    small = write_gz(tmp_path / "small.csv.gz", b"\n".join(good_lines(50, seed=8, first_id=10**9)) + b"\n")
    record = partition(client, settings, [str(plain), small], "FACT")
    assert record["rows_written"] == 20_050 and record["read_tasks"] > 2
    again = partition(client, settings, [str(plain), small], "FACT")
    assert again["status"] == "SKIPPED"
    replaced = partition(client, settings, [small], "FACT", replace=True)
    assert replaced["rows_written"] == 50
    t = load_table(open_catalog(settings.warehouse, settings.catalog), table_name("FACT"))
    assert t.scan().to_arrow().num_rows == 20_050


def test_a_small_memory_budget_spills_often_and_loses_nothing(client, settings, tmp_path):
    """Far below one range's rows, the budget makes every owner spill after every share; the spills end up in
    one file per partition all the same (a partition's rows meet on its one owner)."""
    import dataclasses

    data = b"\n".join(good_lines(80_000, seed=9)) + b"\n"
    tight = dataclasses.replace(settings, memory_budget=256 * 1024)  # far below one range's rows
    path = write_gz(tmp_path / "input.csv.gz", data)
    record = partition(client, tight, [path], "FACT")
    t = load_table(open_catalog(settings.warehouse, settings.catalog), table_name("FACT"))
    files = [task.file for task in t.scan().plan_files()]
    partitions = {tuple(f.partition) for f in files}
    assert record["rows_written"] == t.scan().to_arrow().num_rows == 80_000
    assert len(files) == len(partitions) == record["files_written"]
    assert as_tuples(t.scan().to_arrow()) == sorted(reference(data)[0])


def test_corrupt_gzip_fails_with_one_line_naming_the_file(client, settings, tmp_path):
    data = b"\n".join(good_lines(5_000, seed=10)) + b"\n"
    whole = bytearray(gzip.compress(data))
    whole[len(whole) // 2] ^= 0xFF  # a flipped byte in the deflate stream (a small file: one ISA-L task)
    bad = tmp_path / "corrupt.csv.gz"
    bad.write_bytes(bytes(whole))
    with pytest.raises(LoadError) as err:
        partition(client, settings, [str(bad)], "FACT")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    catalog = open_catalog(settings.warehouse, settings.catalog)
    assert load_table(catalog, table_name("FACT")).current_snapshot() is None


def test_a_killed_partition_commits_nothing_and_the_rerun_loads_each_row_once(settings, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    data = b"\n".join(good_lines(150_000, seed=11)) + b"\n"
    path = write_gz(tmp_path / "input.csv.gz", data, members=4)
    env = {**os.environ, "DASK_IMPRESSIONS__READ__RANGE_SIZE": "256 KiB", "DASK_IMPRESSIONS__READ__INDEX_SPACING":
           "64 KiB", "DASK_IMPRESSIONS__READ__SMALL_FILE": "16 KiB"}
    cli = [sys.executable, "-m", "pipeline", "--warehouse", settings.warehouse, "--workers", "1",
           "partition", path, "FACT"]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    for line in proc.stderr:  # the first progress line: some ranges read, none committed
        if line.startswith(b"read: "):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    catalog = open_catalog(settings.warehouse, settings.catalog)
    assert load_table(catalog, table_name("FACT")).current_snapshot() is None

    done = subprocess.run(cli, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = load_table(catalog, table_name("FACT")).scan().to_arrow()
    assert rows.num_rows == 150_000 and pa.compute.count_distinct(rows["impression_id"]).as_py() == 150_000


def test_a_worker_lost_mid_load_is_made_up_for(settings, tmp_path):
    """The ranges a dead worker had buffered are read again; every row lands exactly once."""
    import os
    import threading
    import time

    from distributed import Client, LocalCluster

    data = b"\n".join(good_lines(400_000, seed=12)) + b"\n"
    path = write_gz(tmp_path / "input.csv.gz", data)
    out = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", memory_limit="4GiB") as cluster, \
            Client(cluster) as c:
        def run():
            try:
                out["record"] = partition(c, settings, [path], "FACT")
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = e

        t = threading.Thread(target=run)
        t.start()
        victim = None
        deadline = time.time() + 60
        while victim is None and time.time() < deadline and t.is_alive():
            held = c.run(lambda dask_worker: len(getattr(dask_worker, "_impressions_accumulators", {})))
            victim = next((w for w, n in held.items() if n), None)
            time.sleep(0.05)
        assert victim is not None, "no worker ever held rows"
        # the worker process dies a moment later (its nanny starts a fresh, empty one)
        c.run(lambda: threading.Timer(0.05, os._exit, (1,)).start(), workers=[victim])
        t.join(300)
    assert "error" not in out, out.get("error")
    record = out["record"]
    assert record["rows_written"] == 400_000 and record["rows_read"] == 400_000
    rows = load_table(open_catalog(settings.warehouse, settings.catalog), table_name("FACT")).scan().to_arrow()
    assert rows.num_rows == 400_000 and pa.compute.count_distinct(rows["impression_id"]).as_py() == 400_000


def test_ranges_cover_the_stream_once_and_the_tail_is_cut_finer():
    """The plan is plain data: contiguous ranges from `start` to the end, each cut at a seek point; the last
    `tail` bytes in ranges of half the size, so the workers' last tasks end close together."""
    from pipeline.read.gzindex import GzipIndex, SeekPoint
    from pipeline.read.ranges import plan_indexed

    mib = 1 << 20
    size = 1000 * mib
    points = tuple(SeekPoint(i, i * 4 * mib, 0, -1) for i in range(size // (4 * mib)))
    index = GzipIndex("file:///x", 0, size // 4, size, 4 * mib, 32768, points)
    for tail in (0, 256 * mib):
        ranges = plan_indexed(0, index, 128 * mib, start=256 * mib, first_number=1, tail=tail)
        assert ranges[0].start == 256 * mib and ranges[-1].end is None
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
        assert [r.number for r in ranges] == list(range(1, len(ranges) + 1))
        sizes = [(r.end or size) - r.start for r in ranges]
        if tail == 0:
            assert set(sizes[:-1]) == {128 * mib}
        else:
            in_tail = [s for r, s in zip(ranges, sizes) if size - r.start <= tail]
            assert in_tail and max(in_tail) == 64 * mib
            assert set(s for r, s in zip(ranges, sizes) if size - r.start > tail) == {128 * mib}


def test_reading_a_range_keeps_nothing_of_it_once_closed(tmp_path):
    """Each range read imports the seek points it spans (32 KiB of window each); rapidgzip keeps a reference to
    the object it imported them from, so a worker that left it open kept every range's sub-index for good
    (1.2 MB a range: ~0.4 GB over a 12 GB gzip). Python's own allocations must not grow with the ranges read."""
    import tracemalloc

    from pipeline.read.gzindex import build_index, sub_index
    from pipeline.read.ranges import open_range, plan_indexed
    from pipeline.read.sources import describe_all

    rng = random.Random(7)
    text = "".join(f"01/0{rng.randint(1, 9)}/2019,{i},campaign_{rng.randint(0, 99):02d},video_{rng.randint(0, 999)},"
                   f"{rng.random():.6f}\n" for i in range(200_000))
    source = describe_all([write_gz(tmp_path / "f.csv.gz", text)])[0]
    index = build_index(source, str(tmp_path / "wh"), 64 * 1024)
    ranges = plan_indexed(0, index, 2 << 20)
    widest = max(ranges[:-1], key=lambda r: len(r.points))
    imported = len(sub_index(widest.index, widest.points))
    assert imported > 200_000  # the windows of the points it spans

    def read(r):
        stream = open_range(source, r)
        try:
            while stream.readinto(bytearray(1 << 20)):
                pass
        finally:
            stream.close()

    read(widest)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            read(widest)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20 * imported / 10, f"{grown} bytes kept after 20 reads of a range importing {imported}"
