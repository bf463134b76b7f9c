"""`stats TABLE`: rows, rows per data file, and viewing_percentage moments, tree-reduced across workers.

Stored per-file statistics are used where our loads wrote them; files without them (written by another engine)
and, with --recount, every file are read by tasks on the cluster. Moments merge with Chan's formula, so any
tree shape gives the same answer.
"""
from __future__ import annotations

import pyarrow.parquet as pq
from distributed import Client

from ..report import stats
from ..table.commit import load_file_stats
from ..errors import LoadError
from ..report.loads import say
from ..table.catalog import load_table, open_catalog, qualified, table_name
from ..table.write import WriteTarget


def file_moments(target: WriteTarget, path: str) -> tuple[int, stats.Moments]:
    """Read one data file's viewing_percentage column: (rows, moments)."""
    with target.io().new_input(path).open() as f:
        column = pq.read_table(f, columns=["viewing_percentage"])["viewing_percentage"]
    return len(column), stats.chunk(column)


def say_stats(r: dict) -> None:
    """The result of `table_stats` for people, on stderr."""
    say(f"{r['table']} @ snapshot {r['snapshot_id']}: {r['rows']:,} rows in {len(r['files'])} files")
    if r["rows"]:
        say(f"  viewing_percentage mean {r['vp_mean']:.12g}, std (population) {r['vp_std']:.12g}, "
            f"min {r['vp_min']}, max {r['vp_max']}")


def table_stats(client: Client, settings, table_arg: str, recount: bool = False, split_every: int = 8) -> dict:
    ident = table_name(table_arg, settings.namespace)
    table = load_table(open_catalog(settings.warehouse, settings.catalog), ident)
    snapshot = table.current_snapshot()
    tasks = list(table.scan().plan_files()) if snapshot else []
    if any(t.delete_files for t in tasks):
        raise LoadError(f"{qualified(ident)} has row-level delete files; rewrite it before computing stats")
    stored = load_file_stats(table) if not recount else {}
    files = [{"path": t.file.file_path, "rows": t.file.record_count} for t in tasks]

    target = WriteTarget.of(table)
    missing = [t.file.file_path for t in tasks if t.file.file_path not in stored]
    read = {}
    if missing:
        target_f = client.scatter(target, broadcast=True, hash=False)  # once per worker, not once per file
        futures = client.map(file_moments, [target_f] * len(missing), missing, pure=False)
        read = dict(zip(missing, futures))
    parts = []
    for t in tasks:
        path = t.file.file_path
        if path in read:
            parts.append(client.submit(lambda rm: rm[1], read[path], pure=False))
        else:
            parts.append(stats.Moments.from_dict(stored[path]))
    moments = stats.reduce_on_cluster(client, parts, split_every=split_every) if parts else stats.Moments.empty()
    result = {"table": qualified(ident), "snapshot_id": snapshot.snapshot_id if snapshot else None,
              "rows": sum(f["rows"] for f in files), "files": files}
    summary = stats.summary(moments)
    result.update({k: summary[k] for k in ("vp_mean", "vp_std", "vp_std_sample", "vp_min", "vp_max")})
    if recount:
        counted = sum(rm[0] for rm in client.gather(list(read.values())))
        result["recount_rows"] = counted
        result["recount_matches"] = counted == result["rows"] and moments.n == counted
    return result
