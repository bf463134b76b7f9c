"""bench/results/*.json and the RESULTS.md summary of one `make bench` run (bench/bench.py).

Every JSON file carries the run's header (machine, code version, peer versions, configuration, inputs), its runs
(every measured number of every run) and the medians; summary.json holds the targets, met or missed.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

GiB = 2**30
METRICS = ("wall", "cpu_user", "cpu_sys", "cpu", "maxrss_kb", "peak_rss_tree", "worker_peak_rss", "files",
           "partitions", "files_per_partition", "max_files_per_partition", "bytes", "other_cpu", "load_seconds",
           "files_written", "bytes_written", "files_rewritten", "bytes_rewritten", "bytes_total",
           "added_files_size", "removed_files_size", "affected_bytes", "affected_files", "joined_bytes",
           "changed_keys", "affected_partitions", "orphans")
PEER_ORDER = ["impressions cold", "impressions warm", "duckdb", "daft", "polars", "dask", "impressions cold 1w",
              "impressions cold 4w", "floors"]
TARGETS = {
    "vs_duckdb": 0.8, "vs_daft": 0.5, "files_4w_vs_1w": 1.25, "throughput_2w_vs_1w": 1.8,
    "worker_rss_4x_vs_1x": 1.2, "update_vs_join_wall": 0.15, "update_bytes_vs_affected": 1.1,
}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(runs: list[dict]) -> dict:
    out = {k: median([r.get(k) for r in runs]) for k in METRICS}
    out["runs"] = len(runs)
    out["disturbed"] = sum(bool(r.get("disturbed")) for r in runs)
    out["check_ok"] = all(r.get("check_ok", True) for r in runs)
    if runs and "steps" in runs[0]:
        out["steps"] = {step: {k: median([r["steps"][step][k] for r in runs]) for k in runs[0]["steps"][step]}
                        for step in runs[0]["steps"]}
    return out


def group(runs, **where):
    return [r for r in runs if all(r.get(k) == v for k, v in where.items())]


def ratio(a, b):
    return a / b if a is not None and b else None


def paired(runs_a: list[dict], runs_b: list[dict], key: str = "wall") -> list[float]:
    """Per-round ratios a/b of runs from the same round (the spread behind a ratio of medians)."""
    b_by_round = {r["round"]: r[key] for r in runs_b if r.get(key)}
    return [round(r[key] / b_by_round[r["round"]], 3) for r in runs_a if r["round"] in b_by_round and r.get(key)]


def target(name, shape, value, limit, *, at_most: bool, detail: str, pairs=None) -> dict:
    met = None if value is None else (value <= limit if at_most else value >= limit)
    if value is None:
        gap = "not measured"
    elif met:
        gap = f"met ({value:.2f} {'<=' if at_most else '>='} {limit})"
    elif at_most:
        gap = f"MISSED: {value:.2f} vs <= {limit} ({value / limit:.2f}x the limit)"
    else:
        gap = f"MISSED: {value:.2f} vs >= {limit} ({(1 - value / limit) * 100:.0f} % short)"
    return {"target": name, "shape": shape, "value": value, "limit": limit, "at_most": at_most, "met": met,
            "verdict": gap, "detail": detail, "per_round": pairs or []}


def cpu_detail(a: dict, b: dict) -> str:
    return (f"{a['wall']:.1f} s vs {b['wall']:.1f} s wall; CPU {a['cpu']:.1f} s vs {b['cpu']:.1f} s "
            f"({a['cpu'] / b['cpu']:.2f}x)")


def analyse(header: dict, runs: list[dict]) -> dict:
    shapes = header["config"]["shapes"]
    part, floors, update, memory, targets = {}, {}, {}, {}, []
    for shape in shapes:
        rs = group(runs, experiment="partition", shape=shape)
        peers = {p: medians(group(rs, peer=p)) for p in PEER_ORDER if group(rs, peer=p)}
        duck, daft, cold = (peers.get(p, {}).get("wall") for p in ("duckdb", "daft", "impressions cold"))
        for p, m in peers.items():
            m["wall_vs_duckdb"], m["wall_vs_daft"] = ratio(m["wall"], duck), ratio(m["wall"], daft)
            m["wall_vs_impressions_cold"] = ratio(m["wall"], cold)
            m["rows_per_s"] = header["inputs"][shape]["rows"] / m["wall"] if m["wall"] else None
        part[shape] = peers
        c = group(rs, peer="impressions cold")
        if "duckdb" in peers and c:
            targets.append(target("partition cold wall <= 0.8 x DuckDB", shape, ratio(cold, duck), TARGETS["vs_duckdb"],
                                  at_most=True, detail=cpu_detail(peers["impressions cold"], peers["duckdb"]),
                                  pairs=paired(c, group(rs, peer="duckdb"))))
        if "daft" in peers and c:
            targets.append(target("partition cold wall <= 0.5 x Daft", shape, ratio(cold, daft), TARGETS["vs_daft"],
                                  at_most=True, detail=cpu_detail(peers["impressions cold"], peers["daft"]),
                                  pairs=paired(c, group(rs, peer="daft"))))
        one, four = peers.get("impressions cold 1w"), peers.get("impressions cold 4w")
        if one and four:
            targets.append(target("files: 4 workers <= 1.25 x 1 worker", shape, ratio(four["files"], one["files"]),
                                  TARGETS["files_4w_vs_1w"], at_most=True,
                                  detail=f"{four['files']:,.0f} vs {one['files']:,.0f} files; per partition "
                                         f"{four['files_per_partition']:.2f} vs {one['files_per_partition']:.2f}",
                                  pairs=paired(group(rs, peer="impressions cold 4w"),
                                               group(rs, peer="impressions cold 1w"), "files")))
        if one and c:
            targets.append(target("throughput: 2 workers >= 1.8 x 1 worker (cold)", shape, ratio(one["wall"], cold),
                                  TARGETS["throughput_2w_vs_1w"], at_most=False,
                                  detail=f"1 worker {one['wall']:.1f} s, 2 workers {cold:.1f} s",
                                  pairs=paired(group(rs, peer="impressions cold 1w"), c)))
        fl = group(runs, experiment="floors", shape=shape)
        if fl:
            floors[shape] = medians(fl)
        ch = group(runs, experiment="update", shape=shape)
        if ch:
            update[shape] = {p: medians(group(ch, peer=p)) for p in
                             ("join", "update --dry-run", "update", "stats", "stats --recount") if group(ch, peer=p)}
            u, j = update[shape].get("update"), update[shape].get("join")
            if u and j:
                targets.append(target("update of 3 campaigns <= 0.15 x full join (wall)", shape,
                                      ratio(u["wall"], j["wall"]), TARGETS["update_vs_join_wall"], at_most=True,
                                      detail=f"update {u['wall']:.1f} s, join {j['wall']:.1f} s",
                                      pairs=paired(group(ch, peer="update"), group(ch, peer="join"))))
                written = u.get("added_files_size") or u.get("bytes_written")
                targets.append(target("update rewrites <= 1.1 x the affected buckets' bytes", shape,
                                      ratio(written, u["affected_bytes"]), TARGETS["update_bytes_vs_affected"],
                                      at_most=True,
                                      detail=f"{written / 1e6:,.1f} MB written for {u['affected_bytes'] / 1e6:,.1f} MB "
                                             f"in the affected buckets ({u['files_rewritten']:.0f} files replaced, "
                                             f"{u['bytes_rewritten'] / 1e6:,.1f} MB; the joined table holds "
                                             f"{u['joined_bytes'] / 1e6:,.1f} MB)"))
    big_shape = header["config"]["big_shape"]
    big = group(runs, experiment="memory", peer="impressions cold (4x input)")
    small = (group(runs, experiment="memory", peer="impressions cold (1x input)")
             or group(runs, experiment="partition", shape=big_shape, peer="impressions cold"))
    if big and small:
        memory = {"1x": medians(small), "4x": medians(big), "big_shape": big_shape,
                  "1x_rows": header["inputs"][big_shape]["rows"], "4x_rows": header["inputs"]["big"]["rows"]}
        duck4 = group(runs, experiment="memory", peer="duckdb (4x input)")
        if duck4:
            memory["duckdb_4x"] = medians(duck4)
        w1, w4 = memory["1x"]["worker_peak_rss"], memory["4x"]["worker_peak_rss"]
        factor = memory["4x_rows"] / memory["1x_rows"]
        targets.append(target("peak RSS per worker, 4x input <= 1.2 x 1x", big_shape, ratio(w4, w1),
                              TARGETS["worker_rss_4x_vs_1x"], at_most=True,
                              detail=f"{w4 / GiB:.2f} GiB vs {w1 / GiB:.2f} GiB per worker "
                                     f"({memory['4x_rows']:,} vs {memory['1x_rows']:,} rows: {factor:g}x)"
                              if w1 and w4 else "no worker process seen"))
    return {"partition": part, "floors": floors, "update": update, "memory": memory, "targets": targets}


# ------------------------------------------------------------------ writing

def write(out: Path, header: dict, runs: list[dict], failures: list[dict]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):  # one directory describes one run: drop our files of an earlier run
        try:
            if json.loads(old.read_text()).get("header", {}).get("harness") == header["harness"]:
                old.unlink()
        except (ValueError, OSError):
            pass
    a = analyse(header, runs)
    written = []

    def dump(name, body):
        path = out / f"{name}.json"
        path.write_text(json.dumps({"header": header, **body}, indent=1, default=str))
        written.append(path)

    shapes = header["config"]["shapes"]
    for shape in shapes:
        if a["partition"].get(shape):
            dump(f"partition-{shape}", {"medians": a["partition"][shape],
                                        "runs": group(runs, experiment="partition", shape=shape)})
        if shape in a["floors"]:
            dump(f"floors-{shape}", {"medians": a["floors"][shape], "runs": group(runs, experiment="floors", shape=shape)})
        if shape in a["update"]:
            dump(f"update-{shape}", {"medians": a["update"][shape], "runs": group(runs, experiment="update", shape=shape)})
    for name, prefix in (("scaling", "throughput"), ("files", "files")):
        ts = [t for t in a["targets"] if t["target"].startswith(prefix)]
        if ts:
            peers = ("impressions cold", "impressions cold 1w") if name == "scaling" else \
                ("impressions cold 1w", "impressions cold 4w")
            dump(name, {"targets": ts, "medians": {s: {p: a["partition"][s][p] for p in peers if p in a["partition"][s]}
                                                   for s in shapes if s in a["partition"]},
                        "runs": [r for r in runs if r["experiment"] == "partition" and r["peer"] in peers]})
    if a["memory"]:
        dump("memory", {"medians": a["memory"], "targets": [t for t in a["targets"] if "RSS" in t["target"]],
                        "runs": group(runs, experiment="memory") + (
                            [] if group(runs, experiment="memory", peer="impressions cold (1x input)") else
                            group(runs, experiment="partition", shape=header["config"]["big_shape"],
                                  peer="impressions cold"))})
    dump("summary", {"targets": a["targets"], "failures": failures,
                     "checks": {"runs": len(runs), "ok": sum(r.get("check_ok", True) for r in runs),
                                "max_mean_error": max((r.get("mean_error") or 0 for r in runs), default=0),
                                "max_std_error": max((r.get("std_error") or 0 for r in runs), default=0)},
                     "disturbed_runs": sum(bool(r.get("disturbed")) for r in runs)})
    md = out.parent / "RESULTS.md" if out.name == "results" and out.parent.name == "bench" else out / "RESULTS.md"
    md.write_text(markdown(header, runs, failures, a, out))
    written.append(md)
    return written


def f1(v, unit=""):
    return "—" if v is None else f"{v:,.1f}{unit}"


def f2(v, unit=""):
    return "—" if v is None else f"{v:,.2f}{unit}"


def gib(v):
    return "—" if v is None else f"{v / GiB:.2f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


LABEL = {
    "impressions cold": "**impressions**, 2 workers, cold (index pass included)",
    "impressions warm": "impressions, 2 workers, warm (index cached)",
    "duckdb": "DuckDB `COPY … PARTITION_BY (ad_date, bucket)`",
    "daft": "Daft `write_iceberg` (same Iceberg spec)",
    "polars": "Polars `scan_csv` → `sink_parquet(PartitionBy)`",
    "dask": "dask.dataframe `read_csv` → `to_parquet(partition_on)`",
    "impressions cold 1w": "impressions, 1 worker, cold",
    "impressions cold 4w": "impressions, 4 workers, cold",
}


def update_what(p: str, m: dict) -> str:
    mb = lambda v: "—" if v is None else f"{v / 1e6:,.1f}"
    n = lambda v: "—" if v is None else f"{v:,.0f}"
    if p == "join":
        return f"{mb(m['bytes_written'])} MB written, {n(m['files_written'])} files"
    if p == "update --dry-run":
        return (f"plan: {n(m['changed_keys'])} keys, {n(m['affected_partitions'])} partitions, "
                f"{n(m['files_rewritten'])} files, {mb(m['bytes_rewritten'])} of {mb(m['bytes_total'])} MB")
    if p == "update":
        return (f"{n(m['files_rewritten'])} files / {mb(m['bytes_rewritten'])} MB replaced by "
                f"{mb(m['added_files_size'])} MB; the changed campaigns' buckets hold {mb(m['affected_bytes'])} MB "
                f"in {n(m['affected_files'])} files")
    return ""


def markdown(header, runs, failures, a, out: Path) -> str:
    h, cfg, mach = header, header["config"], header["machine"]
    disturbed = sum(bool(r.get("disturbed")) for r in runs)
    lines = [f"# `make bench`: impressions against its peers, {h['started'][:16].replace('T', ' ')}", ""]
    lines += [f"Written by `bench/bench.py` ({'full default run' if cfg['full_default'] else 'reduced run: see configuration'}). "
              f"Every figure below comes from this one run: peers interleaved round by round, medians of "
              f"{cfg['rounds']} round(s); per-run numbers are in `{out.name}/*.json`.", ""]
    load0, load1 = mach["loadavg_at_start"][0], h["loadavg_at_end"][0]
    shared = load0 > 0.5 or disturbed
    if shared:
        lines += [f"**Shared machine.** The load average was {load0:.1f} when the run started and {load1:.1f} when it "
                  f"ended; {disturbed} of {len(runs)} runs were disturbed (other programs used more than 5 % of the "
                  "CPUs during the run, after the allowed repetitions; marked * below). Wall times are then less "
                  "trustworthy than CPU times; ratios between peers of the same round suffer least.", ""]
    lines += ["## Setup", "",
              f"- machine: {mach['cores']} cores ({mach['cpu_model']}), {mach['ram_gib']} GiB RAM, Linux {mach['kernel']}, "
              f"Python {mach['python']}",
              f"- code: `{h['code']['label']}` — "
              + ("the committed HEAD" if h["code"].get("mode") == "head" else
                 "the working tree at the start" + (", with uncommitted edits" if h["code"].get("uncommitted_edits")
                                                    else ""))
              + " (pipeline/ and cluster/ copied before the first run, so every run executed the same code; "
                "commit + hash of the copied sources)",
              "- impressions' libraries: " + ", ".join(f"{k} {v}" for k, v in h["project_versions"].items())]
    for name, info in sorted(h["peer_versions"].items()):
        extra = {k: v for k, v in info.items() if k not in ("engine", "version")}
        lines.append(f"- {name} {info.get('version')} (own venv, pinned in `{h['peer_pins'].get(name)}`)"
                     + (f": {', '.join(f'{k} {v}' for k, v in extra.items())}" if extra else ""))
    for key, inp in h["inputs"].items():
        lines.append(f"- input {key}: `{inp['path']}`: {inp['rows']:,} rows over {inp['days']} dates, "
                     f"{inp['csv_bytes'] / 1e9:.2f} GB of CSV, {inp['gzip_bytes'] / 1e6:,.0f} MB gzip "
                     f"(ratio {inp['csv_bytes'] / inp['gzip_bytes']:.2f}); reference mean "
                     f"{inp['reference']['mean']:.12f}, population stddev {inp['reference']['std']:.12f}")
    lines += [f"- configuration: units {', '.join(cfg['units'])}; shapes {', '.join(cfg['shapes'])}; "
              f"{cfg['rounds']} round(s); wait for idle CPUs up to {cfg['quiet_wait']:.0f} s, repeat a disturbed run "
              f"{cfg['retries']} time(s)", ""]

    lines += ["## Targets", "", f"Same machine, same file, same run, {mach['cores']} cores; ratios of medians (the ratio of each "
              "round's paired runs in the last column).", ""]
    trows = [[t["target"], t["shape"], t["verdict"], t["detail"], ", ".join(f"{x:.2f}" for x in t["per_round"]) or "—"]
             for t in a["targets"]]
    lines += [table(["target", "shape", "verdict", "medians", "per round"], trows) if trows else "(no target measured)", ""]

    for shape in cfg["shapes"]:
        peers = a["partition"].get(shape)
        if not peers:
            continue
        inp = h["inputs"][shape]
        lines += [f"## Partition, {shape} file ({inp['days']} dates, {inp['rows']:,} rows, {inp['csv_bytes'] / 1e9:.2f} GB CSV)", ""]
        rows = []
        for p, m in peers.items():
            rows.append([LABEL.get(p, p) + (f" ({m['disturbed']}*)" if m["disturbed"] else ""), f1(m["wall"]),
                         f1(m["cpu_user"]), f1(m["cpu_sys"]), gib(m["maxrss_kb"] * 1024 if m["maxrss_kb"] else None),
                         gib(m["worker_peak_rss"]), gib(m["peak_rss_tree"]), f"{m['files']:,.0f}" if m["files"] else "—",
                         f2(m["files_per_partition"]), f2(m["wall_vs_duckdb"], "×"), f2(m["wall_vs_daft"], "×"),
                         "ok" if m["check_ok"] else "**FAILED**"])
        lines += [table(["peer", "wall s", "user s", "sys s", "largest process GiB", "per worker GiB",
                         "process tree GiB", "files", "files / partition", "wall ÷ DuckDB", "wall ÷ Daft",
                         "rows, mean, σ"], rows), ""]
        if shape in a["floors"]:
            st = a["floors"][shape]["steps"]
            lines += [f"Floors on the same file (one core each, in one process; medians): "
                      + "; ".join(f"{name} {st[k]['wall']:.1f} s wall / {st[k]['cpu']:.1f} s CPU" for k, name in
                                  (("inflate", "ISA-L inflate"), ("index", "rapidgzip index pass"),
                                   ("parse", "Arrow CSV parse (1 thread)"), ("write", "one zstd Parquet file"))
                                  if k in st)
                      + f". Inflate + parse + write = {sum(st[k]['cpu'] for k in ('inflate', 'parse', 'write')):.1f} "
                        f"CPU s, i.e. {sum(st[k]['cpu'] for k in ('inflate', 'parse', 'write')) / mach['cores']:.1f} s "
                        f"of wall on {mach['cores']} cores if perfectly parallel.", ""]
            if "imports" in st:
                lines += [f"Start-up of one impressions process (Python + `import distributed, pipeline.cli, "
                          f"pipeline.stages.*`), paid by the driver and once by the fork server its workers are forked from "
                          f"(`worker-start: forkserver`; by every worker with `spawn`): {st['imports']['wall']:.1f} s "
                          f"wall, {st['imports']['cpu']:.1f} CPU s.", ""]
            cold = peers.get("impressions cold")
            if cold:
                floor_cpu = sum(st[k]["cpu"] for k in ("inflate", "parse", "write"))
                lines += [f"impressions cold spent {cold['cpu']:.1f} CPU s ({cold['cpu_sys']:.1f} of it system), "
                          f"{cold['cpu'] / floor_cpu:.1f}× the inflate + parse + write floor.", ""]

    if any(t["target"].startswith(("throughput", "files")) for t in a["targets"]):
        lines += ["## Scaling and file counts (impressions, cold)", ""]
        rows = []
        for shape in cfg["shapes"]:
            for p in ("impressions cold 1w", "impressions cold", "impressions cold 4w"):
                m = a["partition"].get(shape, {}).get(p)
                if m:
                    rows.append([shape, LABEL.get(p, p), f1(m["wall"]), f"{m['rows_per_s'] / 1e6:.2f}",
                                 f1(m["cpu"]), gib(m["worker_peak_rss"]), f"{m['files']:,.0f}",
                                 f"{m['partitions']:,.0f}", f2(m["files_per_partition"]),
                                 f"{m['max_files_per_partition']:.0f}"])
        lines += [table(["shape", "run", "wall s", "M rows/s", "CPU s", "per worker GiB", "files", "partitions",
                         "files / partition", "max files in a partition"], rows), ""]

    if a["memory"]:
        m1, m4 = a["memory"]["1x"], a["memory"]["4x"]
        factor = a["memory"]["4x_rows"] / a["memory"]["1x_rows"]
        lines += [f"## Memory: 1× vs {factor:g}× the input (impressions cold, 2 workers)", "",
                  table(["input", "rows", "wall s", "per worker GiB", "largest process GiB", "process tree GiB", "files"],
                        [[k, f"{a['memory'][k + '_rows']:,}", f1(m['wall']), gib(m['worker_peak_rss']),
                          gib(m['maxrss_kb'] * 1024 if m['maxrss_kb'] else None), gib(m['peak_rss_tree']),
                          f"{m['files']:,.0f}"] for k, m in (("1x", m1), ("4x", m4))]).replace("| 4x |", f"| {factor:g}x |"),
                  ""]
        duck4 = a["memory"].get("duckdb_4x")
        duck1 = a["partition"].get(a["memory"]["big_shape"], {}).get("duckdb")
        if duck4:
            at1 = f"; on the 1× file {m1['wall'] / duck1['wall']:.2f}×" if duck1 else ""
            lines += [f"DuckDB on the {factor:g}× file: {f1(duck4['wall'])} s wall, {f1(duck4['cpu'])} CPU s — "
                      f"impressions cold ÷ DuckDB = {m4['wall'] / duck4['wall']:.2f}×{at1} (fixed start-up costs "
                      "weigh less on a larger file).", ""]
    elif "memory" not in cfg["units"]:
        lines += ["The 4× memory case was not part of this run (unit `memory`; `make bench-quick` leaves it out).", ""]

    if a["update"]:
        lines += ["## Update of 3 campaigns (+1 new) vs the full join, and stats", ""]
        rows = []
        for shape, steps in a["update"].items():
            for p, m in steps.items():
                what = update_what(p, m)
                rows.append([shape, f"`{p}`", f1(m["wall"]), f1(m["cpu"]), f1(m["load_seconds"]),
                             f2(ratio(m["wall"], steps["join"]["wall"]) if "join" in steps else None, "×"), what,
                             "ok" if m["check_ok"] else "**FAILED**"])
        lines += [table(["shape", "command", "wall s", "CPU s", "impressions' own s", "wall ÷ join", "what",
                         "rows, mean, σ"], rows), ""]

    checks = [r for r in runs if "check_ok" in r]
    bad = [r for r in checks if not r["check_ok"]]
    lines += ["## Correctness", "",
              f"Every run's output was read back independently (bench/check.py: pyarrow + pyiceberg, Chan-merged "
              f"numpy moments): {len(checks) - len(bad)} of {len(checks)} runs wrote the input's row count and its "
              f"viewing_percentage mean and population stddev within 1e-9 (largest deviations: mean "
              f"{max((r.get('mean_error') or 0 for r in checks), default=0):.1e}, stddev "
              f"{max((r.get('std_error') or 0 for r in checks), default=0):.1e})."]
    for r in bad:
        lines.append(f"- **{r['experiment']} {r['shape']} {r['peer']} round {r['round']}: {r.get('check_error')}**")
    for f in failures:
        lines.append(f"- **FAILED run: {f['experiment']} {f['shape']} {f['peer']} round {f['round']}**: "
                     f"`{f['error'].strip().splitlines()[0][:300]}`")
    lines += ["", "## How it was measured", "",
              "- Each run is a fresh process under a wrapper that reports wall time and `getrusage(RUSAGE_CHILDREN)` "
              "(user and system CPU of every reaped descendant; largest process = ru_maxrss). The harness samples "
              "/proc every 0.2 s: the summed RSS of the process tree (peak) and each process's VmHWM; *per worker* = "
              "the largest VmHWM among multiprocessing children (impressions' Dask workers).",
              "- impressions: `impressions --warehouse DIR --workers N partition FILE FACT_PARTITIONED` (LocalCluster, "
              "1 thread per worker). Cold = fresh warehouse (the gzip index pass runs); warm = the index cached in "
              "`DIR/_cache/gzindex/`, catalog and tables deleted between runs.",
              "- DuckDB buckets with its own `hash(campaign_id) % 64` (no Murmur3 in DuckDB); Daft, Polars and Dask "
              "use Iceberg's Murmur3 `bucket[64]` (Daft natively, Polars and Dask via mmh3 once per distinct "
              "campaign). Every engine writes zstd Parquet. Dask cannot split a gzip file: one partition, one core.",
              "- Inputs are read once before the first run so every engine finds them in the page cache; outputs are "
              "deleted and `sync`ed outside the timed part.",
              "- other programs' CPU = the machine's busy CPU during the run (/proc/stat) minus the run's and the "
              "harness's own; a run is *disturbed* (\\*) when it exceeds 5 % of the machine's CPU.", ""]

    lines += ["## Every run", ""]
    rows = []
    for r in runs:
        rows.append([r["experiment"], r["shape"], r["peer"], f"{r['round']}{' *' if r.get('disturbed') else ''}",
                     f1(r["wall"]), f1(r["cpu_user"]), f1(r["cpu_sys"]), gib(r["maxrss_kb"] * 1024),
                     gib(r.get("worker_peak_rss")), gib(r["peak_rss_tree"]),
                     f"{r['rows']:,}" if r.get("rows") is not None else "—",
                     f"{r['files']:,}" if r.get("files") is not None else "—", f1(r["other_cpu"]),
                     r.get("code", "—")])
    lines += [table(["experiment", "shape", "peer", "round", "wall s", "user s", "sys s", "largest GiB",
                     "per worker GiB", "tree GiB", "rows", "files", "others' CPU s", "code"], rows), ""]
    lines += ["## Reproduce", "", "```", "make bench                # this run (BENCH_ROWS, BENCH_ROUNDS, BENCH_ONLY, "
              "BENCH_SHAPES, ... : bench/bench.py --help)", "make bench-quick          # smoke test, results in "
              "bench/results/quick/", "```", ""]
    return "\n".join(lines)
