"""Owners of partitions are balanced by rows (stages/owners.py): the owner that holds the most rows writes last
while the others wait, so an uneven split costs wall time on 2 workers and much more on many."""
from __future__ import annotations

import gzip
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from conftest import write_gz
from pipeline.config import load_settings
from pipeline.read.sources import describe_all
from pipeline.stages.accumulate import partition_keys
from pipeline.stages.owners import balanced
from pipeline.stages.partition import sample_weights
from pipeline.table.bucket import bucket_of


def rows_per_owner(owners, keys, counts) -> np.ndarray:
    return np.bincount(owners.of(keys), weights=counts, minlength=owners.count)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_equal_campaigns_in_uneven_buckets_give_every_owner_its_share(n):
    """34 equally large campaigns over 64 buckets and 2 dates (the bench's daily shape): bucket ids are not
    spread evenly over `key % n`, so that gave one of 2 owners 64 % of the rows; balanced by rows, none
    holds more than 1/34 of the rows above its share."""
    buckets = 64
    weights = np.bincount([bucket_of(f"campaign_{c:02d}", buckets) for c in range(34)], minlength=buckets)
    keys = np.array([day * buckets + b for day in (17897, 17898) for b in range(buckets)])
    counts = np.tile(weights, 2).astype(float)
    plain = np.bincount(keys % n, weights=counts, minlength=n)
    got = rows_per_owner(balanced(weights, n), keys, counts)
    assert got.sum() == counts.sum()
    assert got.max() / got.mean() <= 1 + n / 34 + 1e-9, (got, plain)
    assert got.max() < plain.max()


def test_each_date_rotates_the_assignment_so_more_owners_than_buckets_are_all_used():
    buckets, n = 4, 8
    owners = balanced([5, 1, 1, 1], n)
    keys = np.array([day * buckets + b for day in range(-3, 5) for b in range(buckets)])  # days before 1970 too
    got = owners.of(keys)
    assert set(got.tolist()) == set(range(n))
    for day in range(-3, 5):
        day_owners = owners.of(np.array([day * buckets + b for b in range(buckets)]))
        assert ((day_owners - owners.of(np.arange(buckets))) % n == day % n).all()


def test_without_weights_the_buckets_are_spread_by_count():
    owners = balanced(np.zeros(10), 3)
    assert sorted(np.bincount(owners.by_bucket, minlength=3).tolist()) == [3, 3, 4]
    assert owners == balanced(np.zeros(10), 3)  # the same on every driver: plain, deterministic


def test_the_sample_counts_rows_per_bucket_of_the_first_source(tmp_path):
    """The head of a gzip source, cut at a line, parsed as a load parses it; a bad line is not counted, and
    a file that is not gzip at all (or cannot be read) gives no weights rather than failing the load."""
    body = b"".join(b"01/01/2019,%d,campaign_%02d,video_0,0.5\n" % (i, i % 3) for i in range(3_000))
    src = write_gz(tmp_path / "a.csv.gz", body + b"01/01/2019,x,campaign_00,video_0,0.5\n")
    settings = load_settings(warehouse=str(tmp_path / "wh"))
    weights = sample_weights(describe_all([src])[0], True, 16, settings)
    expected = np.zeros(16)
    for c in range(3):
        expected[bucket_of(f"campaign_{c:02d}", 16)] += 1_000
    assert weights.tolist() == expected.tolist()
    plain = tmp_path / "b.csv"
    plain.write_bytes(body)
    assert sample_weights(describe_all([str(plain)])[0], False, 16, settings).sum() == 3_000
    broken = tmp_path / "c.csv.gz"
    broken.write_bytes(gzip.compress(body)[:40])
    assert sample_weights(describe_all([str(broken)])[0], True, 16, settings).sum() == 0


def test_a_key_of_any_date_and_bucket_has_one_owner_in_range():
    owners = balanced(np.arange(16), 5)
    days = pa.array([date(1901, 1, 1), date(1969, 12, 31), date(2019, 1, 1), date(2200, 6, 1)], pa.date32())
    rows = pa.table({"ad_date": days, "campaign_id": pa.array(["a", "b", "c", "d"]).dictionary_encode()})
    got = owners.of(partition_keys(rows, 16))
    assert ((got >= 0) & (got < 5)).all()
