"""The two commits of a partition load: its quarantine rows, then its facts and their lineage.

Iceberg commits one table at a time, so the load's outcome is made all-or-nothing by tying quarantine rows to
the load: the quarantine snapshot replaces whatever rows an earlier attempt of the same load left (and the
rows of sources this load replaces), and a load's quarantine rows count only once the fact table's lineage
names that load (`impressions.source.*` → `load`). A load that fails or dies between the two commits leaves
rows that nothing counts, and its rerun — the same load id — replaces them.
"""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo, In

from ..errors import LoadError
from ..report import stats
from ..report.loads import Load, say
from ..table.commit import Change, commit
from ..table.lineage import SourceEntry, entry_properties, fingerprint_of, lineage, property_key
from ..table.write import WriteTarget, write_data_files

PROP_LOAD = "impressions.load-id"
PROP_STAGE = "impressions.stage"
PROP_SOURCES = "impressions.sources"


def commit_load(table, qtable, files: list, qfiles: list, plan, load: Load) -> str:
    """Commit quarantine, then facts. Returns "committed", or "concurrent" when another load committed the same
    sources first (nothing of ours is visible then)."""
    _commit_quarantine(qtable, qfiles, plan, load)
    return _commit_facts(table, files, plan, load)


def _conflict(name):
    return lambda e, attempt: say(f"commit conflict on {name} ({type(e).__name__}); re-planning "
                                  f"(attempt {attempt + 2})")


def _commit_quarantine(qtable, qfiles: list, plan, load: Load) -> None:
    """One snapshot: this load's quarantine rows, replacing an earlier attempt's and the replaced sources'."""
    replaced = {}  # old load id -> paths whose rows go
    for e in plan.replaced.values():
        replaced.setdefault(e.load_id, set()).add(e.path)

    def plan_quarantine(t):
        if t.current_snapshot() is None and not qfiles:
            return None
        ours = [task.file for task in t.scan(row_filter=EqualTo("load_id", load.load_id)).plan_files()]
        old_loads = [lid for lid in replaced if lid != load.load_id]
        stale = [task.file for task in t.scan(row_filter=In("load_id", old_loads)).plan_files()] \
            if old_loads and t.current_snapshot() else []
        if not (qfiles or ours or stale):
            return None
        kept = _without_sources(t, stale, replaced)
        return Change(adds=qfiles + kept, deletes=ours + stale,
                      snapshot_properties={PROP_LOAD: load.load_id, PROP_STAGE: "quarantine"})

    commit(qtable, plan_quarantine, on_conflict=_conflict("the quarantine table"))


def _without_sources(t, files: list, replaced: dict) -> list:
    """The rows of quarantine `files` that do not belong to replaced sources, written anew (quarantine files
    are small: one per worker and load)."""
    if not files:
        return []
    target = WriteTarget.of(t)
    out = []
    for df in files:
        with t.io.new_input(df.file_path).open() as f:
            import pyarrow.parquet as pq

            rows = pq.read_table(f)
        drop = pc.is_in(rows["source"], value_set=pa.array(sorted(set().union(*replaced.values()))))
        drop = pc.and_(drop, pc.is_in(rows["load_id"], value_set=pa.array(sorted(replaced))))
        keep = rows.filter(pc.invert(drop))
        if keep.num_rows:
            lid = keep["load_id"][0].as_py()
            out += [w.data_file for w in write_data_files(target, [((lid,), "0" * 24, keep)])]
    return out


def _commit_facts(table, files: list, plan, load: Load) -> str:
    """One snapshot: the new files, the replaced sources' files deleted, the lineage entries set and removed."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    by_source = {}
    for f in files:
        by_source.setdefault(f.source, []).append(f)
    entries = []
    for s in plan.todo:
        mine = by_source.get(s.fingerprint, [])
        entries.append(SourceEntry(s.fingerprint, s.url, s.size, s.digest, load.load_id,
                                   sum(f.data_file.record_count for f in mine),
                                   stats.tree_reduce([f.moments for f in mine]), now))
    todo = {s.fingerprint for s in plan.todo}
    outcome = {"status": "committed"}

    def plan_facts(t):
        committed = lineage(t.properties)
        if any(fp in committed and fp not in plan.replaced for fp in todo):
            outcome["status"] = "concurrent"  # another load committed (some of) these sources meanwhile
            return None
        deletes = _files_of(t, set(plan.replaced)) if plan.replaced else []
        return Change(
            adds=[f.data_file for f in files], deletes=deletes,
            set_properties=entry_properties(entries),
            remove_properties=[property_key(fp) for fp in plan.replaced if fp not in todo],
            snapshot_properties={PROP_LOAD: load.load_id, PROP_STAGE: "partition",
                                 PROP_SOURCES: json.dumps([s.to_dict() for s in plan.todo])})

    commit(table, plan_facts, on_conflict=_conflict(".".join(table.name())))
    return outcome["status"]


def _files_of(t, fingerprints: set) -> list:
    """The live data files holding the rows of these sources; refuses when another engine has mixed them with
    other sources' rows (their counts no longer add up), since they could not be replaced on their own."""
    committed = lineage(t.properties)
    files = [task.file for task in t.scan().plan_files()] if t.current_snapshot() else []
    mine = [f for f in files if fingerprint_of(f.file_path) in fingerprints]
    for fp in fingerprints:
        want = committed[fp].rows if fp in committed else 0
        have = sum(f.record_count for f in mine if fingerprint_of(f.file_path) == fp)
        if have != want:
            raise LoadError(f"the rows of {committed[fp].path if fp in committed else fp} were rewritten by "
                            f"another tool into files that hold other sources too ({have:,} of {want:,} rows found "
                            "in its own files): --replace cannot separate them; nothing committed")
    return mine
