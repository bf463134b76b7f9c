"""`impressions index SOURCE...`: build the gzip seek-point index of sources now, as they land, so that a later
`partition` of them reads every range in parallel from its first second (a *warm* load).

Without it the first `partition` of a big gzip file is *cold*: one task inflates the whole stream to find seek
points (about 43 GB of inflate for a 12 GB gzip, on one core) while the rest of the cluster has only the file's
head to read. The index built here is the very one `partition` builds and caches (read/gzindex.py): under the
same warehouse, keyed by the source's content, so a `partition` with the same `--warehouse` finds it, and a
file replaced by other bytes is indexed again. One task per file, so several files are indexed at once.

Nothing is committed and no table is touched: an index is a cache. A file that cannot be indexed (a truncated or
corrupt gzip) gets a FAILED line and the command exits 1, after the other files were indexed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from distributed import Client

from ..config import Settings
from ..errors import LoadError
from ..read.gzindex import build_index, cache_url
from ..read.ranges import read_mode
from ..read.sources import describe_all, is_gzip, refuse_duplicates
from ..report.loads import emit, say
from ..report.progress import Progress
from ..storage import filesystem
from .tasks import as_finished

EVENT = "gzip_index"


@dataclass
class IndexPlan:
    """Decided on the driver, before any cluster starts: one line per source, and the sources to index."""

    lines: dict = field(default_factory=dict)  # url -> its line so far
    todo: list = field(default_factory=list)  # sources whose index a task builds (or checks in the cache)


def plan_index(settings: Settings, urls: list[str]) -> IndexPlan:
    sources = describe_all(urls)
    refuse_duplicates(sources)
    rs, plan = settings.read, IndexPlan()
    for s in sources:
        line = {"event": EVENT, "source": s.url, "fingerprint": s.fingerprint, "size": s.size}
        mode = read_mode(s.size, is_gzip(s), rs.small_file)
        if mode == "plain":
            line.update(status="not_needed", reason="not gzip: read in ranges without an index")
        elif mode == "stream":
            line.update(status="not_needed", reason=f"smaller than read.small-file ({rs.small_file} bytes): "
                                                    "read by one task")
        else:
            fs, path = filesystem(cache_url(settings.warehouse, s))
            line["status"] = "cached" if fs.exists(path) else "built"
            plan.todo.append(s)
        plan.lines[s.url] = line
    return plan


def run_index(client: Client | None, settings: Settings, plan: IndexPlan) -> list[dict]:
    """Index the plan's sources on the cluster, one task each; one JSON line per source, in the given order:
    built, cached (already), not_needed, or FAILED (then LoadError, after every other file was indexed)."""
    rs, out = settings.read, dict(plan.lines)
    futures = {client.submit(build_index, s, settings.warehouse, rs.index_spacing, rs.index_threads,
                             key=f"gzindex-{s.fingerprint}", pure=False): s for s in plan.todo}
    if futures:
        say(f"index pass over {len(futures)} gzip file(s)...")
        started = time.monotonic()
        with Progress(len(futures), "index") as progress:
            for future in as_finished(futures):
                s = futures[future]
                try:
                    built = future.result()
                except LoadError as e:
                    out[s.url] = {**out[s.url], "status": "FAILED", "error": str(e)}
                else:
                    out[s.url] = {**out[s.url], "points": len(built.points),
                                  "uncompressed_size": built.uncompressed_size, "index": built.cache_url,
                                  "seconds": round(time.monotonic() - started, 3)}
                progress.step(out[s.url].get("uncompressed_size", 0))
    lines = list(out.values())
    for line in lines:
        emit(line)
    failed = [line for line in lines if line["status"] == "FAILED"]
    if failed:
        raise LoadError(f"{len(failed)} of {len(lines)} source(s) could not be indexed: "
                        + "; ".join(line["error"] for line in failed))
    return lines


def index(client: Client | None, settings: Settings, urls: list[str]) -> list[dict]:
    """`plan_index` then `run_index` (a job step; the CLI starts a cluster only when a file needs indexing)."""
    return run_index(client, settings, plan_index(settings, urls))
