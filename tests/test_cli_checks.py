"""Bad jobs and bad configuration fail before anything runs: exit 2, one line on stderr naming what is wrong, no
traceback, nothing committed, and read-only commands never create a warehouse or a catalog."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_gz

ROOT = Path(__file__).resolve().parents[1]
GOOD = b"01/01/2019,1,campaign_00,video_0,0.5\n01/02/2019,2,campaign_01,video_1,0.25\n"


def cli(*args, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_") and k != "IMPRESSIONS_DEBUG"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc, code=2, *needles):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def job_dir(tmp_path):
    write_gz(tmp_path / "facts.csv.gz", GOOD)
    (tmp_path / "campaigns.csv").write_text("campaign_id,name\ncampaign_00,A\ncampaign_01,B\n")
    return tmp_path


def write_job(dir_, steps: str) -> str:
    (dir_ / "job.yaml").write_text("warehouse: wh\nsteps:\n" + steps)
    return str(dir_ / "job.yaml")


@pytest.mark.parametrize("steps, needles", [
    ("  - partition: {sources: [facts.csv.gz], table: F}\n  - join: {dimension: campaigns.csv, source: F, tabel: J}\n",
     ["step 2 (join)", "tabel"]),
    ("  - partition: {sources: [facts.csv.gz], table: F}\n  - join: {dimension: campaigns.csv, source: F}\n",
     ["step 2 (join)", "missing table"]),
    ("  - partition: {sources: [facts.csv.gz, missing.csv.gz], table: F}\n", ["step 1 (partition)", "missing.csv.gz"]),
    ("  - partition: {sources: [facts.csv.gz], table: F}\n  - stats: {table: NOPE}\n", ["step 2 (stats)", "nope"]),
    ("  - partition: {sources: [facts.csv.gz], table: F}\n  - join: {dimension: dup.csv, source: F, table: J}\n",
     ["step 2 (join)", "duplicate"]),
    ("  - partition: {sources: [facts.csv.gz], table: F, replace: maybe}\n", ["step 1 (partition)", "replace"]),
    ("  - compact: {table: F}\n", ["step 1", "unknown step"]),
])
def test_a_bad_job_is_refused_whole_before_any_step_runs(job_dir, steps, needles):
    (job_dir / "dup.csv").write_text("campaign_id,name\ncampaign_00,A\ncampaign_00,B\n")
    proc = cli("run", write_job(job_dir, steps))
    one_line_error(proc, 2, *needles)
    assert not (job_dir / "wh" / "catalog.db").exists(), "a step ran (or a catalog was made) before the check"


def test_an_unknown_top_level_key_is_refused(job_dir):
    (job_dir / "job.yaml").write_text("warehuose: wh\nsteps:\n  - stats: {table: F}\n")
    one_line_error(cli("run", str(job_dir / "job.yaml")), 2, "warehuose")


def test_stats_never_creates_a_warehouse_or_catalog(tmp_path):
    wh = tmp_path / "nowhere"
    one_line_error(cli("--warehouse", str(wh), "stats", "FACT"), 2, "no warehouse", str(wh))
    assert not wh.exists()
    wh.mkdir()
    one_line_error(cli("--warehouse", str(wh), "stats", "FACT"), 2, "no catalog")
    assert list(wh.iterdir()) == []


def test_a_missing_table_names_the_warehouse(tmp_path, job_dir):
    wh = tmp_path / "wh"
    assert cli("--warehouse", str(wh), "--workers", "1", "partition", str(job_dir / "facts.csv.gz"), "F").returncode == 0
    one_line_error(cli("--warehouse", str(wh), "stats", "OTHER"), 2, "impressions.other", str(wh))
    one_line_error(cli("--warehouse", str(wh), "join", str(job_dir / "campaigns.csv"), "OTHER", "J"), 2,
                   "impressions.other", str(wh))


def test_configuration_errors_exit_2_before_a_cluster_starts(tmp_path, job_dir):
    src = str(job_dir / "facts.csv.gz")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(cli("--warehouse", str(blocker / "wh"), "partition", src, "F"), 2, "cannot create the warehouse")
    one_line_error(cli("--warehouse", str(tmp_path / "wh"), "--catalog", "nosuchdb://x/y", "partition", src, "F"),
                   2, "cannot open the catalog")
    one_line_error(cli("--warehouse", str(tmp_path / "wh"), "--catalog", "not-a-uri", "partition", src, "F"), 2,
                   "--catalog")
    proc = cli("--warehouse", str(tmp_path / "wh"), "--scheduler", "tcp://127.0.0.1:9", "partition", src, "F",
               timeout=120)
    one_line_error(proc, 2, "cannot reach the Dask scheduler", "127.0.0.1:9")
