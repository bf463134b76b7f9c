"""`impressions index SOURCE...` (issue 11, item 4: the index built when the file lands), run as a user would.

The index it caches must be the one a later `partition` with the same warehouse uses: that load is warm (no index
pass, no streaming head task, every range read from its seek point) and writes the same rows as a cold load of
the same file into another warehouse. Judged from outside: the CLI's JSON lines, the cache file, DuckDB on the
tables. A corrupt file fails with one line after the others were indexed; files that need no index and a
second run need no cluster work; a JOB.yaml `index` step does the same; on S3 the index goes under the
warehouse prefix, the input prefix stays untouched.
"""
from __future__ import annotations

import gzip
import os

import pytest

from drills_cli import cli_env, impression_bytes, impressions, one_error_line, quiet, run, succeeded
from drills_judge import exact, table

ROWS = 40_000


def _source(path, n=ROWS, seed=1, first_id=1) -> str:
    path.write_bytes(gzip.compress(impression_bytes(n, seed, first_id=first_id), 1))
    return str(path)


def _lines(cli, event="gzip_index") -> list[dict]:
    return [o for o in cli.json() if o.get("event") == event]


def _index(wh, *paths, env=None):
    return run(impressions(str(wh), "index", *map(str, paths)), env=env or cli_env(), timeout=240)


def test_an_indexed_file_loads_warm_with_the_same_rows_as_a_cold_load(tmp_path):
    src = _source(tmp_path / "day.csv.gz")
    wh = tmp_path / "wh"
    cli = _index(wh, src)
    assert cli.proc.returncode == 0, cli.tail()
    quiet(cli)
    (line,) = _lines(cli)
    assert line["status"] == "built" and line["source"] == src, line
    assert line["points"] >= 4 and line["uncompressed_size"] == len(gzip.decompress(open(src, "rb").read()))
    cache = line["index"]
    assert os.path.exists(cache) and cache.startswith(str(wh / "_cache" / "gzindex")), cache
    made = os.stat(cache).st_mtime_ns
    # what a warm load reads of it: the header and point table only, not the 32 KiB windows of every point
    from pipeline.read.gzindex import parse_index, read_index

    whole = open(cache, "rb").read()
    assert read_index(cache) == parse_index(whole, cache)
    cut = tmp_path / "cut.gzidx"
    cut.write_bytes(whole[:-1])
    with pytest.raises(ValueError, match="expected"):
        read_index(str(cut))

    again = _index(wh, src)  # a second run finds it
    assert again.proc.returncode == 0 and [o["status"] for o in _lines(again)] == ["cached"], again.tail()

    warm = run(impressions(str(wh), "partition", src, "FACT"), env=cli_env(), timeout=240)
    final = succeeded(warm)
    assert "index pass" not in warm.stderr, warm.tail()  # warm: the cached index, no pass, no head task
    assert os.stat(cache).st_mtime_ns == made  # used, not rebuilt
    cold = run(impressions(str(tmp_path / "cold"), "partition", src, "FACT"), env=cli_env(), timeout=240)
    cold_final = succeeded(cold)
    assert "index pass" in cold.stderr, cold.tail()
    assert final["rows_written"] == cold_final["rows_written"] == ROWS
    exact(table(str(wh), "fact"), 1, ROWS)
    assert (final["vp_mean"], final["vp_std"]) == pytest.approx((cold_final["vp_mean"], cold_final["vp_std"]),
                                                                rel=1e-12)


def test_a_corrupt_file_fails_after_the_others_were_indexed(tmp_path):
    good = _source(tmp_path / "good.csv.gz")
    bad = tmp_path / "truncated.csv.gz"
    bad.write_bytes(gzip.compress(impression_bytes(ROWS, 2, first_id=ROWS + 1), 1)[:-300])
    cli = _index(tmp_path / "wh", good, bad)
    one_error_line(cli, 1, "1 of 2 source(s) could not be indexed", "truncated.csv.gz")
    by_source = {o["source"]: o for o in _lines(cli)}
    assert by_source[good]["status"] == "built" and os.path.exists(by_source[good]["index"])
    assert by_source[str(bad)]["status"] == "FAILED" and "truncated" in by_source[str(bad)]["error"]
    cached = os.listdir(tmp_path / "wh" / "_cache" / "gzindex")
    assert cached == [os.path.basename(by_source[good]["index"])], cached  # nothing cached for the bad file


def test_files_that_need_no_index_start_no_cluster(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_bytes(impression_bytes(100, 3))
    small = tmp_path / "small.csv.gz"
    small.write_bytes(gzip.compress(impression_bytes(10, 3)))  # under read.small-file (16 KiB in these runs)
    cli = _index(tmp_path / "wh", plain, small)
    assert cli.proc.returncode == 0, cli.tail()
    quiet(cli)
    assert [(o["status"], o["reason"].split(":")[0]) for o in _lines(cli)] == [
        ("not_needed", "not gzip"), ("not_needed", "smaller than read.small-file (16384 bytes)")]
    assert "Dask dashboard" not in cli.stderr, cli.tail()


def test_usage_errors_exit_2_before_a_cluster_starts(tmp_path):
    cli = _index(tmp_path / "wh", tmp_path / "missing.csv.gz")
    one_error_line(cli, 2, "input not found", "missing.csv.gz")
    src = _source(tmp_path / "a.csv.gz", n=2000)
    copy = tmp_path / "b.csv.gz"
    copy.write_bytes(open(src, "rb").read())
    one_error_line(_index(tmp_path / "wh", src, copy), 2, "the same content is given twice")


def test_a_job_file_indexes_then_partitions(tmp_path):
    src = _source(tmp_path / "day.csv.gz")
    job = tmp_path / "job.yaml"
    job.write_text("warehouse: wh\nsteps:\n  - index: {sources: [day.csv.gz]}\n"
                   "  - partition: {sources: [day.csv.gz], table: FACT}\n")
    cli = run([*impressions(str(tmp_path / "wh"), "run", str(job))], env=cli_env(), timeout=240)
    final = succeeded(cli)
    (line,) = _lines(cli)
    assert line["status"] == "built", line
    assert "index pass over 1 gzip file" in cli.stderr and cli.stderr.count("index pass") == 1, cli.tail()
    assert final["rows_written"] == ROWS
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - index: {sources: day.csv.gz}\n")
    one_error_line(run(impressions(str(tmp_path / "wh"), "run", str(bad)), env=cli_env()), 2,
                   "step 1 (index)", "sources must be a list of paths")


def test_on_s3_the_index_goes_under_the_warehouse(s3_bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=s3_bucket, Key="input/day.csv.gz", Body=open(_source(tmp_path / "day.csv.gz"), "rb").read())
    src, wh = f"s3://{s3_bucket}/input/day.csv.gz", f"s3://{s3_bucket}/warehouse"
    env = cli_env({"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]})
    cli = _index(wh, src, env=env)
    assert cli.proc.returncode == 0, cli.tail()
    (line,) = _lines(cli)
    assert line["status"] == "built" and line["index"].startswith(f"{wh}/_cache/gzindex/"), line
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert keys == {"input/day.csv.gz", line["index"].removeprefix(f"s3://{s3_bucket}/")}, keys
    warm = run(impressions(wh, "partition", src, "FACT", catalog=f"sqlite:///{tmp_path / 'c.db'}"), env=env)
    assert succeeded(warm)["rows_written"] == ROWS and "index pass" not in warm.stderr, warm.tail()
