"""Fault drills (issue 8): real processes killed and interrupted with real signals, judged from outside.

Every drill runs the `impressions` CLI as a process of its own (its own LocalCluster with nannies, as a user runs
it), hurts it at a chosen moment, and judges the outcome with pyiceberg's SqlCatalog, DuckDB, the exit code, the
JSON lines on stdout and stderr. A drill either ends *exact* (every row once) or *fails cleanly* (exit 1, one
line, nothing committed), always within a bound: every wait has a timeout, and a run that outlives its bound is
killed and fails the drill as hung.

1. Worker loss at every phase: a worker SIGKILLed mid-read, mid-flush (memory budget passed), during the hand-over
   of its files, mid-join and mid-update-rewrite.
2. The driver killed (the whole process group): before the commit (table unchanged, rerun exact, cleanup leaves
   only files metadata reaches) and after the commit but before the final status line (the rerun is SKIPPED).
3. Interrupted: SIGINT (a terminal's Ctrl-C: the whole foreground process group) and SIGTERM (what AWS Batch
   sends the container's PID 1: the CLI alone): one line, a FAILED "interrupted" status line and its EMF line, the
   cluster shut down (no process left), worker tracebacks silenced, exit 130 / 143, nothing committed.
4. Concurrency between processes: two loads of different sources land both, two loads of one source land it
   once, two in-place updates keep both changes.

Worker phases are found by sampling the worker threads' stacks through an observer Client connected to the CLI's
own scheduler (drills_cli.Observer); the worker in the phase SIGKILLs itself at that instant. Set-up tables are
built in this process on the session cluster (never a verdict).
"""
from __future__ import annotations

import functools
import os
import re
import select
import signal
import time

import pytest

from conftest import write_gz
from drills_cli import (Cli, Observer, campaign_counts, cli_env, dimension_csv, impression_bytes, impressions,
                        one_error_line, quiet, run, scheduler_address, succeeded)
from drills_judge import (data_files_on_disk, exact, live_data_files, names_by_campaign, snapshots_of_load, state,
                          table, unreachable_files)

pytestmark = pytest.mark.slow  # real processes killed: minutes in all, every run bounded (BOUND)

ROWS = 120_000  # ~3.6 MB of CSV: 14 read tasks of 256 KiB, 40 partitions (5 dates x 8 buckets)
BOUND = 240  # seconds any one drilled run may take before it counts as hung
NAMES = {f"campaign_{i:02d}": f"Campaign {i}" for i in range(40)}
CHANGED = {"campaign_03": "Renamed three", "campaign_17": "Renamed seventeen"}


def in_process():
    """Set-up only, never a verdict: the stages run in this process on the session cluster, to build the tables a
    drill starts from quickly."""
    from pipeline.stages.join import join
    from pipeline.stages.partition import partition

    return partition, join


@functools.lru_cache(maxsize=None)
def _lines(n: int, seed: int, first_id: int = 1) -> bytes:
    return impression_bytes(n, seed=seed, first_id=first_id)


@pytest.fixture
def source(tmp_path):
    data = _lines(ROWS, 8)
    return {"data": data, "path": write_gz(tmp_path / "impressions.csv.gz", data, members=3)}


# ------------------------------------------------------------------ 1. worker loss at every phase


def _stage_verdict(cli: Cli, stage: str, wh: str, check) -> str:
    """A stage of a drilled run ended exact (one snapshot of its table names its load; `check` judges the rows)
    or failed cleanly (one line, no snapshot names its load); returns which."""
    finals = [o for o in cli.statuses() if o["stage"] == stage and o["status"] != "RUNNING"]
    assert finals, f"the {stage} stage never ended\n{cli.tail()}"
    final = finals[-1]
    mine = snapshots_of_load(wh, final["table"], final["load_id"])
    if final["status"] == "FAILED":
        one_error_line(cli, 1)
        assert mine == 0, f"the failed {stage} committed to {final['table']}"
        return f"failed cleanly: {final.get('error')}"
    assert final["status"] == "SUCCEEDED", final
    assert mine == 1, f"{stage}: {mine} snapshots of {final['table']} name its load"
    check(final)
    return "exact"


def _rows(wh: str, name: str, final: dict, rows: int = ROWS) -> None:
    exact(table(wh, name), 1, rows)
    assert final["rows_read"] == final["rows_written"] == rows, final


def _drilled(cli: Cli, tmp_path, phases: list[tuple[str, str, str]]) -> list[dict]:
    """Kill one worker in each (stage, trigger phase, label): a stage's triggers are all armed at once when its
    RUNNING line is out (arming them one after the other raced the load: a short read phase could end before
    the last trigger reached the workers), and each phase's victim is its first worker seen in it."""
    observer = Observer(scheduler_address(cli, BOUND))
    print(f"observer connected at {time.monotonic() - cli.started:.2f} s")
    victims = []
    try:
        for stage in dict.fromkeys(stage for stage, _, _ in phases):
            mine = [(trigger, label) for s, trigger, label in phases if s == stage]
            cli.wait_status(stage, "RUNNING", BOUND)
            for trigger, label in mine:
                observer.arm(trigger, tmp_path / f"victim-{label}.json")
            print(f"{stage}: {', '.join(label for _, label in mine)} armed at {time.monotonic() - cli.started:.2f} s")
            for trigger, label in mine:
                v = observer.victim(trigger, tmp_path / f"victim-{label}.json", BOUND, cli)
                print(f"{label}: killed at {time.monotonic() - cli.started:.2f} s")
                victims.append({**v, "label": label})
    finally:
        observer.close()
    return victims


def test_workers_killed_mid_read_mid_flush_and_in_the_hand_over(tmp_path, settings):
    """A small memory budget (256 KiB): the accumulators spill to disk while the workers read. Three workers are
    SIGKILLed in one load (the nannies start fresh ones): one mid-read while it holds buffered rows, one while it
    writes files because the budget was passed, one while it hands over its files at the end of the read phase
    (the `finish-…` task). The load ends exact (every row once) or fails cleanly, within the bound."""
    wh = settings.warehouse
    rows = 4 * ROWS  # a read phase of several seconds, so the three phases come one after the other
    path = write_gz(tmp_path / "impressions.csv.gz", _lines(rows, 8), members=3)
    env = cli_env({"DASK_IMPRESSIONS__WRITE__MEMORY_BUDGET": "256 KiB"})
    with Cli(impressions(wh, "partition", path, "FACT", workers=2), env=env) as cli:
        victims = _drilled(cli, tmp_path, [("partition", "read", "read"), ("partition", "flush", "flush"),
                                           ("partition", "hand-over", "hand-over")])
        code = cli.wait(BOUND)
    for v in victims:
        print(f"{v['label']}: killed worker {v['pid']} in {v['stack'][:3]} holding {v['held_bytes']} B")
    print(f"exit {code} after {cli.seconds:.1f} s")
    assert victims[0]["held_bytes"] > 0 and "keep_within" in victims[1]["stack"]
    assert "finish_load" in victims[2]["stack"]
    verdict = _stage_verdict(cli, "partition", wh, lambda f: _rows(wh, "fact", f, rows))
    print(verdict)
    assert code == (0 if verdict == "exact" else 1)


def _joined(tmp_path, client, settings, source, update: bool) -> list[str]:
    """FACT (and JOINED for an update) built in this process; the CLI arguments of the drilled stage."""
    partition, join = in_process()
    partition(client, settings, [source["path"]], "FACT")
    dim = dimension_csv(tmp_path / "campaigns.csv", NAMES)
    if not update:
        return ["join", dim, "FACT", "JOINED"]
    join(client, settings, dim, "FACT", "JOINED")
    return ["update", dimension_csv(tmp_path / "changed.csv", CHANGED), "JOINED", "JOINED"]


@pytest.mark.parametrize("stage, workers", [
    ("join", 2),
    ("update", 2),
    ("join", 1),
], ids=["join", "update-rewrite", "join-single-worker"])
def test_a_worker_killed_mid_join_or_mid_update_rewrite(stage, workers, tmp_path, client, settings, source):
    """A worker SIGKILLed while it joins (or, in an update, rewrites) a file; its nanny starts a fresh one. The
    stage ends exact, or fails cleanly with one clear line. With one worker, the worker killed is the only one
    that held the broadcast dimension."""
    wh = settings.warehouse
    args = _joined(tmp_path, client, settings, source, update=stage == "update")
    with Cli(impressions(wh, *args, workers=workers)) as cli:
        (victim,) = _drilled(cli, tmp_path, [(stage, "join", stage)])
        code = cli.wait(BOUND)
    print(f"{stage}: killed worker {victim['pid']} in {victim['stack'][:3]}; exit {code} after {cli.seconds:.1f} s")
    names = {**NAMES, **CHANGED} if stage == "update" else NAMES
    want = {(c, names[c]): n for c, n in campaign_counts(source["data"]).items()}

    def check(final):
        t = table(wh, "joined")
        exact(t, 1, ROWS)
        assert names_by_campaign(t) == want

    verdict = _stage_verdict(cli, stage, wh, check)
    print(verdict)
    if verdict != "exact":  # a clean failure must also say what happened in words, not as Dask internals
        line = next(ln for ln in cli.err if ln.startswith("impressions: "))
        assert not re.search(r"Cancelled|cancelled for reason|KilledWorker|-[0-9a-f]{8}-[0-9a-f]{4}-", line), line


# ------------------------------------------------------------------ 2. the driver killed


def test_the_driver_killed_before_the_commit_leaves_the_table_as_it_was(tmp_path, client, settings):
    """SIGKILL to the whole process group while the load has written files but not committed them: the table is
    unchanged and readable, the rerun is exact, and `cleanup --older-than 0s --delete` leaves only the files that
    metadata reaches, with the live data intact."""
    wh = settings.warehouse
    partition, _ = in_process()
    a = write_gz(tmp_path / "a.csv.gz", impression_bytes(20_000, seed=1))
    b = write_gz(tmp_path / "b.csv.gz", impression_bytes(ROWS, seed=2, first_id=20_001))
    partition(client, settings, [a], "FACT")
    # writers that roll to a new file every few KiB: the hand-over writes files for seconds before the commit
    with table(wh, "fact").transaction() as tx:
        tx.set_properties({"write.target-file-size-bytes": "2048", "write.parquet.row-group-limit": "200"})
    before = state(wh)
    fact = table(wh, "fact")
    committed = data_files_on_disk(fact)

    with Cli(impressions(wh, "partition", b, "FACT", workers=1),
             env=cli_env({"DASK_IMPRESSIONS__WRITE__MEMORY_BUDGET": "256 KiB"})) as cli:
        cli.wait_status("partition", "RUNNING")
        cli.wait_for(lambda: len(data_files_on_disk(fact) - committed) >= 10, BOUND, "10 uncommitted data files")
        assert state(wh) == before, "the load committed before the kill: the drill needs a larger input"
        cli.descendants()
        cli.signal(signal.SIGKILL, group=True)
        assert cli.wait(30) == -signal.SIGKILL
        left = cli.left_over()
    assert not left, f"processes of the killed run still alive: {left}"

    assert state(wh) == before
    fact = table(wh, "fact")
    exact(fact, 1, 20_000)
    orphans = unreachable_files(fact)
    assert len(orphans) >= 10, orphans

    rerun = run(impressions(wh, "partition", b, "FACT", scheduler=client.scheduler.address), timeout=BOUND)
    final = succeeded(rerun)
    assert final["rows_written"] == ROWS
    exact(table(wh, "fact"), 1, 20_000 + ROWS)

    clean = run(impressions(wh, "cleanup", "FACT", "--older-than", "0s", "--delete", workers=None), timeout=120)
    assert clean.proc.returncode == 0, clean.tail()
    quiet(clean)
    report = clean.json()[-1]
    assert report["event"] == "cleanup" and report["deleted"] is True
    assert {p.removeprefix("file://") for p in report["files"]} >= set(orphans)
    fact = table(wh, "fact")
    assert unreachable_files(fact) == []
    assert live_data_files(fact) <= data_files_on_disk(fact)
    exact(fact, 1, 20_000 + ROWS)


def test_the_driver_killed_after_the_commit_before_its_status_line_is_skipped_on_rerun(tmp_path, client, settings):
    """Deterministic from outside: the CLI's stdout is a pipe this test holds both ends of. Once the RUNNING line
    is read, the test fills the pipe, so the final status line can never be written: the process blocks in that
    write, after its commit. The test waits until the table's snapshot appears in the catalog, then SIGKILLs the
    process group. The rerun must be SKIPPED, never append the rows twice."""
    wh = settings.warehouse
    src = write_gz(tmp_path / "a.csv.gz", impression_bytes(30_000, seed=3))
    r, w = os.pipe()
    try:
        with Cli(impressions(wh, "partition", src, "FACT", workers=1), stdout_fd=w) as cli:
            seen = b""
            deadline = time.monotonic() + BOUND
            while b'"RUNNING"' not in seen:
                assert time.monotonic() < deadline and cli.proc.poll() is None, (seen, cli.tail())
                if select.select([r], [], [], 0.2)[0]:
                    seen += os.read(r, 65536)
            assert b'"SUCCEEDED"' not in seen
            # filled through a second, non-blocking open file description of the same pipe: O_NONBLOCK set on
            # `w` itself would be shared with the process's stdout, whose write would then fail at once with
            # EAGAIN instead of blocking
            fill = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
            filled = 0
            try:
                while True:
                    filled += os.write(fill, b"\0" * 4096)
            except BlockingIOError:
                pass
            finally:
                os.close(fill)
            committed = cli.wait_for(lambda: state(wh).get("impressions.fact", (0,))[0] == 1, BOUND,
                                     "the fact table's snapshot")
            time.sleep(0.5)
            assert cli.proc.poll() is None, f"the process ended although it could not print\n{cli.tail()}"
            cli.signal(signal.SIGKILL, group=True)
            cli.wait(30)
            assert not cli.left_over()
        os.close(w)
        w = None
        rest = b""
        while chunk := os.read(r, 1 << 20):
            rest += chunk
    finally:
        if w is not None:
            os.close(w)
        os.close(r)
    assert committed
    after_kill = rest.lstrip(b"\0")
    assert b"SUCCEEDED" not in after_kill, "the final status line was printed: the drill did not hold the process"
    snapshot = state(wh)["impressions.fact"]
    exact(table(wh, "fact"), 1, 30_000)

    rerun = run(impressions(wh, "partition", src, "FACT", scheduler=client.scheduler.address), timeout=BOUND)
    succeeded(rerun, "SKIPPED")
    assert state(wh)["impressions.fact"] == snapshot
    exact(table(wh, "fact"), 1, 30_000)


# ------------------------------------------------------------------ 3. interrupted


@pytest.mark.parametrize("signame, group, code", [
    ("SIGINT", True, 130),    # Ctrl-C in a terminal: the whole foreground process group gets it
    ("SIGTERM", False, 143),  # AWS Batch (docker stop): SIGTERM to the container's PID 1, the CLI under tini
], ids=["sigint-to-the-group", "sigterm-to-the-process"])
def test_an_interrupted_partition_says_so_once_shuts_down_and_commits_nothing(signame, group, code, tmp_path,
                                                                               client, settings):
    wh = settings.warehouse
    partition, _ = in_process()
    partition(client, settings, [write_gz(tmp_path / "a.csv.gz", impression_bytes(5_000, seed=4))], "FACT")
    before = state(wh)
    b = write_gz(tmp_path / "b.csv.gz", impression_bytes(ROWS, seed=5, first_id=5_001))
    with Cli(impressions(wh, "partition", b, "FACT", workers=2)) as cli:
        cli.wait_stderr(r"^read: ", BOUND)  # mid-read: a read task has finished, others are running
        children = [p for p in cli.descendants() if p.pid != cli.pid]
        assert len(children) >= 2, children  # the two workers (and multiprocessing's resource tracker)
        sent = time.monotonic()
        cli.signal(getattr(signal, signame), group=group)
        got = cli.wait(120)
        seconds = time.monotonic() - sent
        left = cli.left_over()
    print(f"{signame} ({'group' if group else 'process'}): exit {got} {seconds:.1f} s after the signal")
    assert got == code, cli.tail()
    line = one_error_line(cli, code, "interrupted")
    assert signame in line, line
    out = cli.json()
    assert out[-2]["event"] == "load_status" and out[-2]["status"] == "FAILED", out[-2:]
    assert out[-2]["error"] == "interrupted", out[-2]
    assert out[-1]["event"] == "load_metrics" and out[-1]["status"] == "FAILED", out[-1]
    assert out[-1]["load_id"] == out[-2]["load_id"]
    assert not left, f"worker processes left behind: {left}"
    assert state(wh) == before
    exact(table(wh, "fact"), 1, 5_000)


# The CLI under a gc callback that, once the drill creates the trigger file, sends SIGTERM to its own process
# and runs on: Python runs the signal handler inside the callback, where its exception is printed as
# "Exception ignored in" and lost (distributed's GC diagnostics register such a callback on every driver).
SIGTERM_INSIDE_GC = """
import gc, os, signal, sys, threading
from pipeline.cli import main
def fire(phase, info):
    if phase != "start" or not os.path.exists(os.environ["TRIGGER"]):
        return
    if threading.current_thread() is not threading.main_thread():  # Python runs signal handlers on the main one
        gc.set_threshold(5)  # the driver's main thread allocates little: collect often, so that it collects soon
        return
    os.remove(os.environ["TRIGGER"])
    gc.set_threshold(*THRESHOLD)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs here, inside the callback
        pass
THRESHOLD = gc.get_threshold()
gc.callbacks.append(fire)
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigterm_swallowed_inside_a_gc_callback_still_stops_the_load_and_commits_nothing(tmp_path, client,
                                                                                          settings):
    wh = settings.warehouse
    partition, _ = in_process()
    partition(client, settings, [write_gz(tmp_path / "a.csv.gz", impression_bytes(5_000, seed=4))], "FACT")
    before = state(wh)
    b = write_gz(tmp_path / "b.csv.gz", impression_bytes(ROWS, seed=5, first_id=5_001))
    trigger = tmp_path / "trigger"
    argv = impressions(wh, "partition", b, "FACT", workers=2)
    argv[1:3] = ["-c", SIGTERM_INSIDE_GC]
    with Cli(argv, env=cli_env({"TRIGGER": str(trigger)})) as cli:
        cli.wait_stderr(r"^read: ", BOUND)
        trigger.touch()
        got = cli.wait(120)
        left = cli.left_over()
    assert not trigger.exists(), "no garbage collection ran in the driver: the drill did not fire"
    assert any("Exception ignored" in line for line in cli.err), cli.tail()  # the drill fired as meant
    # it stopped while reading (raised again at the driver's next wait), not at the commit after the last read
    assert [line for line in cli.err if re.match(r"read: \d+/\d+ tasks", line)], cli.tail()
    assert not [line for line in cli.err if re.match(r"read: (\d+)/\1 tasks", line)], cli.tail()
    assert got == 143, cli.tail()
    assert [line for line in cli.err if "impressions: interrupted (SIGTERM)" in line], cli.tail()
    out = cli.json()
    assert out[-2]["event"] == "load_status" and out[-2]["status"] == "FAILED", out[-2:]
    assert out[-2]["error"] == "interrupted", out[-2]
    assert not left, f"worker processes left behind: {left}"
    assert state(wh) == before
    exact(table(wh, "fact"), 1, 5_000)


# ------------------------------------------------------------------ 4. concurrency between processes


def _together(argvs: list[list[str]], env=None) -> list[Cli]:
    """Start the processes at once and wait for all (bounded)."""
    clis = [Cli(a, env=env) for a in argvs]
    try:
        for c in clis:
            c.wait(BOUND)
    finally:
        for c in clis:
            c.__exit__(None, None, None)
    return clis


# Two CLI processes (two drivers) at once, on one running cluster (`--scheduler`, as several jobs share a
# long-running Dask cluster): the race is between their plans and commits in the catalog, and two runs of one
# load on one cluster must not mix their workers' buffers.


def test_two_processes_loading_different_sources_into_one_table_both_land(tmp_path, client, settings):
    wh = settings.warehouse
    a = write_gz(tmp_path / "a.csv.gz", impression_bytes(30_000, seed=6))
    b = write_gz(tmp_path / "b.csv.gz", impression_bytes(30_000, seed=7, first_id=30_001))
    clis = _together([impressions(wh, "partition", p, "FACT", scheduler=client.scheduler.address) for p in (a, b)])
    for c in clis:
        succeeded(c)
    assert state(wh)["impressions.fact"][0] == 2
    exact(table(wh, "fact"), 1, 60_000)


def test_two_processes_loading_one_source_at_once_land_it_once(tmp_path, client, settings):
    wh = settings.warehouse
    a = write_gz(tmp_path / "a.csv.gz", impression_bytes(30_000, seed=6))
    clis = _together([impressions(wh, "partition", a, "FACT", scheduler=client.scheduler.address)
                      for _ in range(2)])
    outcomes = []
    for c in clis:
        if c.proc.returncode == 0:
            quiet(c)
            outcomes.append(c.final()["status"])
        else:
            one_error_line(c, 1)
            outcomes.append("FAILED")
    print(f"one source twice at once: {outcomes}, {[c.final().get('reason') for c in clis]}")
    assert sorted(outcomes) in (["SKIPPED", "SUCCEEDED"], ["FAILED", "SUCCEEDED"]), [c.tail() for c in clis]
    assert state(wh)["impressions.fact"][0] == 1
    exact(table(wh, "fact"), 1, 30_000)


def test_two_processes_updating_one_table_in_place_keep_both_changes(tmp_path, client, settings, source):
    wh = settings.warehouse
    partition, join = in_process()
    partition(client, settings, [source["path"]], "FACT")
    join(client, settings, dimension_csv(tmp_path / "campaigns.csv", NAMES), "FACT", "JOINED")
    changes = [{"campaign_01": "First race", "campaign_02": "First race too"},
               {"campaign_05": "Second race", "campaign_06": "Second race too"}]
    files = [dimension_csv(tmp_path / f"race{i}.csv", c) for i, c in enumerate(changes)]
    clis = _together([impressions(wh, "update", f, "JOINED", "JOINED", scheduler=client.scheduler.address)
                      for f in files])
    for c in clis:
        succeeded(c)
    print("re-planned:", [ln for c in clis for ln in c.err if "planning again" in ln or "conflict" in ln])
    t = table(wh, "joined")
    exact(t, 1, ROWS)
    assert state(wh)["impressions.joined"][0] == 3
    names = {**NAMES, **changes[0], **changes[1]}
    assert names_by_campaign(t) == {(c, names[c]): n for c, n in campaign_counts(source["data"]).items()}
