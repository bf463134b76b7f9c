"""The JOB the main node runs: a JOB.yaml through `impressions run`, or a job script fetched and run.

Either way the JOB is a child process with DASK_SCHEDULER_ADDRESS set, so its Python (driver planning,
commits) never competes for the GIL with the scheduler's event loop, and its exit status is the job's.
The command lines and environments are pure functions; `run` is the only part that starts a process.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Mapping

from pipeline.errors import UsageError
from pipeline.report.loads import say

JOB_VARIABLE = "IMPRESSIONS_JOB"
ARGS_VARIABLE = "IMPRESSIONS_JOB_ARGS"
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL when a JOB must stop


@dataclass(frozen=True)
class Job:
    url: str                    # local path or s3:// URL
    kind: str                   # "yaml" (a JOB.yaml) or "script" (a job script, fetch-and-run style)
    args: tuple[str, ...] = ()  # a job script's arguments


@dataclass(frozen=True)
class JobOptions:
    """The global CLI options of `impressions node`, handed on to the JOB."""
    warehouse: str | None = None
    catalog: str | None = None
    cloudwatch: bool = False


def parse_job(url: str | None, environ: Mapping[str, str]) -> Job:
    """JOB from the argument or $IMPRESSIONS_JOB; its kind from its name; script arguments from
    $IMPRESSIONS_JOB_ARGS (shell words), as fetch-and-run hands the container's extra arguments on."""
    url = url or environ.get(JOB_VARIABLE) or None
    if not url:
        raise UsageError(f"no JOB: give `impressions node JOB` or set {JOB_VARIABLE} (a JOB.yaml or an s3://…/*.sh)")
    name = url.split("?", 1)[0].lower()
    if name.endswith((".yaml", ".yml")):
        kind = "yaml"
    elif name.endswith(".sh"):
        kind = "script"
    else:
        raise UsageError(f"JOB must be a JOB.yaml (.yaml/.yml) or a job script (.sh), got {url}")
    try:
        args = tuple(shlex.split(environ.get(ARGS_VARIABLE, "")))
    except ValueError as e:
        raise UsageError(f"{ARGS_VARIABLE} is not valid shell words: {e}") from None
    if args and kind == "yaml":
        raise UsageError(f"{ARGS_VARIABLE} is for job scripts; a JOB.yaml takes no arguments")
    return Job(url=url, kind=kind, args=args)


def global_options(options: JobOptions) -> list[str]:
    out = []
    if options.warehouse:
        out += ["--warehouse", options.warehouse]
    if options.catalog:
        out += ["--catalog", options.catalog]
    if options.cloudwatch:
        out.append("--cloudwatch")
    return out


def yaml_command(job: Job, scheduler: str, options: JobOptions) -> list[str]:
    """`impressions run JOB.yaml` on the node's scheduler, with the same Python as this process."""
    return [sys.executable, "-m", "pipeline", "--scheduler", scheduler, *global_options(options), "run", job.url]


def script_command(path: str, args: tuple[str, ...], first_line: bytes) -> list[str]:
    """A script with a #! line runs as itself (fetch-and-run); one without runs under /bin/sh."""
    return [path, *args] if first_line.startswith(b"#!") else ["/bin/sh", path, *args]


def job_environment(base: Mapping[str, str], job: Job, scheduler: str, options: JobOptions) -> dict[str, str]:
    """The JOB's environment: the scheduler's address, the job itself, the node's warehouse and catalog, and
    this interpreter's bin directory first on PATH, so a script's `impressions` is this installation's."""
    env = dict(base)
    env["DASK_SCHEDULER_ADDRESS"] = scheduler
    env[JOB_VARIABLE] = job.url
    if options.warehouse:
        env["DASK_IMPRESSIONS__WAREHOUSE"] = options.warehouse
    if options.catalog:
        env["DASK_IMPRESSIONS__CATALOG"] = options.catalog
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]])
    return env


def check_yaml(job: Job) -> None:
    """Read the JOB.yaml once before any worker is waited for: a missing or broken file is exit 2 at once."""
    from pipeline.jobfile import read_job

    read_job(job.url)


def fetch_script(job: Job, directory: str) -> str:
    """Copy the job script to a private local file (fetch-and-run); a missing script is a UsageError."""
    from pipeline.storage import filesystem

    fs, path = filesystem(job.url)
    try:
        with fs.open(path, "rb") as f:
            body = f.read()
    except FileNotFoundError:
        raise UsageError(f"job script not found: {job.url}") from None
    local = os.path.join(directory, os.path.basename(path) or "job.sh")
    with open(local, "wb") as f:
        f.write(body)
    os.chmod(local, 0o700)
    return local


class PreparedJob:
    """A JOB checked (and a script fetched) before the cluster waits for anyone; `run` starts it."""

    def __init__(self, job: Job, options: JobOptions):
        self.job, self.options = job, options
        self._tmp = tempfile.TemporaryDirectory(prefix="impressions-job-")
        self._script: str | None = None
        if job.kind == "yaml":
            check_yaml(job)
        else:
            self._script = fetch_script(job, self._tmp.name)

    def command(self, scheduler: str) -> list[str]:
        if self._script is None:
            return yaml_command(self.job, scheduler, self.options)
        with open(self._script, "rb") as f:
            first = f.readline()
        return script_command(self._script, self.job.args, first)

    def run(self, scheduler: str, timeout: float | None) -> int:
        cmd = self.command(scheduler)
        env = job_environment(os.environ, self.job, scheduler, self.options)
        say(f"impressions node: running {self.job.url}" + (f" {shlex.join(self.job.args)}" if self.job.args else ""))
        return run(cmd, env, timeout)  # in the node's working directory, as a JOB.yaml runs

    def close(self) -> None:
        self._tmp.cleanup()


def orphan_guard() -> list[str]:
    """A prefix that kills the JOB if this node process dies first (SIGKILL, OOM): util-linux's setpriv sets
    the parent-death signal without a preexec_fn (unsafe with the scheduler's threads running)."""
    return ["setpriv", "--pdeathsig", "KILL", "--"] if sys.platform == "linux" and shutil.which("setpriv") else []


def run(cmd: list[str], env: dict[str, str], timeout: float | None, cwd: str | None = None) -> int:
    """Run the JOB to its end in its own process group; SIGTERM/SIGINT to this process (Batch's stop) are passed
    on to the whole group, so a job script's own children stop too, and nothing of the JOB outlives it."""
    proc = subprocess.Popen([*orphan_guard(), *cmd], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    previous = {s: signal.signal(s, lambda signum, _frame: _signal_group(proc.pid, signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        say(f"impressions node: the JOB ran longer than node.job-timeout ({timeout:.0f}s); stopping it")
        code = 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop(proc)
    return exit_status(code)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to what is left of the JOB's process group, SIGKILL after STOP_GRACE seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE)


def exit_status(returncode: int) -> int:
    """A process killed by signal N reads as 128 + N, as a shell (and Batch's container exit code) shows it."""
    return 128 - returncode if returncode < 0 else returncode
