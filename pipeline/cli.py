"""The `impressions` command line. stdout: JSON lines only; stderr: human text. Exit 0 / 1 load failed / 2 usage."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from . import interrupts
from .errors import Interrupted, LoadError, UsageError
from .report.loads import emit, say


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `impressions: error: ...` and exit 2 (usage goes to --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("--warehouse", default=d, help="local directory or s3:// prefix (default ./warehouse)")
    p.add_argument("--catalog", default=d, help="SQLAlchemy URI or 'glue' (default sqlite in the warehouse)")
    p.add_argument("--scheduler", default=d, help="address of a running Dask scheduler (DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--workers", type=int, default=d, help="LocalCluster worker processes (default 2)")
    p.add_argument("--cloudwatch", action="store_true", default=d,
                   help="also send status lines to CloudWatch Logs and final figures to CloudWatch metrics")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="impressions", description=__doc__)
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    g = sub.add_parser("generate", parents=[common], help="write synthetic impressions and dimension files")
    g.add_argument("outdir", help="directory for impressions.csv.gz, campaigns.csv.gz, campaigns_updated.csv.gz")
    g.add_argument("--rows", type=int, default=1_000_000, help="impressions to write (default 1000000)")
    g.add_argument("--days", type=int, default=30, help="distinct dates, from 01/01/2019 (default 30)")
    g.add_argument("--campaigns", type=int, default=50, help="campaigns in the dimension (default 50)")
    g.add_argument("--changed", type=int, default=3, help="campaigns changed in the updated dimension (default 3)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")

    p = sub.add_parser("partition", parents=[common], help="load gzip CSV sources into a partitioned table")
    p.add_argument("paths", nargs="+", metavar="SOURCE... TABLE")
    p.add_argument("--buckets", type=int, default=None, help="bucket count for a new table (default 64)")
    p.add_argument("--replace", action="store_true", help="replace the rows of sources loaded before")
    p.add_argument("--append", action="store_true",
                   help="load a file whose path was loaded before with other content as another source")
    p.add_argument("--allow-empty", action="store_true",
                   help="load a 0-byte source as a source without rows (default: refused, a failed upload)")

    ix = sub.add_parser("index", parents=[common],
                        help="build the gzip index of sources now (as they land), so partition reads them warm")
    ix.add_argument("paths", nargs="+", metavar="SOURCE")

    s = sub.add_parser("stats", parents=[common], help="rows, rows per file, viewing_percentage mean/std")
    s.add_argument("table")
    s.add_argument("--json", action="store_true", help="print the result as the last stdout line")
    s.add_argument("--recount", action="store_true", help="read every data file and compare with the metadata")

    j = sub.add_parser("join", parents=[common], help="broadcast-join a table with the campaign dimension")
    j.add_argument("dimension")
    j.add_argument("source_table")
    j.add_argument("table")
    j.add_argument("--full", action="store_true", help="rebuild instead of joining only new source loads")

    u = sub.add_parser("update", parents=[common], help="rewrite only the partitions of changed campaigns")
    u.add_argument("dimension")
    u.add_argument("source_table")
    u.add_argument("table", help="may equal SOURCE_TABLE (in place)")
    u.add_argument("--full-snapshot", action="store_true", help="the file is the whole dimension now")
    u.add_argument("--dry-run", action="store_true", help="print the affected partitions, write nothing")

    r = sub.add_parser("run", parents=[common], help="run the steps of a JOB.yaml in order")
    r.add_argument("job")

    d = sub.add_parser("demo", parents=[common], help="generate data and run the whole pipeline locally")
    d.add_argument("--rows", type=int, default=3_000_000, help="impressions to generate (default 3000000)")
    d.add_argument("--data", default="demo-data", help="where the generated inputs go")

    lo = sub.add_parser("loads", parents=[common], help="the load history, newest first")
    lo.add_argument("table", nargs="?", help="only the loads of this table")
    lo.add_argument("--json", action="store_true", help="print the result as the last stdout line")
    lo.add_argument("--limit", type=int, default=50, help="at most this many loads (default 50)")

    db = sub.add_parser("dashboard", parents=[common], help="write the HTML dashboard (or publish the CloudWatch one)")
    db.add_argument("--out", default=None,
                    help="the HTML file to write (default impressions-dashboard.html; with --cloudwatch only if given)")

    co = sub.add_parser("compact", parents=[common], help="rewrite the small files of each partition, one snapshot")
    co.add_argument("table")
    co.add_argument("--target-file-size", default=None, help="target data file size (default 128 MiB)")

    ex = sub.add_parser("expire", parents=[common], help="expire old snapshots (lineage and statistics kept)")
    ex.add_argument("table")
    ex.add_argument("--older-than", default=None, help="expire snapshots older than this (e.g. 3d, 12h; default 3d)")
    ex.add_argument("--retain-last", type=int, default=None, help="always keep this many newest snapshots (default 1)")

    cl = sub.add_parser("cleanup", parents=[common], help="list (and with --delete remove) files no metadata reaches")
    cl.add_argument("table")
    cl.add_argument("--older-than", default=None, help="only files older than this (e.g. 3d, 12h, 0s; default 3d)")
    cl.add_argument("--delete", action="store_true", help="delete them (default: only list)")

    no = sub.add_parser("node", parents=[common], help="the command of every node of the AWS Batch multi-node job")
    no.add_argument("job", nargs="?", default=None,
                    help="JOB.yaml (local or s3://) or an s3:// job script (*.sh); default $IMPRESSIONS_JOB")

    sj = sub.add_parser("submit", parents=[common], help="submit the AWS Batch multi-node job and follow it")
    sj.add_argument("job", help="the job file (s3:// JOB.yaml or job script) every node runs")
    sj.add_argument("--job-queue", required=True)
    sj.add_argument("--job-definition", required=True)
    sj.add_argument("--nodes", type=int, default=None, help="number of nodes (default: the job definition's)")
    sj.add_argument("--dry-run", action="store_true", help="print the SubmitJob request, do not call AWS")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        with interrupts.handled():
            return _dispatch(args) or 0
    except UsageError as e:
        say(f"impressions: error: {e}")
        return 2
    except LoadError as e:
        say(f"impressions: load failed: {e}")
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        name, code = (e.args[0], e.exit_code) if isinstance(e, Interrupted) else ("SIGINT", 130)
        say(f"impressions: interrupted ({name}); nothing was committed by the interrupted step")
        return code
    except Exception as e:  # noqa: BLE001 - one readable line, never a traceback
        if os.environ.get("IMPRESSIONS_DEBUG"):
            raise
        from .storage import translate_error

        e = translate_error(e)
        hint = "" if getattr(e, "s3_translated", False) else " (set IMPRESSIONS_DEBUG=1 for a traceback)"
        say(f"impressions: failed: {type(e).__name__}: {str(e) or _origin(e)}{hint}")
        return 1


def _settings(args):
    from .config import load_settings

    return load_settings(warehouse=args.warehouse, catalog=args.catalog, scheduler=args.scheduler,
                         workers=args.workers)


def _job_settings(args, job: dict):
    """JOB.yaml may name the warehouse and catalog; CLI options win."""
    from .config import load_settings

    warehouse = args.warehouse or job.get("warehouse")
    if warehouse and not args.warehouse and "://" not in warehouse and not os.path.isabs(warehouse) \
            and "://" not in args.job:
        warehouse = os.path.join(os.path.dirname(os.path.abspath(args.job)), warehouse)
    return load_settings(warehouse=warehouse, catalog=args.catalog or job.get("catalog"),
                         scheduler=args.scheduler, workers=args.workers)


@contextlib.contextmanager
def _client(settings):
    """The Dask client for this command; an unreachable scheduler is a configuration error (exit 2)."""
    import dask.config
    from cluster import connect

    from .report import live
    from .report.loads import reporting
    from .stages import WORKER_MODULES

    with contextlib.ExitStack() as stack:
        try:
            # a typo should not take 30 s; a scheduler we start serves the live page (report/live.py)
            with dask.config.set({"distributed.comm.timeouts.connect": "10s", **live.scheduler_config()}), \
                    _workers_ignore_sigint():
                client = stack.enter_context(connect(settings.scheduler, settings.workers,
                                                     settings.threads_per_worker, preload=WORKER_MODULES))
        except OSError as e:  # TimeoutError included
            if settings.scheduler:
                raise UsageError(f"cannot reach the Dask scheduler at {settings.scheduler}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            raise
        from .stages.tasks import warm_up

        warm_up(client)
        page = live.install(client)
        if page:
            say(f"pipeline page: {page}")
        stack.enter_context(reporting(live.LiveSink(client)))
        yield client


@contextlib.contextmanager
def _reporting(args, settings, history: bool = True):
    """The sinks of a command: the durable load history (commands that load), CloudWatch with --cloudwatch."""
    from .report.loads import reporting

    with contextlib.ExitStack() as stack:
        sinks = []
        if history:
            from .report.records import RecordSink

            sinks.append(RecordSink(settings))
            stack.callback(sinks[-1].close)
        if getattr(args, "cloudwatch", None):
            from .report.cloudwatch import CloudWatchSink

            sinks.append(stack.enter_context(CloudWatchSink()))  # a bad setting is a usage error, here
        stack.enter_context(reporting(*sinks))
        yield


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Worker processes started meanwhile inherit an ignored SIGINT: a terminal's Ctrl-C goes to the whole
    foreground process group, and only the driver should act on it (and shut the cluster down, quietly)."""
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _source_table(settings, name: str) -> None:
    """The table a command reads must exist (the error names the warehouse)."""
    from .table.catalog import load_table, open_catalog, table_name

    load_table(open_catalog(settings.warehouse, settings.catalog, create=False), table_name(name, settings.namespace))


def _writable(settings) -> None:
    """A command that writes checks its warehouse and catalog before any cluster starts."""
    from .table.catalog import open_catalog

    open_catalog(settings.warehouse, settings.catalog, create=True)


LOADING = {"partition", "join", "update", "run", "demo", "compact"}  # commands whose loads go to the history
# commands that (nearly always) need workers
CLUSTER = {"partition", "index", "join", "update", "run", "demo", "compact"}


def _dispatch(args) -> int:
    if args.command == "node":
        from cluster.node import main as node_main

        return node_main(args.job, args)
    if args.command == "submit":
        from cluster.submit import main as submit_main

        return submit_main(args)
    if args.command == "generate":
        from .generate import generate

        out = generate(args.outdir, rows=args.rows, days=args.days, campaigns=args.campaigns,
                       changed=args.changed, seed=args.seed)
        emit({"event": "generated", **out})
        return 0
    job = None
    if args.command == "run":
        from .jobfile import read_job

        job = read_job(args.job)
        settings = _job_settings(args, job)
    else:
        settings = _settings(args)
    if args.command in CLUSTER and not getattr(args, "dry_run", False):
        _prepare_workers(settings)
    history = args.command in LOADING and not getattr(args, "dry_run", False)
    with _reporting(args, settings, history=history):
        return COMMANDS[args.command](args, settings, job)


def _prepare_workers(settings) -> None:
    """Before the command's own checks and imports: when it will start a LocalCluster, its fork server starts
    importing the stage modules now, beside the driver (cluster/forkserver.py). A usage error found meanwhile
    costs that server's imports, nothing else: it exits with this process."""
    from cluster.connect import prepare

    from .stages import WORKER_MODULES

    prepare(settings.scheduler, WORKER_MODULES)


def _partition(args, settings, job=None) -> int:
    if len(args.paths) < 2:
        raise UsageError("partition needs at least one SOURCE and a TABLE")
    if args.buckets is not None and args.buckets < 1:
        raise UsageError("--buckets must be at least 1")
    from .read.sources import describe_in_background, stat
    from .stages.partition import partition

    for source in args.paths[:-1]:  # a mistyped path fails at once, before a cluster starts
        stat(source)
    _writable(settings)
    described = describe_in_background(args.paths[:-1])  # hashed while the cluster starts
    with _client(settings) as client:
        partition(client, settings, described.result(), args.paths[-1], replace=args.replace,
                  buckets=args.buckets, append=args.append, allow_empty=args.allow_empty)
    return 0


def _index(args, settings, job=None) -> int:
    from .read.sources import stat
    from .stages.index import plan_index, run_index

    for source in args.paths:  # a mistyped path fails at once, before a cluster starts
        stat(source)
    plan = plan_index(settings, args.paths)
    if not plan.todo:  # nothing to index: no cluster
        run_index(None, settings, plan)
        return 0
    with _client(settings) as client:  # no catalog: the index is a cache under the warehouse
        run_index(client, settings, plan)
    return 0


def _stats(args, settings, job=None) -> int:
    from .stages.table_stats import finish_stats, plan_stats, say_stats

    plan = plan_stats(settings, args.table, recount=args.recount)
    if plan.to_read:  # files without stored figures, or --recount: read them on the cluster
        with _client(settings) as client:
            result = finish_stats(plan, client)
    else:
        result = finish_stats(plan, None)
    say_stats(result)
    if args.json:
        emit(result)
    if args.recount and not result["recount_matches"]:
        say("impressions: recount does not match the table metadata")
        return 1
    return 0


def _dimension_command(args, settings):
    """A join or update's dimension file, read and checked here, and its source table, before a cluster starts."""
    from .stages.dimension import as_dimension

    dimension = as_dimension(args.dimension, settings)
    _source_table(settings, args.source_table)
    if not getattr(args, "dry_run", False):
        _writable(settings)
    return dimension


def _join(args, settings, job=None) -> int:
    from .stages.join import join

    dimension = _dimension_command(args, settings)
    with _client(settings) as client:
        join(client, settings, dimension, args.source_table, args.table, full=args.full)
    return 0


def _update(args, settings, job=None) -> int:
    from .stages.update import update

    dimension = _dimension_command(args, settings)
    if args.dry_run:  # a plan from metadata only: no cluster
        update(None, settings, dimension, args.source_table, args.table, full_snapshot=args.full_snapshot,
               dry_run=True)
        return 0
    with _client(settings) as client:
        update(client, settings, dimension, args.source_table, args.table, full_snapshot=args.full_snapshot)
    return 0


def _run(args, settings, job) -> int:
    from .jobfile import base_dir, check_steps, run_steps
    from .stages.table_stats import say_stats, summary

    steps = check_steps(job["steps"], settings, base_dir(args.job))  # the whole job, before anything runs
    _writable(settings)
    with _client(settings) as client:
        results = run_steps(client, settings, steps)
    last = results[-1]
    if "vp_mean" in last and "snapshot_id" in last:
        say_stats(last)
        last = summary(last)  # the per-file list stays behind `stats --json`
    emit(last)
    return 0


def _maintenance(args, settings, job=None) -> int:
    from .config import byte_size, parse_duration
    from .stages import maintain

    m = settings.maintenance
    if args.command == "compact":
        size = byte_size(args.target_file_size) if args.target_file_size else m.target_file_size
        if size < 1 << 20:
            raise UsageError("--target-file-size must be at least 1 MiB")
        _source_table(settings, args.table)
        with _client(settings) as client:
            maintain.compact(client, settings, args.table, size)
        return 0
    older = parse_duration(args.older_than, "--older-than") if args.older_than else m.older_than
    if args.command == "expire":
        retain = args.retain_last if args.retain_last is not None else m.retain_last
        if retain < 1:
            raise UsageError("--retain-last must be at least 1")
        maintain.expire(settings, args.table, older, retain)
    else:
        maintain.cleanup(settings, args.table, older, args.delete)
    return 0


def _loads(args, settings, job=None) -> int:
    from .report.records import history, say_history

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    records = history(settings, args.table, args.limit)
    say_history(records)
    if args.json:
        emit({"loads": records})
    return 0


def _dashboard(args, settings, job=None) -> int:
    if args.cloudwatch:
        from .report.cloudwatch import publish_dashboard

        emit({"event": "cloudwatch_dashboard", **publish_dashboard()})
        if args.out is None:
            return 0
    from .report.dashboard import write_dashboard

    path = write_dashboard(settings, args.out or "impressions-dashboard.html")
    say(f"dashboard: {path}")
    emit({"event": "dashboard", "path": path})
    return 0


def _demo(args, settings, job=None) -> int:
    from .demo import demo

    return demo(settings, rows=args.rows, data_dir=args.data)


COMMANDS = {"partition": _partition, "index": _index, "stats": _stats, "join": _join, "update": _update, "run": _run,
            "compact": _maintenance, "expire": _maintenance, "cleanup": _maintenance, "loads": _loads,
            "dashboard": _dashboard, "demo": _demo}


def _origin(e: BaseException) -> str:
    """Where an error without a message was raised (a bare `assert` in a library says nothing else)."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "(no message)"
    last = frames[-1]
    parts = last.filename.replace(os.sep, "/").split("/")
    return f"(no message; raised at {'/'.join(parts[-2:])}:{last.lineno} in {last.name})"


if __name__ == "__main__":
    sys.exit(main())
