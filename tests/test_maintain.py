"""compact, expire and cleanup: fewer files with the same rows and statistics, lineage kept, DuckDB still reads
the table, and each safe next to a load committing at the same time."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import swallowed_sigterm, write_gz
from outside import duckdb_rows, duckdb_stats
from test_integrity import lines, rows_of, table
from pipeline.stages import maintain
from pipeline.stages.partition import partition
from pipeline.stages.table_stats import table_stats
from pipeline.table.lineage import fingerprint_of

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def load_many(client, settings, tmp_path, n=6, rows=4_000):
    """Loads into a table whose writers roll to a new data file every few KiB (`write.target-file-size-bytes`,
    with small row groups), so each partition gets several small files per source: what compaction is for."""
    from pipeline.table.catalog import create_or_load, open_catalog, table_name, table_properties
    from pipeline.table.schema import fact_schema, fact_spec

    small = dataclasses.replace(settings, read=dataclasses.replace(settings.read, range_size=48 * 1024,
                                                                   index_spacing=16 * 1024))
    rolling = {**table_properties(settings), "write.target-file-size-bytes": "4096",
               "write.parquet.row-group-limit": "64"}
    create_or_load(open_catalog(settings.warehouse, settings.catalog), table_name("FACT", settings.namespace),
                   fact_schema(), fact_spec(settings.buckets), rolling)
    for i in range(n):
        partition(client, small, [write_gz(tmp_path / f"day{i}.csv.gz", lines(rows, 100 + i, first_id=i * 10**6))],
                  "FACT")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise, on purpose
def test_an_interrupted_compact_says_failed_and_commits_nothing(client, settings, tmp_path, capsys):
    from pipeline import interrupts
    from pipeline.errors import Interrupted

    load_many(client, settings, tmp_path)
    before = table(settings, "FACT").metadata_location
    capsys.readouterr()
    with interrupts.handled():
        swallowed_sigterm()  # a real SIGTERM, its first raise dropped inside a gc callback
        with pytest.raises(Interrupted):
            maintain.compact(client, settings, "FACT", 16 * MiB)
    assert table(settings, "FACT").metadata_location == before
    statuses = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                if line.startswith("{") and '"load_status"' in line]
    assert statuses[-1]["stage"] == "compact" and statuses[-1]["status"] == "FAILED", statuses
    assert statuses[-1]["error"] == "interrupted", statuses[-1]


def test_compact_then_cleanup_fewer_files_same_rows_and_statistics(client, settings, tmp_path):
    load_many(client, settings, tmp_path)
    before = table_stats(client, settings, "FACT")
    t = table(settings, "FACT")
    want = duckdb_rows(t.metadata_location, "impression_id, viewing_percentage")
    rec = maintain.compact(client, settings, "FACT", 16 * MiB)
    after = table_stats(client, settings, "FACT")
    assert rec["status"] == "SUCCEEDED" and rec["rows_written"] == rec["rows_read"] > 0
    assert len(after["files"]) < len(before["files"]), (len(before["files"]), len(after["files"]))
    # every partition now holds one file per source (files stay tied to one source: lineage.py)
    groups = [(tuple(task.file.partition), fingerprint_of(task.file.file_path))
              for task in table(settings, "FACT").scan().plan_files()]
    assert len(groups) == len(set(groups))
    assert after["rows"] == before["rows"] == 24_000
    assert after["vp_mean"] == pytest.approx(before["vp_mean"], rel=1e-12)
    assert after["vp_std"] == pytest.approx(before["vp_std"], rel=1e-12)

    assert maintain.cleanup(settings, "FACT", timedelta(0), delete=True)["count"] == 0  # old snapshots reach them
    maintain.expire(settings, "FACT", timedelta(0), retain_last=1)
    swept = maintain.cleanup(settings, "FACT", timedelta(0), delete=True)
    assert swept["count"] >= rec["files_rewritten"]  # the compacted files, old manifests and manifest lists
    t = table(settings, "FACT")
    assert duckdb_rows(t.metadata_location, "impression_id, viewing_percentage") == want
    theirs = duckdb_stats(t.metadata_location)
    assert theirs["vp_std"] == pytest.approx(after["vp_std"], rel=1e-12)
    # lineage survives: a committed source is skipped, --replace finds its (compacted) rows
    assert partition(client, settings, [str(tmp_path / "day0.csv.gz")], "FACT")["status"] == "SKIPPED"
    write_gz(tmp_path / "day0.csv.gz", lines(1_000, 999, first_id=9 * 10**7))
    partition(client, settings, [str(tmp_path / "day0.csv.gz")], "FACT", replace=True)
    assert rows_of(settings, "FACT") == 24_000 - 4_000 + 1_000
    assert maintain.compact(client, settings, "FACT", 16 * MiB)["status"] in ("SUCCEEDED", "SKIPPED")
    assert table_stats(client, settings, "FACT")["rows"] == 21_000


def test_expire_keeps_lineage_statistics_and_the_dimension_versions(client, settings, tmp_path):
    load_many(client, settings, tmp_path, n=4, rows=2_000)
    assert len(table(settings, "FACT").metadata.snapshots) == 4
    out = maintain.expire(settings, "FACT", timedelta(0), retain_last=1)
    assert out["expired"] == 3 and len(table(settings, "FACT").metadata.snapshots) == 1
    maintain.cleanup(settings, "FACT", timedelta(0), delete=True)
    assert partition(client, settings, [str(tmp_path / "day1.csv.gz")], "FACT")["status"] == "SKIPPED"
    s = table_stats(client, settings, "FACT")
    assert s["rows"] == 8_000 and s["vp_std"] == pytest.approx(duckdb_stats(table(settings, "FACT")
                                                                             .metadata_location)["vp_std"], rel=1e-12)


def test_compact_and_cleanup_next_to_a_load_committing_at_the_same_time(client, settings, tmp_path):
    """Run a load in a thread while compact and cleanup (default-style threshold) run: no row lost or doubled."""
    load_many(client, settings, tmp_path, n=4, rows=3_000)
    big = write_gz(tmp_path / "big.csv.gz", lines(60_000, 7, first_id=5 * 10**8))
    errors = []

    def load():
        try:
            partition(client, settings, [big], "FACT")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(0.5)
    maintain.compact(client, settings, "FACT", 16 * MiB)
    maintain.cleanup(settings, "FACT", timedelta(hours=1), delete=True)  # fresh files of the load are kept
    thread.join(300)
    assert not errors, errors
    maintain.compact(client, settings, "FACT", 16 * MiB)
    t = table(settings, "FACT")
    ids = [r[0] for r in duckdb_rows(t.metadata_location, "impression_id")]
    assert len(ids) == len(set(ids)) == 12_000 + 60_000
    assert table_stats(client, settings, "FACT", recount=True)["recount_matches"]


def test_cleanup_lists_by_default_and_never_touches_live_files(client, settings, tmp_path):
    load_many(client, settings, tmp_path, n=2, rows=2_000)
    t = table(settings, "FACT")
    data_dir = os.path.join(t.metadata.location.removeprefix("file://"), "data")
    orphan = os.path.join(data_dir, "left-by-a-killed-run.parquet")
    Path(orphan).write_bytes(b"PAR1")
    os.utime(orphan, (time.time() - 5 * 86400, time.time() - 5 * 86400))
    fresh = os.path.join(data_dir, "being-written-now.parquet")
    Path(fresh).write_bytes(b"PAR1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--warehouse", settings.warehouse, "cleanup", "FACT"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["files"] == [orphan] and out["deleted"] is False and os.path.exists(orphan)  # 3 days by default
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--warehouse", settings.warehouse, "cleanup", "FACT",
                           "--delete"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert json.loads(proc.stdout.splitlines()[-1])["deleted"] is True
    assert not os.path.exists(orphan) and os.path.exists(fresh)
    assert table_stats(client, settings, "FACT", recount=True)["recount_matches"]


def test_a_freshly_linked_old_file_counts_as_new_to_cleanup(tmp_path):
    """A hard link (an update into another local table links the files it keeps) keeps its source's old mtime;
    cleanup's age guard, which spares files a load is about to commit, goes by the link's own time."""
    import fsspec

    from pipeline.storage import link_local
    from pipeline.table.maintenance import _modified

    old = tmp_path / "old.parquet"
    old.write_bytes(b"x")
    five_days_ago = time.time() - 5 * 86400
    os.utime(old, (five_days_ago, five_days_ago))
    link_local(str(old), str(tmp_path / "t" / "linked.parquet"))
    info = fsspec.filesystem("file").info(str(tmp_path / "t" / "linked.parquet"))
    assert info["mtime"] < time.time() - 86400  # the shared inode's mtime is the source's
    assert _modified(info) > time.time() - 60
