"""The exchange at scale, simulated on one machine: the same file partitioned by 1, 4 and 8 worker processes gives
exactly the same rows and the same number of files per partition (one per source per load), because every
partition's rows meet on its one owner whatever the worker count."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from distributed import Client, LocalCluster

from conftest import write_gz
from outside import duckdb_rows
from test_integrity import lines, table
from pipeline.stages.accumulate import split_by_owner
from pipeline.stages.owners import balanced
from pipeline.stages.partition import partition


def files_per_partition(settings, name) -> Counter:
    return Counter(tuple(task.file.partition) for task in table(settings, name).scan().plan_files())


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_files_per_partition_do_not_grow_with_the_worker_count(settings, tmp_path, workers):
    src = write_gz(tmp_path / "day.csv.gz", lines(60_000, 41, bad_every=997))
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0", memory_limit="1GiB") as cluster, \
            Client(cluster) as client:
        rec = partition(client, settings, [src], "FACT")
    assert rec["rows_read"] == 60_000 and rec["rows_written"] == 60_000 - 60
    per = files_per_partition(settings, "FACT")
    assert set(per.values()) == {1}, per  # one file per partition, like one worker writes
    assert rec["files_written"] == len(per) == 3 * settings.buckets
    ids = [r[0] for r in duckdb_rows(table(settings, "FACT").metadata_location, "impression_id")]
    assert len(ids) == len(set(ids)) == 60_000 - 60


@pytest.mark.parametrize("day_step", [1, 5_000], ids=["few keys (16-bit ranks)", "wide key span (64-bit keys)"])
def test_a_share_holds_exactly_its_owners_partitions(day_step):
    """Every row lands in the share of its key's owner, in the group of its own key, in input order within it."""
    import pyarrow as pa
    from datetime import date, timedelta

    from pipeline.stages.accumulate import partition_keys, restore

    days = [date(1990, 1, 1) + timedelta(day_step * (d % 5)) for d in range(5_000)]
    rows = pa.table({"ad_date": pa.array(days, pa.date32()), "impression_id": pa.array(range(5_000), pa.int64()),
                     "campaign_id": pa.array([f"c{i % 37}" for i in range(5_000)]).dictionary_encode(),
                     "video_id": pa.array(["v"] * 5_000).dictionary_encode(),
                     "viewing_percentage": pa.array([0.5] * 5_000)})
    expected = partition_keys(rows, 16)
    owners = balanced([1 + b % 5 for b in range(16)], 3)
    shares = split_by_owner(rows, 16, owners)
    seen = []
    for owner, share in enumerate(shares):
        part, keys, starts = share
        assert all(owners.of(np.array([k]))[0] == owner for k in keys.tolist())
        assert list(keys) == sorted(set(keys.tolist()))
        assert starts[0] == 0 and starts[-1] == part.num_rows
        for k, a, b in zip(keys.tolist(), starts[:-1].tolist(), starts[1:].tolist()):
            group = restore(part.slice(a, b - a), k, 16)
            assert set(partition_keys(group, 16).tolist()) == {k}
            assert group.equals(rows.take(group["impression_id"]))  # made whole again: the same rows, the same types
            ids = group["impression_id"].to_pylist()
            assert ids == sorted(ids) and all(expected[i] == k for i in ids)
            seen += ids
    assert sorted(seen) == list(range(5_000))


def test_a_share_travels_between_processes_as_it_is():
    """A share crosses Dask's wire as a Share with its Arrow buffers out of band (not copied into an IPC stream
    by Dask's Arrow serializer), arrives equal, and counts its full size in Dask's memory accounting."""
    import pyarrow as pa
    from dask.sizeof import sizeof
    from distributed.protocol import dumps, loads, to_serialize

    from pipeline.stages.accumulate import Share

    rows = pa.table({"impression_id": pa.array(range(200_000), pa.int64()),
                     "campaign_id": pa.array([f"c{i % 7}" for i in range(200_000)]).dictionary_encode()})
    share = Share(rows, np.array([3, 9]), np.array([0, 120_000, 200_000]))
    frames = dumps({"op": "share", "data": to_serialize(("r0@1", "fp", share, None))})
    assert max(memoryview(f).nbytes for f in frames) == 8 * 200_000  # the id column's buffer, a frame of its own
    got = loads([bytearray(f) for f in frames])["data"][2]
    assert type(got) is Share and got.rows.equals(rows)
    assert got.keys.tolist() == [3, 9] and got.starts.tolist() == [0, 120_000, 200_000]
    assert sizeof(share) >= rows.nbytes


class ReadsAlive:
    """A scheduler plugin (on the real scheduler of the test's cluster) that records the most read tasks that
    were queued, running or holding their result at once."""

    name = "reads-alive"

    def __init__(self):
        self.alive, self.most, self.seen = set(), 0, set()

    def transition(self, key, start, finish, *args, **kwargs):
        if not str(key).startswith("read-"):
            return
        self.seen.add(key)
        if finish in ("waiting", "queued", "no-worker", "processing", "memory"):
            self.alive.add(key)
        else:
            self.alive.discard(key)
        self.most = max(self.most, len(self.alive))


def test_reads_go_no_further_ahead_than_the_owners_absorb(settings, tmp_path):
    """A worker holds a bounded number of read results, however many ranges the file has: the driver submits
    the next read only as the exchange takes the earlier ones' shares (READS_AHEAD per worker thread)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    from pipeline.stages.partition import READS_AHEAD

    plugin = type("Plugin", (ReadsAlive, SchedulerPlugin), {})()
    src = write_gz(tmp_path / "day.csv.gz", lines(200_000, 43))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", memory_limit="1GiB") as cluster, \
            Client(cluster) as client:
        client.register_plugin(plugin)
        rec = partition(client, settings, [src], "FACT")
        most, seen = client.run_on_scheduler(
            lambda dask_scheduler: (dask_scheduler.plugins["reads-alive"].most,
                                    len(dask_scheduler.plugins["reads-alive"].seen)))
    assert rec["rows_written"] == 200_000 and rec["read_tasks"] == seen >= 25
    assert most <= READS_AHEAD * 2 + 2, (most, seen)  # the window, and a share batch sent as it fills


@pytest.mark.parametrize("run_rows", [3, 400], ids=["short runs (one gather)", "long runs (copied run by run)"])
@pytest.mark.parametrize("videos", [5, 50_000], ids=["5 video ids", "50,000 video ids"])
@pytest.mark.parametrize("large_text", [False, True], ids=["32-bit offsets", "64-bit offsets"])
def test_regrouped_shares_hold_each_groups_rows_in_arrival_order(run_rows, videos, large_text, monkeypatch):
    """An owner makes its buffered shares one table sorted by partition key before it spills or writes
    (accumulate.regroup): each group then holds exactly the rows its shares gave it, share by share in arrival
    order, with its strings as read, whichever way the rows were put in order and the dictionaries made one —
    and decoded strings too many for 32-bit offsets (a large memory budget) are held with 64-bit ones (the limit
    lowered here to reach it)."""
    import pyarrow as pa

    from pipeline.stages import accumulate
    from pipeline.stages.accumulate import Share, groups_of, regroup

    if large_text:
        monkeypatch.setattr(accumulate, "LARGE_TEXT", 0)

    rng = np.random.default_rng(run_rows + videos)
    video_names = pa.array([f"video_{i}" for i in range(videos)])
    shares, expected, next_id = [], {}, 0
    for s in range(12):
        keys = np.sort(rng.choice(np.arange(40, 90), size=int(rng.integers(1, 30)), replace=False))
        counts = rng.integers(1, 2 * run_rows, size=len(keys))
        n = int(counts.sum())
        codes = rng.integers(0, videos, n)
        width = np.int16 if videos < 1 << 15 else np.int32  # both code widths meet, as from narrow()
        rows = pa.table({"impression_id": pa.array(np.arange(next_id, next_id + n)),
                         "video_id": pa.DictionaryArray.from_arrays(pa.array(codes.astype(width)), video_names)})
        starts = np.concatenate(([0], np.cumsum(counts)))
        for k, a, b in zip(keys.tolist(), starts[:-1], starts[1:]):
            expected.setdefault(k, []).extend(
                (next_id + i, f"video_{codes[i]}") for i in range(a, b))
        shares.append(Share(rows, keys, starts))
        next_id += n
    given = list(shares)
    merged = regroup(given)
    assert given == []  # the shares were let go
    assert merged.keys.tolist() == sorted(expected) and merged.starts[-1] == next_id
    got = {k: list(zip(rows["impression_id"].to_pylist(), rows["video_id"].to_pylist()))
           for (_, k), rows in groups_of("s", merged)}
    assert got == expected
    decoded = pa.types.is_string(merged.rows.schema.field("video_id").type) or \
        pa.types.is_large_string(merged.rows.schema.field("video_id").type)
    if decoded:
        assert pa.types.is_large_string(merged.rows.schema.field("video_id").type) is large_text


def test_a_group_from_a_spill_and_memory_takes_more_values_than_16_bit_codes_hold(settings, tmp_path):
    """Each piece of a group (a spill, then memory) carries 16-bit codes for its own 20,000 video ids; together
    they hold 40,000, more than 16 bits can number: the group is still written whole, as one file."""
    import pyarrow as pa
    from datetime import date

    from pipeline.schema import PARSED_SCHEMA
    from pipeline.stages.accumulate import Accumulator, Share, narrow, partition_keys
    from pipeline.table.catalog import create_or_load, open_catalog, table_properties
    from pipeline.table.schema import fact_schema, fact_spec
    from pipeline.table.write import WriteTarget

    t = create_or_load(open_catalog(str(tmp_path / "wh"), None), ("impressions", "fact"), fact_schema(),
                       fact_spec(8), table_properties(settings))

    def share(prefix: str, base: int, n: int = 20_000) -> Share:
        rows = pa.table({"ad_date": pa.array([date(2019, 1, 1)] * n, pa.date32()),
                         "impression_id": pa.array(range(base, base + n), pa.int64()),
                         "campaign_id": pa.array(["c1"] * n).dictionary_encode(),
                         "video_id": pa.array([f"{prefix}{i}" for i in range(n)]).dictionary_encode(),
                         "viewing_percentage": pa.array(np.full(n, 0.5))}, schema=PARSED_SCHEMA)
        narrowed = narrow(rows)
        assert narrowed.schema.field("video_id").type.index_type == pa.int16()
        return Share(narrowed, partition_keys(rows, 8)[:1], np.array([0, n]))

    acc = Accumulator("L", WriteTarget.of(t), WriteTarget.of(t), 8)
    acc.add_part("r0@0", "s" * 24, share("a", 0), None)
    acc.flush()  # the first piece goes to a spill
    acc.add_part("r1@0", "s" * 24, share("b", 20_000), None)
    [written] = acc.finish()["files"]
    assert written.data_file.record_count == 40_000
    import pyarrow.parquet as pq

    back = pq.read_table(written.data_file.file_path.removeprefix("file://"))
    assert sorted(back["video_id"].to_pylist()) == sorted([f"a{i}" for i in range(20_000)] +
                                                          [f"b{i}" for i in range(20_000)])
