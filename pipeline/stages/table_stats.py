"""`stats TABLE`: rows, rows per data file, and viewing_percentage moments, merged with Chan's formula.

The table's lineage (table/lineage.py) holds each source's moments: when a source's rows are all still in its own
files (their record counts add up), those moments are used as they are and nothing is read. Files that do not
add up — rewritten or written by another engine — are read by tasks on the cluster, many files per task: the
footer our writer left when there is one, the viewing_percentage column otherwise. `--recount` reads every file's
data. Moments merge with Chan's formula, so any tree shape gives the same answer within 1e-12.
"""
from __future__ import annotations

from dataclasses import dataclass

from distributed import Client

from ..errors import LoadError
from ..report import stats
from ..report.loads import say
from ..table.catalog import load_table, open_catalog, qualified, table_name
from ..table.files import audit_files, files_moments
from ..table.lineage import fingerprint_of, lineage
from ..table.write import WriteTarget
from .tasks import map_shared

FILES_PER_TASK = 64


def summary(r: dict) -> dict:
    """The stats object without its per-file list (what `run` and `demo` print; `stats --json` has it all)."""
    return {**{k: v for k, v in r.items() if k != "files"}, "files": len(r["files"]),
            "bytes": sum(f.get("bytes", 0) for f in r["files"])}


def say_stats(r: dict) -> None:
    """The result of `table_stats` for people, on stderr."""
    say(f"{r['table']} @ snapshot {r['snapshot_id']}: {r['rows']:,} rows in {len(r['files'])} files")
    if r["rows"]:
        say(f"  viewing_percentage mean {r['vp_mean']:.12g}, std (population) {r['vp_std']:.12g}, "
            f"min {r['vp_min']}, max {r['vp_max']}")


@dataclass
class StatsPlan:
    """What `stats` knows without reading (from the lineage) and which files it must read."""

    table: object
    ident: tuple
    files: list
    known: list
    to_read: list
    recount: bool


def plan_stats(settings, table_arg: str, recount: bool = False) -> StatsPlan:
    ident = table_name(table_arg, settings.namespace)
    table = load_table(open_catalog(settings.warehouse, settings.catalog, create=False), ident)
    tasks = list(table.scan().plan_files()) if table.current_snapshot() else []
    if any(t.delete_files for t in tasks):
        raise LoadError(f"{qualified(ident)} has row-level delete files; rewrite it before computing stats")
    files = [{"path": t.file.file_path, "rows": t.file.record_count, "bytes": t.file.file_size_in_bytes}
             for t in tasks]
    known, to_read = _stored_moments(table.properties, files) if not recount else ([], [f["path"] for f in files])
    return StatsPlan(table, ident, files, known, to_read, recount)


def finish_stats(plan: StatsPlan, client: Client | None, split_every: int = 8) -> dict:
    """Read what must be read (on the cluster when there is one), merge, and build the `stats --json` object."""
    read = _read_on_cluster(client, plan.table, plan.to_read, plan.recount) if plan.to_read else []
    parts = plan.known + [r[2] for r in read]
    moments = stats.tree_reduce(parts, split_every) if parts else stats.Moments.empty()
    snapshot = plan.table.current_snapshot()
    result = {"table": qualified(plan.ident), "snapshot_id": snapshot.snapshot_id if snapshot else None,
              "rows": sum(f["rows"] for f in plan.files), "files": plan.files}
    summary = stats.summary(moments)
    result.update({k: summary[k] for k in ("vp_mean", "vp_std", "vp_std_sample", "vp_min", "vp_max")})
    if plan.recount:
        counted = sum(r[1] for r in read)
        manifest = {f["path"]: f["rows"] for f in plan.files}
        disagree = [{"path": p, "rows": rows, "manifest_rows": manifest[p], "metadata_rows": meta}
                    for p, rows, _, meta in read if rows != manifest[p] or (meta is not None and meta != rows)]
        result["recount_rows"] = counted
        result["files_disagreeing"] = disagree
        result["recount_matches"] = counted == result["rows"] and moments.n == counted and not disagree
    return result


def table_stats(client: Client | None, settings, table_arg: str, recount: bool = False, split_every: int = 8) -> dict:
    return finish_stats(plan_stats(settings, table_arg, recount), client, split_every)


def _stored_moments(properties: dict, files: list[dict]) -> tuple[list, list[str]]:
    """(moments taken from the lineage, paths that must be read)."""
    committed = lineage(properties)
    by_source: dict = {}
    for f in files:
        by_source.setdefault(fingerprint_of(f["path"]), []).append(f)
    known, to_read = [], []
    for fp, fs in by_source.items():
        entry = committed.get(fp) if fp else None
        if entry is not None and entry.rows == sum(f["rows"] for f in fs):
            known.append(entry.moments)
        else:
            to_read += [f["path"] for f in fs]
    return known, to_read


def _read_on_cluster(client, table, paths: list[str], audit: bool) -> list:
    """(path, rows, moments[, metadata rows]) per file, many files per task (on the cluster when there is one)."""
    target = WriteTarget.of(table)
    batches = [paths[i:i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
    fn = audit_files if audit else files_moments
    if client is None:
        return [r for b in batches for r in fn(target, b)]
    return [r for batch in map_shared(client, fn, [target], [(b,) for b in batches], "read files") for r in batch]
