"""Where impressions' time goes: one run under py-spy (every process: driver and Dask workers), samples grouped.

  .venv/bin/python bench/profile.py [--stage partition|join|update] [--shape daily|backfill] [--rows N]
                                    [--workers 2] [--rate 50]

py-spy comes from its own venv (bench/.venvs/tools, pinned in bench/peers/tools-constraints.txt). The run is
cold (fresh warehouse; for join and update the earlier stages run first, unprofiled). Samples of threads that
wait (the event loop's epoll, locks, queues) are left out; a sample inside an import (module-level code
included) counts as "imports"; the rest are grouped by the innermost frame that says what the thread was doing
(Parquet writing, CSV parsing, inflating, ...), per process kind. Writes
bench/results/profile-<stage>-<shape>.json and bench/PROFILE.md (the newest profile of each stage and shape), and
keeps py-spy's raw collapsed stacks in bench/data/logs/ (flamegraph.pl or speedscope read them).
Sampling costs the profiled run some speed: compare shares, not seconds, with `make bench`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import bench

# innermost frame first: the first rule whose pattern occurs in a frame names the sample
RULES = [
    ("idle (waiting)", r"selectors\.py|threading\.py.*\bwait\b|Condition\.wait|queue\.py.*\bget\b|Event\.wait|"
                       r"_thread\.lock|time\.sleep|select \(|poll \("),
    ("imports", r"<frozen importlib"),
    ("Parquet write", r"ParquetWriter|pyarrow/parquet|table/write\.py"),
    ("CSV parse (Arrow typed path and checks)", r"read/parse\.py|read/rules\.py|pyarrow/csv"),
    ("gzip index pass (rapidgzip)", r"build_index"),
    ("inflate (rapidgzip read)", r"Reader\.read|_Checked\.read|gzindex\.py|igzip|isal"),
    ("line ownership / block splitting", r"read/ranges\.py"),
    ("sort and group by partition", r"stages/accumulate\.py"),
    ("join / rewrite tasks", r"stages/join\.py|stages/update\.py"),
    ("statistics", r"report/stats\.py|table_stats\.py"),
    ("commit, catalog, Iceberg metadata", r"table/commit\.py|table/catalog\.py|table/lineage\.py|pyiceberg/|"
                                          r"sqlalchemy|sqlite"),
    ("dashboard (bokeh)", r"bokeh/"),
    ("Dask scheduling and comms", r"distributed/|tornado/|msgpack|cloudpickle|asyncio/"),
    ("other pipeline code", r"pipeline/|cluster/"),
]


ROLES = ("driver", "fork server", "worker")
_PROCESS = re.compile(r"process (\d+):\"([^\"]*)\"")


def role(stack: str, fork_server: int | None) -> str:
    """Which process a stack is from: a spawned worker names spawn_main; forked workers share the fork server's
    command line (multiprocessing.forkserver), and the fork server is the first of those processes."""
    procs = _PROCESS.findall(stack)
    if not procs:
        return "driver"
    pid, cmdline = int(procs[-1][0]), procs[-1][1]
    if "spawn_main" in cmdline:
        return "worker"
    if "multiprocessing.forkserver" in cmdline:
        return "fork server" if pid == fork_server else "worker"
    return "driver"


def categorise(frames: list[str]) -> str:
    if frames and re.search(RULES[0][1], frames[-1]):
        return RULES[0][0]
    if any("<frozen importlib" in f for f in frames):  # module-level code of an import counts as the import
        return "imports"
    for frame in reversed(frames):
        for name, pattern in RULES:
            if re.search(pattern, frame):
                return name
    return "other (interpreter, native, unnamed)"


def aggregate(raw: Path, rate: int) -> dict:
    by = Counter()
    funcs = Counter()
    pending = ""
    text = raw.read_text(errors="replace")
    forked = [int(pid) for pid, cmdline in _PROCESS.findall(text) if "multiprocessing.forkserver" in cmdline]
    fork_server = min(forked) if forked else None
    for line in text.splitlines():
        m = re.match(r"^(.*) (\d+)$", pending + line)
        if not m:  # a frame name garbled by sampling without pausing (--nonblocking) may hold newlines
            pending += line
            continue
        pending = ""
        stack, n = m.group(1), m.group(2)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        r, cat = role(stack, fork_server), categorise(frames)
        by[(r, cat)] += int(n)
        if cat != "idle (waiting)" and frames:
            funcs[(r, frames[-1])] += int(n)
    busy = {r: sum(v for (rr, c), v in by.items() if rr == r and c != "idle (waiting)") for r in ROLES}
    rows = [{"process": r, "category": c, "seconds": v / rate,
             "share_of_process": v / busy[r] if busy[r] and c != "idle (waiting)" else None}
            for (r, c), v in sorted(by.items(), key=lambda kv: (kv[0][0], -kv[1]))]
    top = [{"process": r, "frame": f, "seconds": v / rate} for (r, f), v in funcs.most_common(20)]
    return {"busy_seconds": {r: v / rate for r, v in busy.items()}, "categories": rows, "top_frames": top}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["partition", "join", "update"], default="partition")
    ap.add_argument("--shape", choices=list(bench.SHAPE_DAYS), default="daily")
    ap.add_argument("--rows", type=int, default=bench.env_default("BENCH_ROWS", bench.DEFAULT_ROWS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=50, help="samples per second per thread (50)")
    ap.add_argument("--code", choices=["head", "worktree"], default=bench.env_default("BENCH_CODE", "head"),
                    help="profile the committed HEAD or the working tree (copied first, as make bench does)")
    a = ap.parse_args(argv)

    spy_python, pins = bench.peer_python("tools", False)
    spy = spy_python.parent / "py-spy"
    code = bench.code_snapshot(a.code, bench.DATA / "profile-code")
    meta = bench.input_file(a.shape, a.rows, code)
    src = bench.REPO / meta["path"]
    d = src.parent
    wh = bench.DATA / f"profile-warehouse-{a.stage}-{a.shape}"
    shutil.rmtree(wh, ignore_errors=True)
    base = [*code["cmd"], "--warehouse", str(wh), "--workers", str(a.workers)]
    steps = {"partition": [*base, "partition", str(src), bench.TABLE],
             "join": [*base, "join", str(d / "campaigns.csv.gz"), bench.TABLE, "FACT_JOINED"],
             "update": [*base, "update", str(d / "campaigns_updated.csv.gz"), "FACT_JOINED", "FACT_JOINED"]}
    order = list(steps)
    for stage in order[:order.index(a.stage)]:  # also compiles the copy's bytecode, as a first run would
        bench.say(f"setup: impressions {stage} ...")
        subprocess.run(steps[stage], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=code["env"])
    if a.stage == "partition":  # a throw-away load first, so bytecode is cached as for an installed package
        subprocess.run([*base[:2], "--warehouse", str(wh) + "-warmup", "--workers", str(a.workers), "partition",
                        str(src), bench.TABLE], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=code["env"])
        shutil.rmtree(str(wh) + "-warmup", ignore_errors=True)
    logs = bench.DATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    raw = logs / f"profile-{a.stage}-{a.shape}-{a.rows}.txt"
    bench.say(f"profiling impressions {a.stage} ({a.shape}, {a.rows:,} rows, {a.workers} workers) ...")
    t0 = dt.datetime.now()
    subprocess.run([str(spy), "record", "--subprocesses", "--nonblocking", "-r", str(a.rate), "-f", "raw",
                    "-o", str(raw), "--", *steps[a.stage]], check=True, stdout=subprocess.DEVNULL,
                   stderr=open(raw.with_suffix(".err"), "w"), env=code["env"])
    wall = (dt.datetime.now() - t0).total_seconds()
    shutil.rmtree(wh, ignore_errors=True)
    result = {"harness": "bench/profile.py", "when": t0.astimezone().isoformat(timespec="seconds"),
              "code": {k: v for k, v in code.items() if k not in ("cmd", "env")}, "stage": a.stage,
              "shape": a.shape, "rows": a.rows, "workers": a.workers,
              "rate": a.rate, "wall_under_profiler": wall, "py_spy": pins.get("py-spy"),
              "machine": bench.measure.machine(), "raw": str(raw.relative_to(bench.REPO)), **aggregate(raw, a.rate)}
    out = bench.RESULTS / f"profile-{a.stage}-{a.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    write_markdown()
    for r in result["categories"]:
        share = f"{r['share_of_process'] * 100:5.1f} %" if r["share_of_process"] is not None else "      "
        print(f"{r['process']:7s} {r['category']:45s} {r['seconds']:7.1f} s {share}")
    bench.say(f"wrote {out.relative_to(bench.REPO)} and bench/PROFILE.md")
    return 0


def _seconds(v) -> str:
    return "unknown (the run did not finish under the profiler)" if v is None else f"{v:.0f} s"


def write_markdown() -> None:
    parts = ["# Where impressions' time goes (py-spy)", "",
             "Written by `bench/profile.py` (one profiled run per stage and shape; newest kept). Seconds are "
             "sampled thread-seconds of non-waiting threads in each kind of process; shares are of that process "
             "kind's busy time. The profiler slows the run down: compare shares, not seconds, with RESULTS.md.", ""]
    for path in sorted(bench.RESULTS.glob("profile-*.json")):
        p = json.loads(path.read_text())
        parts += [f"## {p['stage']}, {p['shape']} file, {p['rows']:,} rows, {p['workers']} workers "
                  f"({p['when'][:16].replace('T', ' ')}, code `{p['code']['label']}`, wall under the profiler "
                  f"{_seconds(p.get('wall_under_profiler'))}, load average at start {p['machine']['loadavg_at_start'][0]:.1f})",
                  "", "| process | what | thread-s | share |", "|---|---|---|---|"]
        for r in p["categories"]:
            if r["share_of_process"] is not None and r["share_of_process"] >= 0.005:
                parts.append(f"| {r['process']} | {r['category']} | {r['seconds']:.1f} | "
                             f"{r['share_of_process'] * 100:.1f} % |")
        parts += ["", "Hottest innermost frames: " + "; ".join(
            f"{t['process']} `{t['frame']}` {t['seconds']:.1f} s" for t in p["top_frames"][:8]), ""]
    (bench.BENCH / "PROFILE.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
