"""pipeline.generate: deterministic synthetic inputs in the users' format (DESIGN "Inputs" and `generate`)."""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.generate import generate

DATE_RE = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")
VP_RE = re.compile(r"^(0|1)(\.\d{1,4})?$")
FILES = ("impressions.csv.gz", "campaigns.csv.gz", "campaigns_updated.csv.gz")


def read_lines(path) -> list[str]:
    with gzip.open(path, "rb") as f:  # Python's gzip reads every member of a multi-member file
        data = f.read()
    text = data.decode("utf-8")
    assert not text.startswith("\ufeff")
    assert "\r" not in text
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_dimension(path) -> tuple[list[str], list[dict]]:
    with gzip.open(path, "rt", newline="") as f:
        r = csv.DictReader(f)
        rows = list(r)
        return list(r.fieldnames or []), rows


def gzip_members(path) -> int:
    """Count gzip members independently of the gzip module: zlib decompressobj per member."""
    data = Path(path).read_bytes()
    members = 0
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(data)
        assert d.eof, "truncated gzip member"
        members += 1
        data = d.unused_data
    return members


def check_impression_line(line: str) -> tuple:
    fields = line.split(",")
    assert len(fields) == 5, line
    date_s, id_s, campaign, video, vp_s = fields
    m = DATE_RE.match(date_s)
    assert m, line
    date = dt.datetime.strptime(date_s, "%m/%d/%Y").date()
    assert re.fullmatch(r"-?\d+", id_s), line
    assert campaign and campaign.strip() == campaign and '"' not in campaign
    assert video and video.strip() == video
    assert VP_RE.match(vp_s), line  # at most 4 decimals
    vp = float(vp_s)
    assert 0.0 <= vp <= 1.0, line
    return date, int(id_s), campaign, video, vp


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_small")
    info = generate(str(out), rows=20_000, days=7, campaigns=12, changed=3, seed=42)
    return out, info


@pytest.fixture(scope="module")
def multi_member(tmp_path_factory):
    """Just over one generator chunk (1,000,000 rows), so the impressions file has two gzip members."""
    out = tmp_path_factory.mktemp("gen_multi")
    info = generate(str(out), rows=1_000_010, days=30, campaigns=50, changed=3, seed=3, threads=4)
    return out, info


# ------------------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes(tmp_path):
    """Same seed, same bytes -- also when the second run happens in a later second (gzip headers carry an
    MTIME field, which must not be the wall clock for the output to be reproducible)."""
    first, again = tmp_path / "first", tmp_path / "again"
    generate(str(first), rows=2000, days=7, campaigns=12, changed=3, seed=42)
    time.sleep(1.0 - time.time() % 1.0 + 0.01)  # cross a whole-second boundary
    generate(str(again), rows=2000, days=7, campaigns=12, changed=3, seed=42)
    for name in FILES:
        a, b = (first / name).read_bytes(), (again / name).read_bytes()
        assert gzip.decompress(a) == gzip.decompress(b), name
        assert a == b, f"{name}: gzip header MTIME {a[4:8].hex()} vs {b[4:8].hex()}"


def test_same_bytes_whatever_the_thread_count(tmp_path, multi_member):
    out, _ = multi_member
    one = tmp_path / "one"
    generate(str(one), rows=1_000_010, days=30, campaigns=50, changed=3, seed=3, threads=1)
    name = "impressions.csv.gz"  # compressed in parallel threads: the bytes themselves must agree
    assert (one / name).read_bytes() == (out / name).read_bytes()
    for name in FILES[1:]:  # (their gzip headers are covered by test_same_seed_same_bytes)
        assert gzip.decompress((one / name).read_bytes()) == gzip.decompress((out / name).read_bytes()), name


def test_other_seed_other_data(tmp_path, small):
    out, _ = small
    generate(str(tmp_path), rows=20_000, days=7, campaigns=12, changed=3, seed=43)
    assert (tmp_path / "impressions.csv.gz").read_bytes() != (out / "impressions.csv.gz").read_bytes()


# ---------------------------------------------------------------------------------- impressions file
def test_return_value_names_the_files(small):
    out, info = small
    for key, name in zip(("impressions", "campaigns", "campaigns_updated"), FILES):
        assert Path(info[key]) == out / name and (out / name).is_file()
    assert info["rows"] == 20_000


def test_impressions_format(small):
    out, _ = small
    lines = read_lines(out / "impressions.csv.gz")
    assert len(lines) == 20_000
    parsed = [check_impression_line(ln) for ln in lines]  # also proves there is no header line
    ids = [p[1] for p in parsed]
    assert len(set(ids)) == len(ids)  # impression ids are unique
    vps = [p[4] for p in parsed]
    assert min(vps) < 0.05 and max(vps) > 0.95  # the range is really used


def test_dates_span_at_most_days(small):
    out, _ = small
    dates = {check_impression_line(ln)[0] for ln in read_lines(out / "impressions.csv.gz")}
    assert (max(dates) - min(dates)).days + 1 <= 7
    assert len(dates) == 7  # 20,000 rows over 7 days: every day is used


@pytest.mark.parametrize("days", [1, 3])
def test_dates_span_at_most_days_small(tmp_path, days):
    generate(str(tmp_path), rows=3000, days=days, campaigns=5, changed=1, seed=1)
    dates = {check_impression_line(ln)[0] for ln in read_lines(tmp_path / "impressions.csv.gz")}
    assert (max(dates) - min(dates)).days + 1 <= days


def test_multi_member_gzip_readable_with_python_gzip(multi_member):
    out, info = multi_member
    path = out / "impressions.csv.gz"
    assert gzip_members(path) >= 2
    lines = read_lines(path)
    assert len(lines) == 1_000_010
    # the member boundary does not split or merge lines: spot-check lines around it and at the ends
    for ln in lines[999_995:1_000_005] + lines[:5] + lines[-5:]:
        check_impression_line(ln)
    ids = [int(ln.split(",", 2)[1]) for ln in lines]
    assert len(set(ids)) == len(ids)
    dates = {ln.split(",", 1)[0] for ln in lines}
    parsed = sorted(dt.datetime.strptime(d, "%m/%d/%Y").date() for d in dates)
    assert (parsed[-1] - parsed[0]).days + 1 <= 30


def test_zero_rows_is_an_empty_valid_gzip(tmp_path):
    info = generate(str(tmp_path), rows=0, days=3, campaigns=4, changed=1, seed=0)
    assert info["rows"] == 0
    with gzip.open(tmp_path / "impressions.csv.gz", "rb") as f:
        assert f.read() == b""
    fields, rows = read_dimension(tmp_path / "campaigns.csv.gz")
    assert len(rows) == 4


@pytest.mark.parametrize("kw", [{"rows": -1}, {"days": 0}, {"campaigns": 0}, {"changed": 13}, {"changed": -1}])
def test_invalid_arguments(tmp_path, kw):
    args = dict(rows=10, days=3, campaigns=12, changed=3, seed=0) | kw
    with pytest.raises((ValueError, UsageError)):
        generate(str(tmp_path / "x"), **args)
    assert not (tmp_path / "x" / "impressions.csv.gz").exists()


# ---------------------------------------------------------------------------------- dimension files
def test_dimension_has_header_and_one_row_per_campaign(small):
    out, _ = small
    fields, rows = read_dimension(out / "campaigns.csv.gz")
    with gzip.open(out / "campaigns.csv.gz", "rt") as f:
        assert f.readline().startswith("campaign_id,")
    assert fields[0] == "campaign_id" and len(fields) >= 2
    assert len(rows) == 12
    ids = [r["campaign_id"] for r in rows]
    assert len(set(ids)) == 12 and all(ids)


def test_updated_dimension_changed_and_new(small):
    out, info = small
    fields, base = read_dimension(out / "campaigns.csv.gz")
    ufields, updated = read_dimension(out / "campaigns_updated.csv.gz")
    with gzip.open(out / "campaigns_updated.csv.gz", "rt") as f:
        assert f.readline().startswith("campaign_id,")
    assert ufields == fields  # same columns
    base_by_id = {r["campaign_id"]: r for r in base}
    changed = [r for r in updated if r["campaign_id"] in base_by_id]
    new = [r for r in updated if r["campaign_id"] not in base_by_id]
    assert len(changed) == 3
    for r in changed:  # really changed: at least one attribute differs
        assert r != base_by_id[r["campaign_id"]], r
    assert sorted(r["campaign_id"] for r in changed) == sorted(info["changed"])
    assert len(new) >= 1
    assert {r["campaign_id"] for r in new} == set(info["new"])

    in_impressions = {ln.split(",")[2] for ln in read_lines(out / "impressions.csv.gz")}
    # at least one campaign occurs in the impressions but is new in the update
    assert in_impressions & {r["campaign_id"] for r in new}
    # and every impression's campaign is described by one of the two files
    assert in_impressions <= set(base_by_id) | {r["campaign_id"] for r in new}


def test_changed_zero(tmp_path):
    generate(str(tmp_path), rows=5000, days=2, campaigns=5, changed=0, seed=9)
    _, base = read_dimension(tmp_path / "campaigns.csv.gz")
    _, updated = read_dimension(tmp_path / "campaigns_updated.csv.gz")
    base_ids = {r["campaign_id"] for r in base}
    assert [r for r in updated if r["campaign_id"] in base_ids] == []
    assert len(updated) >= 1


@pytest.mark.parametrize("rows,seed", [(100, 0), (200, 1), (1000, 6)])
def test_new_campaign_occurs_in_small_impression_files(tmp_path, rows, seed):
    """DESIGN `generate`: "K changed campaigns plus at least one campaign that occurs in the impressions but
    is new in the update" — whatever the row count (>= 1) and seed, not just with luck."""
    info = generate(str(tmp_path), rows=rows, days=5, campaigns=50, changed=3, seed=seed)
    in_impressions = {ln.split(",")[2] for ln in read_lines(tmp_path / "impressions.csv.gz")}
    assert set(info["new"]) & in_impressions, (info["new"], sorted(in_impressions))


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_generate(tmp_path):
    exe = str(Path(sys.executable).with_name("impressions"))
    r = subprocess.run([exe, "generate", str(tmp_path / "out"), "--rows", "5000", "--days", "4",
                        "--campaigns", "6", "--changed", "2", "--seed", "5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)  # stdout: JSON lines only
    # the CLI writes what the function writes
    generate(str(tmp_path / "direct"), rows=5000, days=4, campaigns=6, changed=2, seed=5)
    for name in FILES:
        a, b = (tmp_path / "out" / name).read_bytes(), (tmp_path / "direct" / name).read_bytes()
        assert gzip.decompress(a) == gzip.decompress(b), name
    assert len(read_lines(tmp_path / "out" / "impressions.csv.gz")) == 5000
    with gzip.open(tmp_path / "out" / "campaigns_updated.csv.gz", "rt") as f:
        assert len(list(csv.DictReader(io.StringIO(f.read())))) >= 3
