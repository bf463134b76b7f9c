"""Benchmark: `impressions partition` against DuckDB on the same ~2 GB gzip CSV, on this machine.

Why: the product's target is to partition a gzip impressions file into (date, bucket) files in at most 0.8x the
wall time of the newest DuckDB doing the same job (`COPY ... TO ... (PARTITION_BY (ad_date, bucket))`) on the
same cores. Numbers from other machines or other DuckDB versions do not count (DuckDB 1.4 vs 2.0 differ by
3x on this job), so this script measures both peers here, interleaved, and writes bench/RESULTS.md.

What it does (`make bench`, or `.venv/bin/python bench/partition_vs_duckdb.py [--rows N] [--runs N]`):
  1. generates bench/data/rows-<N>/impressions.csv.gz once with `impressions generate` (reused afterwards);
  2. creates bench/.duckdb-venv once with the newest duckdb from PyPI (`--upgrade-duckdb` to refresh it);
  3. runs, per round: impressions cold (fresh warehouse, so the gzip index pass is included), impressions
     warm (a warehouse whose catalog and tables are deleted but whose `_cache/gzindex/` is kept, so the index
     pass is skipped), then DuckDB; reports medians of wall time, CPU time and peak memory;
  4. checks that every run wrote the same number of rows as the file has.
On a shared 2-core machine other programs distort wall times badly (seen: 2-4x), so each run waits for idle
CPUs (`--quiet-wait`), measures the CPU other programs used meanwhile, and is repeated if that exceeds 5 %
(`--retries`). The pipeline is installed editable: RESULTS.md records which source each run executed.

Measurement: each command runs under a tiny Python wrapper that `subprocess.run`s it and reports its own
wall time and `getrusage(RUSAGE_CHILDREN)`: user+sys CPU of every reaped descendant (Dask's worker processes
are joined by their nanny, so their CPU is included) and ru_maxrss, the largest single process. Meanwhile
this script samples the summed RSS of the whole process tree every 0.2 s (psutil, or /proc if missing); the
sum counts shared pages once per process, so it slightly overstates memory for multi-process peers.
The file's pages stay in the page cache between runs (both peers alike); outputs are deleted and `sync`ed
outside the timed part.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
DUCKDB_VENV = BENCH / ".duckdb-venv"
IMPRESSIONS = REPO / ".venv" / "bin" / "impressions"
RESULTS = BENCH / "RESULTS.md"
TABLE = "FACT_PARTITIONED"
DEFAULT_ROWS = 46_000_000  # ~47 bytes per generated line at this size -> 2.17 GB (2.02 GiB) of CSV
TARGET_RATIO = 0.8
SAMPLE_EVERY = 0.2
RUN_TIMEOUT = 3600

# Runs one command; prints {"wall", "cpu_user", "cpu_sys", "maxrss_kb", "returncode"} as JSON to argv[1].
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
               "returncode": rc}, f)
"""

# The DuckDB peer, run by the duckdb venv's python: argv = source, output directory.
DUCKDB_COPY = r"""
import json, sys, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
columns = "{'column0': 'VARCHAR', 'column1': 'BIGINT', 'column2': 'VARCHAR', 'column3': 'VARCHAR', 'column4': 'DOUBLE'}"
copied = con.execute(f'''
COPY (SELECT strptime(column0, '%m/%d/%Y')::DATE AS ad_date, column1::BIGINT AS impression_id,
             column2 AS campaign_id, column3 AS video_id, column4::DOUBLE AS viewing_percentage,
             hash(column2) % 64 AS bucket
      FROM read_csv('{src}', header = false, columns = {columns}))
TO '{out}' (FORMAT PARQUET, PARTITION_BY (ad_date, bucket))''').fetchall()
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"rows_copied": copied[0][0] if copied else None, "threads": threads}))
"""

# Counts rows and files of Parquet files under a directory (untimed check), with DuckDB itself.
DUCKDB_COUNT = r"""
import glob, json, sys, duckdb
files = glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True)
con = duckdb.connect()
rows = con.execute(f"SELECT count(*) FROM read_parquet({files!r}, hive_partitioning = false)").fetchone()[0] if files else 0
print(json.dumps({"rows": rows, "files": len(files)}))
"""


# ------------------------------------------------------------------ setup

def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def input_file(rows: int) -> tuple[Path, dict]:
    """The generated impressions file for `rows` rows, generated once and described by meta.json."""
    outdir = DATA / f"rows-{rows}"
    meta_path = outdir / "meta.json"
    path = outdir / "impressions.csv.gz"
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("rows") == rows and meta.get("gzip_bytes") == path.stat().st_size:
            return path, meta
    say(f"generating {rows:,} rows into {outdir} ...")
    shutil.rmtree(outdir, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([str(IMPRESSIONS), "generate", str(outdir), "--rows", str(rows)], check=True,
                   stdout=subprocess.DEVNULL)
    meta = {"rows": rows, "gzip_bytes": path.stat().st_size, "csv_bytes": uncompressed_size(path),
            "generate_seconds": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, meta


def uncompressed_size(path: Path) -> int:
    from isal import igzip  # a dependency of the project

    total, buf = 0, bytearray(8 << 20)
    with igzip.open(path, "rb") as f:
        while n := f.readinto(buf):
            total += n
    return total


def duckdb_python(upgrade: bool) -> tuple[Path, str]:
    """The duckdb venv's python (created once, newest duckdb from PyPI) and the duckdb version."""
    python = DUCKDB_VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {DUCKDB_VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(DUCKDB_VENV)], check=True)
        upgrade = True
    if upgrade:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-U", "pip", "duckdb"], check=True)
    version = subprocess.run([str(python), "-c", "import duckdb; print(duckdb.__version__)"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return python, version


def code_version() -> str:
    """The commit plus a hash of the pipeline's source as it is on disk now (the install is editable, so every
    run executes the working tree: edits made during a bench change the results)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "pipeline").rglob("*.yaml"),
                        *(REPO / "cluster").rglob("*.py")]):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "no-git"
    return f"{commit}+src:{digest.hexdigest()[:10]}"


def machine() -> dict:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "?")
    return {"nproc": os.cpu_count(), "ram_gb": ram / 2**30, "cpu": cpu, "kernel": platform.release()}


# ------------------------------------------------------------------ measuring one command

class TreeSampler:
    """Summed RSS (max over time) of a process's descendants, and their CPU as a cross-check of rusage."""

    def __init__(self, pid: int):
        self.pid, self.peak_rss, self.cpu = pid, 0, {}
        try:
            import psutil
            self.psutil = psutil
        except ImportError:
            self.psutil = None

    def sample(self) -> None:
        procs = self._psutil_tree() if self.psutil else self._proc_tree()
        self.peak_rss = max(self.peak_rss, sum(rss for rss, _ in procs.values()))
        for pid, (_, cpu) in procs.items():
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu)

    def _psutil_tree(self) -> dict:
        out = {}
        try:
            children = self.psutil.Process(self.pid).children(recursive=True)
        except self.psutil.Error:
            return out
        for p in children:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    out[p.pid] = (p.memory_info().rss, t.user + t.system)
            except self.psutil.Error:
                pass
        return out

    def _proc_tree(self) -> dict:
        parent, out = {}, {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    parent[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = set(), {self.pid}
        while frontier:
            frontier = {p for p, pp in parent.items() if pp in frontier} - tree
            tree |= frontier
        tick = os.sysconf("SC_CLK_TCK")
        for pid in tree:
            try:
                rss = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/status")
                           if line.startswith("VmRSS:"))
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                out[pid] = (rss, (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, StopIteration, IndexError, ValueError):
                pass
        return out


def measure(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run `cmd` under the rusage wrapper, sampling the tree; stdout/stderr go to log.out / log.err."""
    usage = log.with_suffix(".usage.json")
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        busy0 = busy_cpu_seconds()
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(usage), *cmd], stdout=out, stderr=err,
                                env=env, cwd=cwd, start_new_session=True)
        sampler, deadline = TreeSampler(proc.pid), time.monotonic() + RUN_TIMEOUT
        while proc.poll() is None:
            sampler.sample()
            if time.monotonic() > deadline:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise SystemExit(f"timed out after {RUN_TIMEOUT} s: {' '.join(cmd)} (log: {log}.err)")
            time.sleep(SAMPLE_EVERY)
    busy = busy_cpu_seconds() - busy0
    r = json.loads(usage.read_text())
    cpu = r["cpu_user"] + r["cpu_sys"]
    r.update(cpu=cpu, other_cpu=max(0.0, busy - cpu), peak_rss_tree=sampler.peak_rss,
             cpu_sampled=sum(sampler.cpu.values()), stdout=log.with_suffix(".out").read_text())
    if r["returncode"] != 0:
        tail = log.with_suffix(".err").read_text()[-3000:]
        raise SystemExit(f"command failed (exit {r['returncode']}): {' '.join(cmd)}\n--- {log}.err (tail):\n{tail}")
    return r


def busy_cpu_seconds() -> float:
    """CPU seconds spent so far by everything on the machine (from /proc/stat; idle and iowait excluded)."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def settle(max_wait: float) -> None:
    """Flush written pages outside the timed part, then wait (up to max_wait s) until other programs leave
    the cores idle: other load on a 2-core machine changes the wall times more than anything measured here."""
    os.sync()
    deadline, quiet = time.monotonic() + max_wait, 0
    while quiet < 3:
        before = busy_cpu_seconds()
        time.sleep(1)
        quiet = quiet + 1 if busy_cpu_seconds() - before < 0.1 else 0
        if time.monotonic() > deadline:
            say(f"  (the machine is still busy after {max_wait:.0f} s; measuring anyway)")
            return


# ------------------------------------------------------------------ the peers

def run_impressions(src: Path, warehouse: Path, workers: int, log: Path) -> dict:
    cmd = [str(IMPRESSIONS), "--warehouse", str(warehouse), "--workers", str(workers), "partition", str(src), TABLE]
    code = code_version()
    r = measure(cmd, log)
    r["code"] = code if code == code_version() else f"{code} (changed during the run)"
    status = [json.loads(line) for line in r["stdout"].splitlines() if line.startswith("{")]
    final = next(s for s in status if s.get("event") == "load_status" and s.get("status") in ("SUCCEEDED", "SKIPPED"))
    if final["status"] != "SUCCEEDED":
        raise SystemExit(f"impressions did not load the file: {final}")
    r.update(rows=final["rows_written"], files=final["files_written"], load_seconds=final["seconds"],
             quarantined=final["rows_quarantined"], read_tasks=final.get("read_tasks"))
    return r


def empty_warehouse_keeping_index(warehouse: Path) -> None:
    """Delete the catalog and every table, keep `_cache/` (the gzip index: pipeline/gzindex.py cache_url)."""
    for entry in warehouse.iterdir():
        if entry.name != "_cache":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def run_duckdb(python: Path, src: Path, out: Path, log: Path) -> dict:
    r = measure([str(python), "-c", DUCKDB_COPY, str(src), str(out)], log, cwd=out.parent)
    info = json.loads(r["stdout"].strip().splitlines()[-1])
    r.update(threads=info["threads"], rows_copied=info["rows_copied"])
    return r


def count_output(python: Path, directory: Path) -> dict:
    """Rows and files under `directory`, counted by DuckDB from the Parquet files (untimed)."""
    res = subprocess.run([str(python), "-c", DUCKDB_COUNT, str(directory)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"counting the rows under {directory} failed:\n{res.stderr[-3000:]}")
    counted = json.loads(res.stdout)
    return {"counted_rows": counted["rows"], "counted_files": counted["files"]}


# ------------------------------------------------------------------ the rounds

def rounds(src: Path, python: Path, args, scratch: Path) -> dict[str, list[dict]]:
    """`args.runs` rounds of (impressions cold, impressions warm, duckdb); disturbed runs are repeated."""
    results = {"impressions cold": [], "impressions warm": [], "duckdb": []}
    warm = scratch / "warm-warehouse"
    logs = DATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def cold_run(i, log):
        cold = scratch / f"cold-warehouse-{i}"
        shutil.rmtree(cold, ignore_errors=True)
        r = run_impressions(src, cold, args.workers, log)
        r.update(count_output(python, cold / "impressions" / "fact_partitioned" / "data"))
        if (cold / "_cache").exists() and not (warm / "_cache").exists():  # seed the warm warehouse's index
            shutil.copytree(cold / "_cache", warm / "_cache")
        shutil.rmtree(cold)
        return r

    def warm_run(i, log):
        r = run_impressions(src, warm, args.workers, log)
        r.update(count_output(python, warm / "impressions" / "fact_partitioned" / "data"))
        empty_warehouse_keeping_index(warm)
        return r

    def duckdb_run(i, log):
        out = scratch / f"duckdb-out-{i}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_duckdb(python, src, out, log)
        r.update(count_output(python, out))
        r.update(rows=r["counted_rows"], files=r["counted_files"])
        shutil.rmtree(out)
        return r

    for i in range(1, args.runs + 1):
        for peer, fn in (("impressions cold", cold_run), ("impressions warm", warm_run), ("duckdb", duckdb_run)):
            log = logs / f"{peer.replace(' ', '-')}-{i}"
            results[peer].append(undisturbed(i, peer, lambda: fn(i, log), args.quiet_wait, args.retries))
    return results


def undisturbed(i: int, peer: str, run, quiet_wait: float, retries: int) -> dict:
    """Run after the machine is quiet; repeat (up to `retries` times) if other programs took CPU meanwhile."""
    for attempt in range(retries + 1):
        settle(quiet_wait)
        r = report(i, peer, run())
        r["disturbed"] = r["other_cpu"] > max(2.0, 0.05 * r["wall"] * (os.cpu_count() or 1))
        if not r["disturbed"]:
            break
        say(f"    disturbed: other programs used {r['other_cpu']:.1f} CPU s during the run"
            + ("; repeating" if attempt < retries else "; keeping it (marked *)"))
    return r


def report(i: int, peer: str, r: dict) -> dict:
    say(f"  run {i} {peer:17s} wall {r['wall']:7.1f} s  cpu {r['cpu']:7.1f} s  "
        f"(sampled {r['cpu_sampled']:.1f})  largest process {r['maxrss_kb'] / 2**20:5.2f} GiB  "
        f"tree {r['peak_rss_tree'] / 2**30:5.2f} GiB  other programs' CPU {r['other_cpu']:.1f} s  "
        f"rows {r['rows']:,}  files {r['files']:,}")
    r.pop("stdout", None)
    return r


# ------------------------------------------------------------------ summary

def medians(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "maxrss_kb", "peak_rss_tree")}


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    duck = medians(results["duckdb"])["wall"]
    for peer, runs in results.items():
        m = medians(runs)
        rows.append([peer, f"{m['wall']:.1f}", f"{m['cpu']:.1f}", f"{m['maxrss_kb'] / 2**20:.2f}",
                     f"{m['peak_rss_tree'] / 2**30:.2f}", f"{runs[0]['files']:,}", f"{m['wall'] / duck:.2f}x"])
    return rows


HEADER = ["peer", "wall s", "CPU s", "largest process GiB", "process tree GiB", "files", "wall / duckdb"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [HEADER, *rows]) for c in range(len(HEADER))]
    fmt = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def verdicts(results: dict, expected_rows: int) -> list[str]:
    duck = medians(results["duckdb"])["wall"]
    out = []
    for peer in ("impressions cold", "impressions warm"):
        ratio = medians(results[peer])["wall"] / duck
        ok = "meets" if ratio <= TARGET_RATIO else "MISSES"
        out.append(f"{peer} / duckdb wall = {ratio:.2f}x -> {ok} the target of <= {TARGET_RATIO}x")
    counts = {r[k] for runs in results.values() for r in runs for k in ("rows", "counted_rows", "rows_copied")
              if k in r}
    for peer in ("impressions cold", "impressions warm"):
        for i, r in enumerate(results[peer], 1):
            if r["files"] != r["counted_files"]:
                out.append(f"{peer} run {i}: reported {r['files']:,} files, found {r['counted_files']:,} on disk")
    codes = {r["code"] for peer in ("impressions cold", "impressions warm") for r in results[peer]}
    if len(codes) > 1:
        out.append(f"WARNING: the pipeline's source changed during the bench ({', '.join(sorted(codes))}); "
                   "the impressions runs did not all run the same code")
    disturbed = sum(r["disturbed"] for runs in results.values() for r in runs)
    if disturbed:
        out.append(f"WARNING: {disturbed} of {sum(map(len, results.values()))} runs were disturbed by other programs "
                   "(see 'other programs' CPU'); compare CPU seconds rather than wall times")
    out.append(f"row counts: {'all equal' if counts == {expected_rows} else 'MISMATCH'} "
               f"({', '.join(f'{c:,}' for c in sorted(counts))}; the file has {expected_rows:,})")
    return out


def write_markdown(results, verdict_lines, meta, mach, duck_version, runs, workers, retries, src) -> None:
    per_run = [[peer, f"{i}{' *' if r['disturbed'] else ''}", f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
                f"{r['cpu_sampled']:.1f}",
                f"{r['maxrss_kb'] / 2**20:.2f}", f"{r['peak_rss_tree'] / 2**30:.2f}", f"{r['rows']:,}",
                f"{r['files']:,}", f"{r['load_seconds']:.1f}" if "load_seconds" in r else "—",
                f"{r['other_cpu']:.1f}", r.get("code", "—")]
               for peer, rs in results.items() for i, r in enumerate(rs, 1)]
    text = f"""# partition vs DuckDB

Written by `make bench` (bench/partition_vs_duckdb.py) on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.

- machine: {mach['nproc']} cores ({mach['cpu']}), {mach['ram_gb']:.1f} GiB RAM, Linux {mach['kernel']}
- input: `{src.relative_to(REPO)}`: {meta['rows']:,} rows, {meta['gzip_bytes']:,} B gzip,
  {meta['csv_bytes']:,} B of CSV (ratio {meta['csv_bytes'] / meta['gzip_bytes']:.2f})
- impressions: `impressions --warehouse DIR --workers {workers} partition FILE {TABLE}` (LocalCluster, {workers}
  worker processes × 1 thread); **cold** = fresh warehouse, the gzip index pass is included; **warm** = the
  index is already in `DIR/_cache/gzindex/` (catalog and tables deleted between runs)
- duckdb {duck_version} in its own venv, default threads ({results['duckdb'][0]['threads']}):
  `COPY (SELECT strptime(column0,'%m/%d/%Y')::DATE AS ad_date, …, hash(column2) % 64 AS bucket FROM read_csv(…,
  columns={{…}})) TO DIR (FORMAT PARQUET, PARTITION_BY (ad_date, bucket))`
- code: {', '.join(sorted({r['code'] for p in ('impressions cold', 'impressions warm') for r in results[p]}))}
  (commit + hash of pipeline/ and cluster/ sources as run; the install is editable)
- medians of {runs} interleaved rounds (cold, warm, duckdb); CPU = user+sys of all reaped descendants
  (getrusage RUSAGE_CHILDREN); largest process = ru_maxrss; process tree = peak of the summed RSS of all
  processes, sampled every {SAMPLE_EVERY} s (shared pages counted once per process)

## Medians

{md_table(HEADER, summary_rows(results))}

{chr(10).join('- ' + v for v in verdict_lines)}

## Every run

{md_table(["peer", "run", "wall s", "CPU s", "CPU s (sampled)", "largest process GiB", "tree GiB", "rows",
           "files", "load s (impressions' own clock)", "other programs' CPU s", "code"], per_run)}

"other programs' CPU s": CPU used by everything else on the machine during the run (from /proc/stat; it
includes this script's own sampling, well under 1 s). Runs marked * were disturbed (more than 5 % of the
machine's CPU went to other programs) even after {retries} repetitions; their wall times are not trustworthy.
"""
    RESULTS.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows of the generated file ({DEFAULT_ROWS:,})")
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians are reported (3)")
    ap.add_argument("--workers", type=int, default=2, help="impressions LocalCluster workers (2)")
    ap.add_argument("--quiet-wait", type=float, default=300,
                    help="before each run, wait up to this many seconds for other programs to leave the CPUs idle")
    ap.add_argument("--retries", type=int, default=2,
                    help="repeat a run this many times at most while other programs disturb it (2)")
    ap.add_argument("--upgrade-duckdb", action="store_true", help="pip install -U duckdb in the existing venv")
    args = ap.parse_args(argv)

    mach = machine()
    src, meta = input_file(args.rows)
    python, duck_version = duckdb_python(args.upgrade_duckdb)
    say(f"{mach['nproc']} cores, {mach['ram_gb']:.1f} GiB RAM; duckdb {duck_version}; {src}: {meta['rows']:,} rows, "
        f"{meta['gzip_bytes'] / 1e6:,.0f} MB gzip, {meta['csv_bytes'] / 1e9:.2f} GB CSV")
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=DATA))
    try:
        results = rounds(src, python, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    verdict_lines = verdicts(results, meta["rows"])
    print(f"\nduckdb {duck_version}; {meta['rows']:,} rows, {meta['csv_bytes'] / 1e9:.2f} GB CSV; "
          f"medians of {args.runs}\n")
    print(text_table(summary_rows(results)))
    print("\n" + "\n".join(verdict_lines))
    write_markdown(results, verdict_lines, meta, mach, duck_version, args.runs, args.workers, args.retries, src)
    say(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0 if "MISMATCH" not in verdict_lines[-1] else 1


if __name__ == "__main__":
    sys.exit(main())
