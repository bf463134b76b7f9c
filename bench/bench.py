"""`make bench`: impressions against every peer a user would pick, the floors, scaling, memory, update and stats,
measured in ONE run on this machine, interleaved, medians of N rounds. Writes bench/results/*.json and
bench/RESULTS.md (bench/report.py).

  make bench                              everything, 3 rounds, ~1 GB of CSV per shape, + the 4 GB memory case
  make bench-quick                        smoke test: 4 M rows, 1 round, no 4 GB case (-> bench/results/quick/)
  make bench BENCH_ONLY=duckdb,impressions BENCH_ROUNDS=1 BENCH_ROWS=5000000

Options (command line, or the BENCH_* environment variable named in --help):
  units (BENCH_ONLY, comma-separated; default all):
    impressions  `impressions partition` 2 workers, cold (fresh warehouse, the gzip index pass included) and
                 warm (the index cached; catalog and tables deleted between runs)
    duckdb daft polars dask   the peers, each from its own venv under bench/.venvs/ (pinned in
                 bench/peers/<peer>-constraints.txt; created on first use; BENCH_UPGRADE=1 re-resolves the newest)
    floors       ISA-L inflate, the rapidgzip index pass, Arrow's CSV parse (1 thread), one zstd Parquet file
    scaling      impressions cold with 1 worker (vs the 2-worker cold run: throughput ratio)
    files        impressions cold with 4 workers (vs 1 worker: files per partition)
    update       after the cold 2-worker run: join, update --dry-run, update of 3 campaigns (+1 new) in place,
                 stats (metadata) and stats --recount
    memory       impressions cold, 2 workers, on a 4x larger daily file (peak RSS per worker vs 1x; and DuckDB on
                 the same file when duckdb is selected too)
  shapes (BENCH_SHAPES): daily (2 dates) and backfill (60 dates), BENCH_ROWS rows each (22 M ~ 1 GB of CSV)

Every run is a fresh process; a round runs every selected unit once per shape, in an order rotated by one each
round (so no unit always follows the same one); each run waits (BENCH_QUIET_WAIT s at most) for other programs
to leave the CPUs idle, records the CPU they used meanwhile (/proc/stat) and is repeated (BENCH_RETRIES) when
that exceeds 5 % of the machine. Every engine's output is read back (bench/check.py) and must give the input's
row count, viewing_percentage mean and population stddev within 1e-9.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measure
import report

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
PROJECT_PY = REPO / ".venv" / "bin" / "python"
IMPRESSIONS = REPO / ".venv" / "bin" / "impressions"
RESULTS = BENCH / "results"
TABLE = "FACT_PARTITIONED"
SHAPE_DAYS = {"daily": 2, "backfill": 60}
DEFAULT_ROWS = 22_000_000  # ~46 bytes per generated line -> ~1.0 GB of CSV
QUICK_ROWS = 4_000_000  # ~41 MB of gzip: above read.small-file (32 MiB), so the index pass still runs
TOLERANCE = 1e-9

# The peers: venv name -> what pip resolves the first time (then pinned by the constraints file).
PEER_PACKAGES = {
    "duckdb": ["duckdb"],
    "daft": ["daft", "pyiceberg[sql-sqlite]"],
    "polars": ["polars", "mmh3"],
    "dask": ["dask[dataframe]", "pyarrow", "mmh3"],
    "tools": ["py-spy"],  # bench/profile.py, not a peer
}
PEER_SCRIPT = {"duckdb": "duckdb_copy.py", "daft": "daft_iceberg.py", "polars": "polars_parquet.py",
               "dask": "dask_parquet.py"}
UNITS = ["impressions", "duckdb", "daft", "polars", "dask", "floors", "scaling", "files", "update", "memory"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def env_default(name: str, default):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    if isinstance(default, bool):
        return value.lower() not in ("0", "no", "false", "off")
    return type(default)(value) if default is not None else value


# ------------------------------------------------------------------ setup: versions, venvs, inputs

LAUNCHER = """import sys
from pipeline.cli import main
if __name__ == '__main__':
    sys.exit(main())
"""


def code_snapshot(mode: str, dest: Path) -> dict:
    """A private copy of pipeline/ and cluster/ that every impressions run of this bench executes, so edits made
    to the tree meanwhile (the install is editable) cannot change what is measured halfway. mode "head": the
    committed sources (git archive HEAD); "worktree": the files as they are now, uncommitted edits included.
    Runs get PYTHONPATH=dest (ahead of the editable install's finder) and a launcher shaped like the `impressions`
    console script, so Dask's spawned workers start exactly as they do under the real CLI. Bytecode is cached in
    the copy (PYTHONDONTWRITEBYTECODE is dropped for these runs), as it is for an installed package."""
    import io
    import tarfile

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD") or "no-git"
    if mode == "head":
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "pipeline", "cluster"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    else:
        for d in ("pipeline", "cluster"):
            shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "impressions").write_text(LAUNCHER)
    digest = hashlib.sha256()
    for path in sorted(p for p in dest.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")):
        digest.update(path.relative_to(dest).as_posix().encode() + b"\0" + path.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(dest) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    probe = dest / "_where.py"  # run as a script, like the launcher: sys.path[0] is the copy, never the cwd
    probe.write_text("import pipeline.cli, cluster\nprint(pipeline.cli.__file__)\n")
    where = subprocess.run([str(PROJECT_PY), str(probe)], env=env, cwd="/", capture_output=True, text=True,
                           check=True).stdout.strip()
    probe.unlink()
    if not Path(where).is_relative_to(dest):
        raise SystemExit(f"the code snapshot is not what runs: pipeline.cli comes from {where}")
    dirty = mode == "worktree" and bool(git("status", "--porcelain", "--", "pipeline", "cluster"))
    label = f"{commit[:7]}{'+uncommitted' if dirty else ''}+src:{digest.hexdigest()[:10]}"
    return {"mode": mode, "commit": commit, "uncommitted_edits": dirty, "src_hash": digest.hexdigest()[:12],
            "label": label, "cmd": [str(PROJECT_PY), str(dest / "impressions")], "env": env}


def project_versions() -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['dask', 'distributed', 'pyarrow', 'pyiceberg', 'rapidgzip', 'isal', 'numpy']}))")
    return json.loads(subprocess.run([str(PROJECT_PY), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def constraints_file(peer: str) -> Path:
    return PEERS / f"{peer}-constraints.txt"


def peer_python(peer: str, upgrade: bool) -> tuple[Path, dict]:
    """The peer venv's python, created on first use. The first resolution (or BENCH_UPGRADE=1) installs the
    newest packages and pins everything it resolved in bench/peers/<peer>-constraints.txt; later creations
    (a clean clone) install exactly those pins. Returns the python and {package: version} of the venv."""
    venv, lock = VENVS / peer, constraints_file(peer)
    python, stamp = venv / "bin" / "python", venv / ".installed"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    lock_hash = lambda: hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else ""
    if upgrade or not lock.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        say(f"resolving the newest {', '.join(PEER_PACKAGES[peer])} into {venv.relative_to(REPO)} ...")
        subprocess.run([*pip, "-U", "pip"], check=True)
        subprocess.run([*pip, "-U", *PEER_PACKAGES[peer]], check=True)
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
        lock.write_text(f"# {peer} peer of `make bench`: resolved {dt.date.today()} from "
                        f"{' '.join(PEER_PACKAGES[peer])}; BENCH_UPGRADE=1 re-resolves\n{frozen}")
        stamp.write_text(lock_hash())
    elif not python.exists() or not stamp.exists() or stamp.read_text() != lock_hash():
        say(f"creating {venv.relative_to(REPO)} from {lock.relative_to(REPO)} ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([*pip, "-U", "pip"], check=True)
        subprocess.run([*pip, "-r", str(lock)], check=True)
        stamp.write_text(lock_hash())
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.lower()] = version.strip()
    return python, pins


def input_file(shape: str, rows: int, code: dict) -> dict:
    """bench/data/<shape>-<rows>/: the impressions file and the two dimension files, generated once by
    `impressions generate`, described by meta.json (sizes and the reference row count and moments)."""
    outdir = DATA / f"{shape}-{rows}"
    meta_path, path = outdir / "meta.json", outdir / "impressions.csv.gz"
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("rows") == rows and meta.get("gzip_bytes") == path.stat().st_size:
            return meta
    say(f"generating {rows:,} rows over {SHAPE_DAYS[shape]} dates into {outdir.relative_to(REPO)} ...")
    shutil.rmtree(outdir, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*code["cmd"], "generate", str(outdir), "--rows", str(rows), "--days", str(SHAPE_DAYS[shape])],
                   check=True, stdout=subprocess.DEVNULL, env=code["env"])
    generated = time.perf_counter() - t0
    ref = check("reference", str(path))
    if ref["rows"] != rows:
        raise SystemExit(f"{path}: the reference reader found {ref['rows']:,} rows, expected {rows:,}")
    meta = {"shape": shape, "days": SHAPE_DAYS[shape], "rows": rows, "path": str(path.relative_to(REPO)),
            "gzip_bytes": path.stat().st_size, "csv_bytes": ref["csv_bytes"],
            "reference": {k: ref[k] for k in ("n", "mean", "m2", "std")},
            "changed_campaigns": changed_campaigns(outdir), "generate_seconds": round(generated, 1)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def changed_campaigns(outdir: Path) -> list[str]:
    """Campaigns whose row differs (or is new) between campaigns.csv.gz and campaigns_updated.csv.gz."""
    def rows(name):
        with gzip.open(outdir / name, "rt", newline="") as f:
            return {r["campaign_id"]: r for r in csv.DictReader(f)}
    old, new = rows("campaigns.csv.gz"), rows("campaigns_updated.csv.gz")
    return sorted(k for k, v in new.items() if old.get(k) != v)


def check(kind: str, *args: str) -> dict:
    """bench/check.py in the project's venv (untimed)."""
    res = subprocess.run([str(PROJECT_PY), str(BENCH / "check.py"), kind, *args], capture_output=True, text=True)
    if res.returncode:
        raise measure.Failed(f"check {kind} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def page_in(path: Path) -> None:
    """Read the input once so every engine finds it in the page cache, the first run included."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


# ------------------------------------------------------------------ the bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.runs: list[dict] = []
        self.failures: list[dict] = []
        self.inputs: dict[str, dict] = {}
        self.pythons: dict[str, Path] = {}
        self.pins: dict[str, dict] = {}
        self.engine_versions: dict[str, dict] = {}
        self.logs = DATA / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=DATA))
        self.code = code_snapshot(args.code, self.scratch / "code")
        self.imp, self.env = self.code["cmd"], self.code["env"]

    # ---- one measured run, repeated while other programs disturb it
    def measured(self, *, experiment: str, shape: str, peer: str, rnd: int, fn, retry: bool = True) -> dict | None:
        tries = self.args.retries + 1 if retry else 1
        for attempt in range(1, tries + 1):
            waited = measure.settle(self.args.quiet_wait, say)
            log = self.logs / f"{experiment}-{shape}-{peer.replace(' ', '_')}-r{rnd}-a{attempt}"
            try:
                r = fn(log)
            except measure.Failed as e:
                say(f"  FAILED {experiment} {shape} {peer} round {rnd}: {str(e).splitlines()[0]}")
                self.failures.append({"experiment": experiment, "shape": shape, "peer": peer, "round": rnd,
                                      "error": str(e)[-2000:]})
                return None
            r.pop("stdout", None)
            r.update(experiment=experiment, shape=shape, peer=peer, round=rnd, attempt=attempt,
                     waited_for_quiet=round(waited, 1), log=str(log.relative_to(REPO)))
            self.say_run(r)
            if not r["disturbed"] or attempt == tries:
                if r["disturbed"]:
                    say("    disturbed by other programs; kept (marked)")
                self.runs.append(r)
                return r
            say(f"    disturbed: other programs used {r['other_cpu']:.1f} CPU s; repeating")
        return None

    def say_run(self, r: dict) -> None:
        extra = f"rows {r['rows']:,} files {r['files']:,}" if "files" in r and r.get("rows") is not None else ""
        worker = f" worker {r['worker_peak_rss'] / 2**30:.2f} GiB" if r.get("worker_peak_rss") else ""
        say(f"  r{r['round']} {r['shape']:8s} {r['peer']:26s} wall {r['wall']:7.1f} s  user {r['cpu_user']:6.1f}  "
            f"sys {r['cpu_sys']:5.1f}  largest {r['maxrss_kb'] / 2**20:5.2f} GiB{worker}  tree "
            f"{r['peak_rss_tree'] / 2**30:5.2f} GiB  others {r['other_cpu']:4.1f} s  {extra}"
            f"{'  ' + r['check_error'] if r.get('check_error') else ''}")

    def verify(self, r: dict, got: dict, shape: str, rows_key: str = "rows") -> None:
        """Compare what a run wrote with the input's reference; store the deviations on the run."""
        ref = self.inputs[shape]["reference"]
        r.update({k: got.get(k) for k in ("files", "bytes", "partitions", "files_per_partition",
                                          "max_files_per_partition") if k in got})
        r["rows"] = got[rows_key]
        r["mean"], r["std"] = got.get("mean"), got.get("std")
        r["mean_error"] = abs(got["mean"] - ref["mean"]) if got.get("mean") is not None else None
        r["std_error"] = abs(got["std"] - ref["std"]) if got.get("std") is not None else None
        problems = []
        if r["rows"] != ref["n"]:
            problems.append(f"rows {r['rows']:,} != {ref['n']:,}")
        for k in ("mean_error", "std_error"):
            if r[k] is None or r[k] > TOLERANCE:
                problems.append(f"{k} {r[k]}")
        r["check_ok"] = not problems
        if problems:
            r["check_error"] = "CHECK FAILED: " + "; ".join(problems)

    # ---- impressions
    def impressions(self, log: Path, shape: str, warehouse: Path, workers: int, keep: bool = False,
                    src: str | None = None, big: bool = False, fresh: bool = True) -> dict:
        src = src or str(REPO / self.inputs[shape]["path"])
        if fresh:  # cold: nothing left by an earlier (failed or repeated) attempt
            shutil.rmtree(warehouse, ignore_errors=True)
        r = measure.measure([*self.imp, "--warehouse", str(warehouse), "--workers", str(workers),
                             "partition", src, TABLE], log, env=self.env, timeout=self.args.timeout)
        status = final_status(r["stdout"], "partition")
        r.update(code=self.code["label"], workers=workers, load_seconds=status["seconds"],
                 files_reported=status["files_written"], bytes_reported=status["bytes_written"],
                 rows_reported=status["rows_written"], rows_quarantined=status["rows_quarantined"],
                 read_tasks=status.get("read_tasks"))
        got = check("iceberg", str(warehouse), "impressions", "impressions.fact_partitioned")
        self.verify(r, got, "big" if big else shape)
        r["status_matches_table"] = (r["files_reported"], r["rows_reported"]) == (r["files"], r["rows"])
        if not keep:
            shutil.rmtree(warehouse, ignore_errors=True)
        return r

    def seed_warm(self, shape: str) -> Path:
        """An unmeasured first load whose gzip index stays cached for the warm runs (and warms the caches)."""
        warm = self.scratch / f"warm-{shape}"
        say(f"  seeding the gzip index for warm runs ({shape}) ...")
        log = self.logs / f"seed-{shape}"
        r = measure.measure([*self.imp, "--warehouse", str(warm), "--workers", "2", "partition",
                             str(REPO / self.inputs[shape]["path"]), TABLE], log, env=self.env,
                            timeout=self.args.timeout)
        final_status(r["stdout"], "partition")
        empty_keeping_index(warm)
        return warm

    def chain(self, shape: str, rnd: int, warehouse: Path) -> None:
        """join -> update --dry-run -> update (in place) -> stats -> stats --recount on a fresh cold load."""
        inp = self.inputs[shape]
        d = REPO / Path(inp["path"]).parent
        base = [*self.imp, "--warehouse", str(warehouse), "--workers", "2"]
        env = self.env
        timeout = self.args.timeout

        def join(log):
            r = measure.measure([*base, "join", str(d / "campaigns.csv.gz"), TABLE, "FACT_JOINED"], log,
                                env=env, timeout=timeout)
            s = final_status(r["stdout"], "join")
            r.update(files_written=s["files_written"], bytes_written=s["bytes_written"],
                     load_seconds=s["seconds"], orphans=s.get("orphans"))
            got = check("iceberg", str(warehouse), "impressions", "impressions.fact_joined")
            self.verify(r, got, shape)
            return r

        if not self.measured(experiment="update", shape=shape, peer="join", rnd=rnd, fn=join, retry=False):
            return
        before = check("iceberg", str(warehouse), "impressions", "impressions.fact_joined")
        affected = affected_bytes(warehouse, inp["changed_campaigns"])

        def dry_run(log):
            r = measure.measure([*base, "update", str(d / "campaigns_updated.csv.gz"), "FACT_JOINED",
                                 "FACT_JOINED", "--dry-run"], log, env=env,
                                timeout=timeout)
            plan = next(json.loads(x) for x in r["stdout"].splitlines()
                        if x.startswith("{") and json.loads(x).get("event") == "update_plan")
            r.update({k: plan[k] for k in ("changed_keys", "affected_partitions", "files_rewritten",
                                           "bytes_rewritten", "bytes_total")})
            return r

        plan = self.measured(experiment="update", shape=shape, peer="update --dry-run", rnd=rnd, fn=dry_run,
                             retry=False)

        def update(log):
            r = measure.measure([*base, "update", str(d / "campaigns_updated.csv.gz"), "FACT_JOINED",
                                 "FACT_JOINED"], log, env=env, timeout=timeout)
            s = final_status(r["stdout"], "update")
            r.update({k: s.get(k) for k in ("changed_keys", "affected_partitions", "files_rewritten",
                                            "bytes_rewritten", "bytes_total", "files_written", "bytes_written")})
            r["load_seconds"] = s["seconds"]
            got = check("iceberg", str(warehouse), "impressions", "impressions.fact_joined")
            summary = got.get("snapshot_summary", {})
            r.update(added_files_size=int(summary.get("added-files-size", 0)),
                     removed_files_size=int(summary.get("removed-files-size", 0)),
                     affected_buckets=affected["buckets"], affected_files=affected["files"],
                     affected_bytes=affected["bytes"], joined_bytes=before["bytes"],
                     plan_bytes_rewritten=plan["bytes_rewritten"] if plan else None)
            self.verify(r, got, shape)
            return r

        self.measured(experiment="update", shape=shape, peer="update", rnd=rnd, fn=update, retry=False)

        for peer, extra in (("stats", []), ("stats --recount", ["--recount"])):
            def stats(log, extra=extra):
                r = measure.measure([*base, "stats", "FACT_JOINED", "--json", *extra], log, env=env,
                                    timeout=timeout)
                out = json.loads(r["stdout"].strip().splitlines()[-1])
                r.update(recount_matches=out.get("recount_matches"))
                self.verify(r, {"rows": out["rows"], "mean": out["vp_mean"], "std": out["vp_std"]}, shape)
                return r

            self.measured(experiment="update", shape=shape, peer=peer, rnd=rnd, fn=stats)

    # ---- peers in their own venvs
    def peer(self, log: Path, name: str, shape: str) -> dict:
        """`shape` names an input: a shape, or "big" (the memory case's larger file)."""
        out = self.scratch / f"{name}-{shape}"
        shutil.rmtree(out, ignore_errors=True)
        src = str(REPO / self.inputs[shape]["path"])
        try:
            r = measure.measure([str(self.pythons[name]), str(PEERS / PEER_SCRIPT[name]), src, str(out)], log,
                                cwd=self.scratch, timeout=self.args.timeout)
            info = json.loads(r["stdout"].strip().splitlines()[-1])
            self.engine_versions[name] = {k: v for k, v in info.items() if k not in ("rows_copied", "data_files")}
            if name == "daft":
                got = check("iceberg", str(out), "bench", "bench.fact_partitioned")
            else:
                got = check("parquet", str(out))
            self.verify(r, got, shape)
            r["engine"] = info
            return r
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def floors(self, log: Path, shape: str) -> dict:
        out = self.scratch / f"floors-{shape}"
        try:
            r = measure.measure([str(PROJECT_PY), str(PEERS / "floors.py"), str(REPO / self.inputs[shape]["path"]),
                                 str(out)], log, timeout=self.args.timeout)
            info = json.loads(r["stdout"].strip().splitlines()[-1])
            r["steps"], r["parquet_bytes"], r["index_bytes"] = info["steps"], info["parquet_bytes"], info["index_bytes"]
            # the fixed cost every impressions process (the driver and each worker) pays before any work
            probe = measure.measure([str(PROJECT_PY), "-c", "import distributed, pipeline.cli, pipeline.stages.partition, "
                                     "pipeline.stages.join, pipeline.stages.update"], log.with_name(log.name + "-imports"),
                                    env=self.env, cwd=Path(self.code["cmd"][1]).parent, timeout=self.args.timeout)
            r["steps"]["imports"] = {"wall": probe["wall"], "cpu_user": probe["cpu_user"], "cpu_sys": probe["cpu_sys"],
                                     "cpu": probe["cpu"]}
            n, mean, m2 = info["n"], info["mean"], info["m2"]
            self.verify(r, {"rows": info["rows"], "mean": mean, "std": (m2 / n) ** 0.5, "files": 1,
                            "partitions": 1}, shape)
            return r
        finally:
            shutil.rmtree(out, ignore_errors=True)

    # ---- a round
    def slots(self, shape: str, rnd: int, warm: dict) -> list[tuple[str, object]]:
        only = self.args.only
        s: list[tuple[str, object]] = []
        if "impressions" in only or "update" in only:
            s.append(("impressions cold", lambda: self.cold_and_chain(shape, rnd)))
        if "impressions" in only:
            def warm_run(log):
                r = self.impressions(log, shape, warm[shape], 2, keep=True, fresh=False)
                empty_keeping_index(warm[shape])
                return r
            s.append(("impressions warm", lambda: self.measured(experiment="partition", shape=shape,
                                                                 peer="impressions warm", rnd=rnd, fn=warm_run)))
        for name in ("duckdb", "daft", "polars", "dask"):
            if name in only:
                s.append((name, lambda name=name: self.measured(
                    experiment="partition", shape=shape, peer=name, rnd=rnd,
                    fn=lambda log: self.peer(log, name, shape))))
        for unit, workers in (("scaling", 1), ("files", 4)):
            if unit in only:
                label = f"impressions cold {workers}w"
                s.append((label, lambda workers=workers, label=label: self.measured(
                    experiment="partition", shape=shape, peer=label, rnd=rnd,
                    fn=lambda log: self.impressions(log, shape, self.scratch / f"cold-{shape}-{workers}w", workers))))
        if "floors" in only:
            s.append(("floors", lambda: self.measured(experiment="floors", shape=shape, peer="floors", rnd=rnd,
                                                      fn=lambda log: self.floors(log, shape))))
        k = (rnd - 1) % len(s) if s else 0
        return s[k:] + s[:k]

    def cold_and_chain(self, shape: str, rnd: int) -> None:
        wh = self.scratch / f"cold-{shape}-2w"
        keep = "update" in self.args.only
        if "impressions" in self.args.only:
            r = self.measured(experiment="partition", shape=shape, peer="impressions cold", rnd=rnd,
                              fn=lambda log: self.impressions(log, shape, wh, 2, keep=keep))
        else:  # only the update chain: its partition is setup, not a measurement
            shutil.rmtree(wh, ignore_errors=True)
            r = measure.measure([*self.imp, "--warehouse", str(wh), "--workers", "2", "partition",
                                 str(REPO / self.inputs[shape]["path"]), TABLE], self.logs / f"setup-{shape}-r{rnd}",
                                env=self.env, timeout=self.args.timeout)
            final_status(r["stdout"], "partition")
        if keep and r is not None:
            self.chain(shape, rnd, wh)
        shutil.rmtree(wh, ignore_errors=True)

    def memory_run(self, rnd: int) -> None:
        shape = self.args.big_shape
        self.measured(experiment="memory", shape=shape, peer="impressions cold (4x input)", rnd=rnd,
                      fn=lambda log: self.impressions(log, shape, self.scratch / "cold-big", 2,
                                                      src=str(REPO / self.inputs["big"]["path"]), big=True))
        if "duckdb" in self.args.only:  # how the ratio to DuckDB moves with the input's size (fixed costs)
            self.measured(experiment="memory", shape=shape, peer="duckdb (4x input)", rnd=rnd,
                          fn=lambda log: self.peer(log, "duckdb", "big"))

    def run(self) -> None:
        a = self.args
        say(f"units: {', '.join(u for u in UNITS if u in a.only)}; shapes: {', '.join(a.shapes)}; "
            f"{a.rows:,} rows; {a.rounds} round(s); results -> {_shown(a.out)}")
        for name in PEER_PACKAGES:
            if name in a.only:
                self.pythons[name], self.pins[name] = peer_python(name, a.upgrade)
        for shape in a.shapes:
            self.inputs[shape] = input_file(shape, a.rows, self.code)
        if "memory" in a.only:
            self.inputs["big"] = input_file(a.big_shape, a.big_rows, self.code)
            if a.big_shape not in self.inputs:
                self.inputs[a.big_shape] = input_file(a.big_shape, a.rows, self.code)
        for meta in self.inputs.values():
            page_in(REPO / meta["path"])
        warm = {shape: self.seed_warm(shape) for shape in a.shapes} if "impressions" in a.only else {}
        for rnd in range(1, a.rounds + 1):
            say(f"round {rnd} of {a.rounds}")
            for shape in a.shapes:
                for _, slot in self.slots(shape, rnd, warm):
                    slot()
            if "memory" in a.only:
                if not ("impressions" in a.only and a.big_shape in a.shapes):  # the 1x reference run
                    self.measured(experiment="memory", shape=a.big_shape, peer="impressions cold (1x input)",
                                  rnd=rnd, fn=lambda log: self.impressions(log, a.big_shape,
                                                                           self.scratch / "cold-1x", 2))
                self.memory_run(rnd)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def final_status(stdout: str, stage: str) -> dict:
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    final = [s for s in lines if s.get("event") == "load_status" and s.get("stage") == stage
             and s.get("status") in ("SUCCEEDED", "SKIPPED", "FAILED")]
    if not final or final[-1]["status"] != "SUCCEEDED":
        raise measure.Failed(f"impressions {stage} did not succeed: {final[-1] if final else 'no status line'}")
    return final[-1]


def empty_keeping_index(warehouse: Path) -> None:
    """Delete the catalog and every table, keep `_cache/` (the gzip index: pipeline/read/gzindex.py cache_url)."""
    for entry in warehouse.iterdir():
        if entry.name != "_cache":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def affected_bytes(warehouse: Path, campaigns: list[str]) -> dict:
    """Bytes and files of FACT_JOINED in the buckets of the changed campaigns, computed from the table's metadata
    with pyiceberg's own bucket transform (not impressions' code)."""
    code = r"""
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import StringType
wh, campaigns = sys.argv[1], json.loads(sys.argv[2])
t = SqlCatalog("impressions", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}").load_table(
    "impressions.fact_joined")
field = next(f for f in t.spec().fields if str(f.transform).startswith("bucket"))
n = int(str(field.transform)[len("bucket["):-1])
bucket = BucketTransform(n).transform(StringType())
pos = t.spec().fields.index(field)
buckets = sorted({bucket(c) for c in campaigns})
hit = [task.file for task in t.scan().plan_files() if task.file.partition[pos] in buckets]
print(json.dumps({"buckets": buckets, "files": len(hit), "bytes": sum(f.file_size_in_bytes for f in hit)}))
"""
    res = subprocess.run([str(PROJECT_PY), "-c", code, str(warehouse), json.dumps(campaigns)], capture_output=True,
                         text=True)
    if res.returncode:
        raise measure.Failed(f"affected bytes: {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def _shown(path: Path) -> Path:
    """A path as the messages show it: relative to the repository when inside it (--out may be anywhere)."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", default=env_default("BENCH_QUICK", False),
                    help=f"smoke test: {QUICK_ROWS:,} rows, 1 round, no waiting, no 4x case (BENCH_QUICK)")
    ap.add_argument("--only", default=env_default("BENCH_ONLY", ""),
                    help=f"comma-separated units: {','.join(UNITS)} (BENCH_ONLY; default all)")
    ap.add_argument("--shapes", default=env_default("BENCH_SHAPES", "daily,backfill"), help="(BENCH_SHAPES)")
    ap.add_argument("--rows", type=int, default=env_default("BENCH_ROWS", 0),
                    help=f"rows per input file (BENCH_ROWS; {DEFAULT_ROWS:,}, quick {QUICK_ROWS:,})")
    ap.add_argument("--rounds", type=int, default=env_default("BENCH_ROUNDS", 0),
                    help="interleaved rounds; medians are reported (BENCH_ROUNDS; 3, quick 1)")
    ap.add_argument("--big-factor", type=int, default=env_default("BENCH_BIG_FACTOR", 4),
                    help="the memory case's input is this many times larger (BENCH_BIG_FACTOR; 4)")
    ap.add_argument("--big-shape", default=env_default("BENCH_BIG_SHAPE", "daily"), help="(BENCH_BIG_SHAPE)")
    ap.add_argument("--quiet-wait", type=float, default=env_default("BENCH_QUIET_WAIT", -1.0),
                    help="before each run, wait up to this many s for idle CPUs (BENCH_QUIET_WAIT; 30, quick 0)")
    ap.add_argument("--retries", type=int, default=env_default("BENCH_RETRIES", -1),
                    help="repeat a disturbed run at most this many times (BENCH_RETRIES; 1, quick 0)")
    ap.add_argument("--timeout", type=float, default=env_default("BENCH_TIMEOUT", 3600.0),
                    help="seconds one run may take (BENCH_TIMEOUT)")
    ap.add_argument("--upgrade", action="store_true", default=env_default("BENCH_UPGRADE", False),
                    help="re-resolve the newest peer versions and re-pin them (BENCH_UPGRADE)")
    ap.add_argument("--code", choices=["head", "worktree"], default=env_default("BENCH_CODE", "head"),
                    help="which impressions to measure: the committed HEAD or the working tree as it is at the "
                         "start, uncommitted edits included (BENCH_CODE; head). Either is copied first.")
    ap.add_argument("--out", default=env_default("BENCH_OUT", ""),
                    help="results directory (BENCH_OUT; bench/results for a full default run, bench/results/quick "
                         "for --quick, bench/results/partial otherwise)")
    ap.add_argument("--report-only", metavar="RUNS_JSON",
                    help="rewrite the results and RESULTS.md from a saved bench/data/logs/runs-*.json, run nothing")
    a = ap.parse_args(argv)
    full_default = not (a.quick or a.only or a.rows or a.rounds or a.shapes != "daily,backfill")
    a.rows = a.rows or (QUICK_ROWS if a.quick else DEFAULT_ROWS)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.quiet_wait = a.quiet_wait if a.quiet_wait >= 0 else (0 if a.quick else 30)
    a.retries = a.retries if a.retries >= 0 else (0 if a.quick else 1)
    units = [u.strip() for u in a.only.split(",") if u.strip()] or [u for u in UNITS
                                                                     if not (a.quick and u == "memory")]
    unknown = set(units) - set(UNITS)
    if unknown:
        ap.error(f"unknown units {sorted(unknown)}; known: {', '.join(UNITS)}")
    a.only = set(units)
    a.shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    if set(a.shapes) - set(SHAPE_DAYS) or a.big_shape not in SHAPE_DAYS:
        ap.error(f"shapes are {', '.join(SHAPE_DAYS)}")
    a.big_rows = a.rows * a.big_factor
    out = Path(a.out) if a.out else RESULTS if full_default else RESULTS / ("quick" if a.quick else "partial")
    a.out = out if out.is_absolute() else (Path.cwd() / out).resolve()
    a.full_default = full_default
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        out = Path(args.out) if os.environ.get("BENCH_OUT") or "--out" in (argv or sys.argv) else Path(saved["out"])
        for p in report.write(out, saved["header"], saved["runs"], saved["failures"]):
            say(f"wrote {p}")
        return 0
    if not IMPRESSIONS.exists():
        raise SystemExit("the project's venv is missing: run `make install` (make bench does)")
    started = dt.datetime.now().astimezone()
    mach = measure.machine()
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()
    header = {
        "harness": "bench/bench.py", "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": mach,
        "loadavg_at_end": list(os.getloadavg()),
        "code": {k: v for k, v in bench.code.items() if k not in ("cmd", "env")},
        "project_versions": project_versions(), "peer_versions": bench.engine_versions,
        "peer_pins": {k: str(constraints_file(k).relative_to(REPO)) for k in bench.pins},
        "peer_pinned": bench.pins,
        "config": {"units": sorted(args.only), "shapes": args.shapes, "rows": args.rows, "rounds": args.rounds,
                   "big_rows": args.big_rows if "memory" in args.only else None, "big_shape": args.big_shape,
                   "quiet_wait": args.quiet_wait, "retries": args.retries, "quick": args.quick,
                   "full_default": args.full_default},
        "inputs": bench.inputs,
    }
    raw = DATA / "logs" / f"runs-{started:%Y%m%d-%H%M%S}.json"  # kept even if the report fails
    raw.write_text(json.dumps({"out": str(args.out), "header": header, "runs": bench.runs,
                               "failures": bench.failures}, indent=1, default=str))
    say(f"raw runs: {raw.relative_to(REPO)} (bench/bench.py --report-only FILE rewrites the report from it)")
    written = report.write(args.out, header, bench.runs, bench.failures)
    say("\n" + "\n".join(f"wrote {p.relative_to(REPO) if p.is_relative_to(REPO) else p}" for p in written))
    bad = [r for r in bench.runs if not r.get("check_ok", True)]
    return 1 if bad or bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
