"""Commits (table/commit.py): an overwrite of named data files gives what pyiceberg's own overwrite gives — the
same live files, summary and manifest entries — and leaves the manifests that lose nothing as they are."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from pipeline.table.catalog import create_or_load, open_catalog, table_properties
from pipeline.table.commit import Change, apply
from pipeline.table.schema import fact_schema, fact_spec
from pipeline.table.write import WriteTarget, write_data_files

BUCKETS = 8
DAYS = [19_000 + d for d in range(6)]


def _rows(day: int, bucket: int, n: int = 50) -> pa.Table:
    return pa.table({
        "ad_date": pa.array([dt.date(1970, 1, 1) + dt.timedelta(days=day)] * n, pa.date32()),
        "impression_id": pa.array(range(bucket * 1000, bucket * 1000 + n), pa.int64()),
        "campaign_id": pa.array([f"campaign_{bucket}"] * n),  # the bucket number only names the group
        "video_id": pa.array(["video_0"] * n),
        "viewing_percentage": pa.array([(i % 10) / 10 for i in range(n)], pa.float64()),
    })


def _table(settings, name: str):
    """Two appends of 24 files each (so two manifests): the first holds days 0-2, the second days 3-5."""
    catalog = open_catalog(settings.warehouse, settings.catalog)
    table = create_or_load(catalog, ("impressions", name), fact_schema(), fact_spec(BUCKETS),
                           table_properties(settings))
    for days in (DAYS[:3], DAYS[3:]):
        groups = [((day, b), "0" * 24, _rows(day, b)) for day in days for b in range(BUCKETS)]
        written = write_data_files(WriteTarget.of(table), groups)
        table = apply(table, Change(adds=[w.data_file for w in written]))
    return table


def _partition(data_file) -> tuple[int, int]:
    day = data_file.partition[0]
    return (day - dt.date(1970, 1, 1)).days if hasattr(day, "toordinal") else int(day), int(data_file.partition[1])


def _pyiceberg_overwrite(table, adds, deletes):
    tx = table.transaction()
    with tx.update_snapshot().overwrite() as op:
        for df in deletes:
            op.delete_data_file(df)
        for df in adds:
            op.append_data_file(df)
    return tx.commit_transaction()


def _entries(table) -> list[tuple[str, str]]:
    out = []
    for manifest in table.current_snapshot().manifests(table.io):
        for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            out.append((e.status.name, e.data_file.file_path.rsplit("/data/", 1)[1]))
    return sorted(out)


@pytest.mark.parametrize("pick", ["later days, two buckets", "one file of each manifest", "all files"])
def test_an_overwrite_equals_pyicebergs_and_keeps_the_manifests_that_lose_nothing(settings, pick):
    ours, theirs = _table(settings, "ours"), _table(settings, "theirs")
    choose = {"later days, two buckets": lambda d, b: d in DAYS[3:] and b in (2, 5),
              "one file of each manifest": lambda d, b: (d, b) in ((DAYS[0], 1), (DAYS[4], 7)),
              "all files": lambda d, b: True}[pick]

    def plan(table):
        files = [t.file for t in table.scan().plan_files()]
        deletes = [f for f in files if choose(*_partition(f))]
        # the new files: a few rows of each partition again, as an update writes them
        rewritten = write_data_files(WriteTarget.of(table), [(_partition(f), "1" * 24, _rows(*_partition(f), n=3))
                                                             for f in deletes])
        return files, deletes, [w.data_file for w in rewritten]

    before_ours, deletes, adds = plan(ours)
    manifests_before = {m.manifest_path for m in ours.current_snapshot().manifests(ours.io)}
    ours = apply(ours, Change(adds=adds, deletes=deletes))
    _, deletes_t, adds_t = plan(theirs)
    theirs = _pyiceberg_overwrite(theirs, adds_t, deletes_t)

    assert deletes and len(deletes) == len(deletes_t)
    live = {t.file.file_path for t in ours.scan().plan_files()}
    assert live == ({f.file_path for f in before_ours} - {f.file_path for f in deletes}) | {f.file_path for f in adds}
    keys = ("added-data-files", "deleted-data-files", "total-data-files", "added-records", "deleted-records",
            "total-records")
    ours_summary = ours.current_snapshot().summary.additional_properties
    theirs_summary = theirs.current_snapshot().summary.additional_properties
    assert [ours_summary.get(k) for k in keys] == [theirs_summary.get(k) for k in keys]
    statuses = lambda t: sorted(s for s, _ in _entries(t))  # noqa: E731 - paths differ between the two tables
    assert statuses(ours) == statuses(theirs)
    assert sum(s == "DELETED" for s, _ in _entries(ours)) == len(deletes)
    assert ours.scan().to_arrow().num_rows == theirs.scan().to_arrow().num_rows

    manifests_after = {m.manifest_path for m in ours.current_snapshot().manifests(ours.io)}
    touched = {"later days, two buckets": 1, "one file of each manifest": 2, "all files": 2}[pick]
    assert len(manifests_before & manifests_after) == 2 - touched  # the manifest that lost nothing is the same file


def test_many_added_files_go_into_manifests_of_whole_bucket_ranges_and_an_overwrite_rewrites_only_theirs(settings):
    from pipeline.table.commit import MANIFEST_FILES

    catalog = open_catalog(settings.warehouse, settings.catalog)
    table = create_or_load(catalog, ("impressions", "wide"), fact_schema(), fact_spec(16), table_properties(settings))
    days = range(19_000, 19_000 + (2 * MANIFEST_FILES) // 16 + 1)  # just over 2 x MANIFEST_FILES files
    written = write_data_files(WriteTarget.of(table), [((d, b), "0" * 24, _rows(d, b, n=2)) for d in days
                                                       for b in range(16)])
    table = apply(table, Change(adds=[w.data_file for w in written]))

    def buckets_by_manifest(t):
        out = {}
        for m in t.current_snapshot().manifests(t.io):
            live = list(m.fetch_manifest_entry(t.io, discard_deleted=True))
            out[m.manifest_path] = (sorted({int(e.data_file.partition[1]) for e in live}), len(live))
        return out

    first = buckets_by_manifest(table)
    assert sorted(b for b, _ in first.values()) == [list(range(8)), list(range(8, 16))]   # 2 groups of whole buckets
    assert sum(n for _, n in first.values()) == len(written)
    assert table.scan().to_arrow().num_rows == 2 * len(written)

    files = [t.file for t in table.scan().plan_files()]
    hit = [f for f in files if int(f.partition[1]) in (2, 3)]
    new = write_data_files(WriteTarget.of(table), [(_partition(f), "1" * 24, _rows(*_partition(f), n=1)) for f in hit])
    table = apply(table, Change(adds=[w.data_file for w in new], deletes=hit))
    after = buckets_by_manifest(table)
    upper = next(p for p, (b, _) in first.items() if b[0] == 8)
    assert upper in after and after[upper] == first[upper]          # the buckets 8-15 manifest: the same file
    rewritten = [v for p, v in after.items() if p not in first and v[0] and v[0] != [2, 3]]
    assert rewritten == [([0, 1, 4, 5, 6, 7], first[next(p for p, (b, _) in first.items() if b[0] == 0)][1] - len(hit))]
    assert table.scan().to_arrow().num_rows == 2 * len(written) - 2 * len(hit) + len(hit)
