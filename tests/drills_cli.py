"""The `impressions` CLI as a real process for the fault drills: started, watched and hurt from outside.

Nothing here patches the pipeline or imports it. A drill starts the CLI in a session of its own (its own process
group, as a terminal job or a container's process tree), reads its stdout and stderr line by line as they come,
finds its LocalCluster's scheduler from the sockets the process listens on, and may connect an *observer* Client to
that scheduler: to learn the worker PIDs and, by sampling the worker threads' stacks, the phase a worker is in at
that moment. The faults are real signals delivered by the kernel. The verdicts come from outside as well: the exit
code, the JSON lines on stdout, stderr, pyiceberg's own SqlCatalog and DuckDB (drills_judge.py, outside.py).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

# Small read ranges (the same as the `settings` fixture): a file of a few MB is indexed and read by many tasks.
SMALL_READS = {
    "DASK_IMPRESSIONS__READ__RANGE_SIZE": "256 KiB",
    "DASK_IMPRESSIONS__READ__INDEX_SPACING": "64 KiB",
    "DASK_IMPRESSIONS__READ__SMALL_FILE": "16 KiB",
    "DASK_IMPRESSIONS__READ__BLOCK_SIZE": "64 KiB",
    "DASK_IMPRESSIONS__READ__MAX_LINE": "64 KiB",
    "DASK_IMPRESSIONS__BUCKETS": "8",
}
# A local run never talks to AWS; if something tried, it would hit the discard port on loopback and fail at once.
NO_AWS = "http://127.0.0.1:9"

# What stderr may carry besides the one error line: human progress. Noise is what a user should never see from a
# drill: tracebacks, log records (distributed's, asyncio's, tornado's), "never retrieved" futures, warnings.
NOISE = re.compile(
    r"Traceback \(most recent call last\)|^\s+File \"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ - "
    r"|^(distributed|asyncio|tornado|bokeh|urllib3|botocore)[.\w]* - |- (DEBUG|INFO|WARNING|ERROR|CRITICAL) - "
    r"|never retrieved|^(Warning|warning|WARNING)\b|Exception ignored in|^\w+(Error|Exception): |KeyboardInterrupt"
    r"|leaked semaphore|resource_tracker"
)
ERROR_LINE = re.compile(r"^impressions: ")


# ------------------------------------------------------------------ inputs


def impression_bytes(n: int, seed: int, first_id: int = 1, days: int = 5, campaigns: int = 40) -> bytes:
    """`n` valid header-less impression lines with ids first_id … first_id + n - 1."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(f"01/{1 + rng.randrange(days):02d}/2019,{first_id + i},campaign_{rng.randrange(campaigns):02d},"
                   f"video_{rng.randrange(7)},{rng.randrange(10001) / 10000}")
    return ("\n".join(out) + "\n").encode()


def campaign_counts(data: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in data.splitlines():
        c = line.split(b",")[2].decode()
        counts[c] = counts.get(c, 0) + 1
    return counts


def dimension_csv(path, names: dict[str, str], channel: str = "video") -> str:
    """A campaign dimension with a header: campaign_id, campaign_name, channel."""
    with open(path, "w", newline="") as f:
        f.write("campaign_id,campaign_name,channel\n")
        for cid, name in sorted(names.items()):
            f.write(f"{cid},{name},{channel}\n")
    return str(path)


# ------------------------------------------------------------------ the process


def cli_env(extra: dict | None = None, small: bool = True) -> dict:
    """The environment of a CLI run: this one without Dask overrides or debug flags, small read ranges, and S3 (if
    any) only on loopback."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DASK_") and k not in ("IMPRESSIONS_DEBUG", "AWS_PROFILE", "IMPRESSIONS_JOB")}
    env.setdefault("AWS_ENDPOINT_URL", NO_AWS)
    if small:
        env.update(SMALL_READS)
    env.update(extra or {})
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:"), env["AWS_ENDPOINT_URL"]
    return env


def impressions(warehouse: str, *args: str, workers: int | None = 2, scheduler: str | None = None,
                catalog: str | None = None) -> list[str]:
    """argv of `python -m pipeline --warehouse WH [--catalog C] (--workers N | --scheduler ADDR) ARGS`."""
    argv = [sys.executable, "-m", "pipeline", "--warehouse", str(warehouse)]
    if catalog:
        argv += ["--catalog", catalog]
    if scheduler:
        argv += ["--scheduler", scheduler]
    elif workers:
        argv += ["--workers", str(workers)]
    return argv + [str(a) for a in args]


class Cli:
    """One CLI process in its own session; stdout and stderr are read by threads, line by line, as they come.

    With `stdout_fd` the process writes stdout into that file descriptor instead (a pipe the drill controls).
    Leaving the `with` block kills whatever is left of the process group (processes this drill started).
    """

    def __init__(self, argv: list[str], env: dict | None = None, cwd=ROOT, stdout_fd: int | None = None):
        self.argv = argv
        self.started = time.monotonic()
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._seen: dict[int, psutil.Process] = {}
        self.proc = subprocess.Popen(argv, env=env if env is not None else cli_env(), cwd=cwd,
                                     stdout=stdout_fd if stdout_fd is not None else subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True)]
        if stdout_fd is None:
            self._pumps.append(threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True))
        for t in self._pumps:
            t.start()

    def _pump(self, stream, into: list) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                into.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # -------------------------------------------------------------- waiting

    def wait_for(self, check, timeout: float, what: str):
        """Wait until `check()` returns something truthy (returned); fail if the process ends first or time runs
        out (the process is killed then: a drill never hangs)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = check()
                if got:
                    return got
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._pumps):
                    raise AssertionError(f"the process ended (exit {self.proc.returncode}) before {what}\n"
                                         f"{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise AssertionError(f"no {what} within {timeout:.0f} s\n{self.tail()}")
                self._cond.wait(min(left, 0.1))

    def wait_stderr(self, pattern: str, timeout: float = 120) -> re.Match:
        rx = re.compile(pattern)
        return self.wait_for(lambda: next((m for m in map(rx.search, self.err) if m), None), timeout,
                             f"stderr line matching {pattern!r}")

    def wait_status(self, stage: str, status: str = "RUNNING", timeout: float = 120) -> dict:
        return self.wait_for(lambda: next((o for o in self._json_so_far() if o.get("event") == "load_status"
                                           and o.get("stage") == stage and o.get("status") == status), None),
                             timeout, f"{stage} {status} status line")

    def wait(self, timeout: float) -> int:
        """The exit code; a process still running after `timeout` s is killed and the drill fails (it hung)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout:.0f} s (hung)\n{self.tail()}") from None
        for t in self._pumps:
            t.join(10)
        self.seconds = time.monotonic() - self.started
        return self.proc.returncode

    # -------------------------------------------------------------- signals and the process tree

    def descendants(self) -> list[psutil.Process]:
        """The process and everything it started (remembered, so they can be checked once it is gone)."""
        try:
            root = psutil.Process(self.pid)
            for p in [root, *root.children(recursive=True)]:
                self._seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        return list(self._seen.values())

    def signal(self, sig: int, group: bool = False) -> None:
        self.descendants()
        if group:
            os.killpg(self.pid, sig)
        else:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group and every process it started that is still there."""
        procs = self.descendants()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass

    def left_over(self, timeout: float = 15) -> list[str]:
        """Processes of this run still alive after `timeout` s (zombies count as gone)."""
        procs = [p for p in self._seen.values() if p.pid != self.pid]
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        out = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                pass
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()
        self.descendants()
        for p in self._seen.values():  # only what this drill started
            try:
                p.kill()
            except psutil.Error:
                pass
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    # -------------------------------------------------------------- what it printed

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def tail(self, n: int = 3000) -> str:
        return f"argv: {' '.join(self.argv)}\nstdout:\n{self.stdout[-n:]}\nstderr:\n{self.stderr[-n:]}"

    def _json_so_far(self) -> list[dict]:
        out = []
        for line in list(self.out):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def json(self) -> list[dict]:
        """Every stdout line, each of which must be one JSON object."""
        out = []
        for line in self.out:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"a non-JSON line on stdout: {line!r}\n{self.tail()}") from None
        return out

    def statuses(self) -> list[dict]:
        return [o for o in self.json() if o.get("event") == "load_status"]

    def final(self) -> dict:
        got = [o for o in self.statuses() if o["status"] != "RUNNING"]
        assert got, f"no final status line\n{self.tail()}"
        return got[-1]


# ------------------------------------------------------------------ verdicts on what a run printed


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line) and not ERROR_LINE.match(line)]


def quiet(cli: Cli) -> None:
    """No traceback, no log record, no warning on stderr; stdout is JSON lines only."""
    assert not noise(cli.stderr), f"noise on stderr: {noise(cli.stderr)[:5]}\n{cli.tail()}"
    cli.json()


def one_error_line(cli: Cli, code: int | tuple, *needles: str) -> str:
    """The run failed with exit `code` and said so in exactly ONE line (`impressions: …`), quietly."""
    codes = code if isinstance(code, tuple) else (code,)
    assert cli.proc.returncode in codes, f"exit {cli.proc.returncode}, expected {codes}\n{cli.tail()}"
    quiet(cli)
    errors = [line for line in cli.err if ERROR_LINE.match(line)]
    assert len(errors) == 1, f"expected one error line, got {errors}\n{cli.tail()}"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), f"{needle!r} not in {errors[0]!r}"
    assert not [o for o in cli.statuses() if o["status"] == "SUCCEEDED"], cli.tail()
    return errors[0]


def succeeded(cli: Cli, status: str = "SUCCEEDED") -> dict:
    assert cli.proc.returncode == 0, f"exit {cli.proc.returncode}\n{cli.tail()}"
    quiet(cli)
    assert not [line for line in cli.err if ERROR_LINE.match(line)], cli.tail()
    final = cli.final()
    assert final["status"] == status, f"{final}\n{cli.tail()}"
    return final


def run(argv: list[str], env: dict | None = None, timeout: float = 240, cwd=ROOT) -> Cli:
    """Run to the end (bounded: a run still going after `timeout` s is killed and fails the drill)."""
    with Cli(argv, env=env, cwd=cwd) as cli:
        cli.wait(timeout)
    return cli


# ------------------------------------------------------------------ the cluster inside a CLI process


def scheduler_address(cli: Cli, timeout: float = 120) -> str:
    """The LocalCluster scheduler of a running CLI: the port its process listens on besides the dashboard's."""
    dashboard = int(cli.wait_stderr(r"Dask dashboard: https?://[^:/\s]+:(\d+)", timeout).group(1))

    def listening():
        try:
            conns = psutil.Process(cli.pid).net_connections(kind="tcp")
        except psutil.Error:
            return None
        ports = sorted({c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN} - {dashboard})
        return ports or None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for port in listening() or ():  # the scheduler and the in-process nannies: ask each what it is
            address = f"tcp://127.0.0.1:{port}"
            if _identity(address).get("type") == "Scheduler":
                return address
        if cli.proc.poll() is not None:
            raise AssertionError(f"the process ended before its scheduler was found\n{cli.tail()}")
        time.sleep(0.05)
    raise AssertionError(f"no scheduler port within {timeout} s\n{cli.tail()}")


def _identity(address: str, timeout: float = 5) -> dict:
    """What a Dask server at `address` says it is (its `identity` RPC); {} if it does not answer."""
    import asyncio

    from distributed.core import rpc

    async def ask():
        r = rpc(address)
        try:
            return await asyncio.wait_for(r.identity(), timeout)
        finally:
            await r.close_rpc()

    try:
        return asyncio.run(ask()) or {}
    except Exception:  # noqa: BLE001 - not a Dask server, or not ready yet
        return {}


def _phase_watcher(phase: str, note: str):
    """A Dask worker plugin (built here so that it is pickled by value: the workers cannot import this module)
    whose thread samples the stacks of its worker's other threads every millisecond and, when one of them is in
    `phase`, writes `note` and SIGKILLs its own process at once — the check and the kill happen in the victim, in
    the same instant, whatever its event loop is doing. A worker started later (a nanny's fresh one) gets the
    plugin too; once `note` exists every watcher of the phase stops.

    Phases (function names of the running task, read from its frames):
      read       a read task parsing its range (`read_range`, not flushing) on a worker that holds buffered rows
      flush      the accumulator spilling to disk because the memory budget was passed (`_flush` under `keep_within`)
      hand-over  the end-of-read hand-over of a worker's files (`finish_load`, the `finish-…` task)
      join       a join or update-rewrite task (`join_file`)
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    def hit(names: list, held: int) -> bool:
        if phase == "read":
            return "read_range" in names and "_flush" not in names and held > 0
        if phase == "flush":
            return "_flush" in names and "keep_within" in names
        if phase == "hand-over":
            return "finish_load" in names
        if phase == "join":
            return "join_file" in names
        raise ValueError(phase)

    def watch(worker, stop) -> None:
        import json as _json
        import os as _os
        import signal as _signal
        import sys as _sys
        import threading as _threading

        me = _threading.get_ident()
        while not stop.is_set() and not _os.path.exists(note):
            registry = getattr(worker, "_impressions_accumulators", None) or {}
            held = sum(getattr(a, "nbytes", 0) for a in list(registry.values()))
            for tid, frame in _sys._current_frames().items():
                if tid == me:
                    continue
                names = []
                while frame is not None:
                    names.append(frame.f_code.co_name)
                    frame = frame.f_back
                if not hit(names, held):
                    continue
                try:  # one victim per phase: the first worker to claim the note
                    fd = _os.open(note, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
                except FileExistsError:
                    return
                _os.write(fd, _json.dumps({"pid": _os.getpid(), "address": worker.address, "phase": phase,
                                           "stack": names[:80], "held_bytes": held,
                                           "accumulators": len(registry)}).encode())
                _os.close(fd)
                _os.kill(_os.getpid(), _signal.SIGKILL)
            stop.wait(0.001)

    class PhaseWatcher(WorkerPlugin):
        name = f"drill-{phase}-{os.path.basename(note)}"

        def setup(self, worker):
            import threading as _threading

            self.stop = _threading.Event()
            _threading.Thread(target=watch, args=(worker, self.stop), daemon=True, name=self.name).start()

        def teardown(self, worker):
            self.stop.set()

    return PhaseWatcher()


class Observer:
    """A Client connected to a running CLI's scheduler, used only to look at the workers (and for the kill)."""

    def __init__(self, address: str):
        from cluster.connect import attach

        # attach: the CLI may be cancelling futures (a lost owner's absorbs) just as this connects
        self.client = attach(address, timeout="30s", set_as_default=False)

    def run(self, function, timeout: float = 30) -> dict:
        """`Client.run` on every worker, bounded: a worker that does not answer within `timeout` s fails the drill
        instead of hanging it."""
        out: dict = {}

        def call():
            try:
                out["result"] = self.client.run(function, on_error="ignore")
            except Exception as e:  # noqa: BLE001 - a worker restarting, the cluster closing: the caller looks again
                out["result"] = {}
                out["error"] = e

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise AssertionError(f"the workers did not answer Client.run within {timeout} s")
        return out["result"]

    def pids(self) -> dict[str, int]:
        return self.run(os.getpid)

    def arm(self, phase: str, note: Path) -> None:
        """Arm every worker (and every worker started later) to SIGKILL itself the instant one of its threads is
        in `phase` (see _phase_watcher); the victim writes `note` first."""
        try:
            self.client.register_plugin(_phase_watcher(phase, str(note)))
        except OSError:  # CommClosedError: a worker killed itself while the plugin was being set up everywhere
            pass  # (the scheduler keeps the plugin for the workers started later)

    def victim(self, phase: str, note: Path, timeout: float, cli: Cli | None = None) -> dict:
        """Wait for the note of an armed phase's victim and return what it saw."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if note.exists():
                for _ in range(100):  # written and closed just before the kill
                    try:
                        return json.loads(note.read_text())
                    except ValueError:
                        time.sleep(0.01)
            if cli is not None and cli.proc.poll() is not None:
                raise AssertionError(f"the run ended before any worker was seen in phase {phase!r}\n{cli.tail()}")
            time.sleep(0.01)
        raise AssertionError(f"no worker was seen in phase {phase!r} within {timeout} s"
                             + (f"\n{cli.tail()}" if cli else ""))

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            pass
