"""`impressions run JOB.yaml`: the steps of a job file, checked whole first, then run in order on one Dask client.

Nothing runs until every step has been checked: known steps with known keys and the right types, every input
readable, every dimension file well formed (no duplicate or empty keys), every source table present or made by
an earlier step. A bad job exits 2 with one line naming the step, and nothing is committed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from . import interrupts
from .errors import LoadError, UsageError

TOP_KEYS = {"warehouse", "catalog", "steps"}
# step -> (required keys, optional keys with their types)
STEPS = {
    "partition": ({"table"}, {"sources": list, "source": str, "replace": bool, "append": bool, "buckets": int,
                              "allow_empty": bool}),
    "index": ({"sources"}, {}),
    "join": ({"dimension", "source", "table"}, {"full": bool}),
    "update": ({"dimension", "source", "table"}, {"full_snapshot": bool, "dry_run": bool}),
    "stats": ({"table"}, {"recount": bool}),
}
_STRING_KEYS = {"table", "dimension", "source"}


@dataclass
class Step:
    number: int
    name: str
    options: dict

    def __str__(self) -> str:
        return f"step {self.number} ({self.name})"


def read_job(path: str) -> dict:
    from .storage import filesystem

    fs, p = filesystem(path)
    try:
        with fs.open(p, "r") as f:
            job = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"job file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(job, dict) or not isinstance(job.get("steps"), list) or not job["steps"]:
        raise UsageError(f"job file {path} needs a non-empty 'steps' list")
    unknown = set(job) - TOP_KEYS
    if unknown:
        raise UsageError(f"job file {path}: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(TOP_KEYS))})")
    return job


def base_dir(job_path: str) -> str:
    """Where relative paths of a job file point: the file's own folder (or S3 prefix)."""
    return job_path.rsplit("/", 1)[0] if "://" in job_path else os.path.dirname(os.path.abspath(job_path))


def _resolve(path: str, base: str) -> str:
    """Relative paths in a job file are relative to that file."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in base:  # a job file on S3: keep the scheme's double slash
        return f"{base.rstrip('/')}/{path}"
    return os.path.normpath(os.path.join(base, path))


def check_steps(steps: list, settings, base: str) -> list[Step]:
    """Every step checked before any runs (see the module docstring); paths resolved, dimensions read."""
    from .read.sources import refuse_empty, stat
    from .stages.dimension import as_dimension
    from .table.catalog import table_name

    checked = []
    for i, raw in enumerate(steps, 1):
        if not isinstance(raw, dict) or len(raw) != 1:
            raise UsageError(f"step {i}: each step is one mapping like {{partition: {{...}}}}, got {raw!r}")
        (name, body), = raw.items()
        if name not in STEPS:
            raise UsageError(f"step {i}: unknown step {name!r}; steps are {', '.join(STEPS)}")
        step = Step(i, name, dict(body) if isinstance(body, dict) else {})
        if not isinstance(body, dict):
            raise UsageError(f"{step} needs a mapping of options")
        required, optional = STEPS[name]
        options = {k.replace("-", "_"): v for k, v in body.items()}
        unknown = set(options) - required - set(optional)
        if unknown:
            raise UsageError(f"{step}: unknown key(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(required | set(optional)))})")
        missing = required - set(options)
        if name == "partition" and not ({"sources", "source"} & set(options)):
            missing.add("sources")
        if missing:
            raise UsageError(f"{step}: missing {', '.join(sorted(missing))}")
        for key, value in options.items():
            want = str if key in _STRING_KEYS else optional.get(key)
            if want is not None and not (isinstance(value, want) and not (want is int and isinstance(value, bool))):
                raise UsageError(f"{step}: {key} must be {want.__name__}, got {value!r}")
        if name == "index":
            if not isinstance(options["sources"], list) or not all(isinstance(s, str) for s in options["sources"]):
                raise UsageError(f"{step}: sources must be a list of paths")
            options["sources"] = [_resolve(s, base) for s in options["sources"]]
            for s in options["sources"]:
                try:
                    stat(s)
                except UsageError as e:
                    raise UsageError(f"{step}: {e}") from None
        if name == "partition":
            sources = options.pop("sources", None) or [options.pop("source")]
            options.pop("source", None)
            if not all(isinstance(s, str) for s in sources):
                raise UsageError(f"{step}: sources must be a list of paths")
            options["sources"] = [_resolve(s, base) for s in sources]
            for s in options["sources"]:
                try:
                    refuse_empty(s, int(stat(s).get("size", 0)), options.get("allow_empty", False))
                except (UsageError, LoadError) as e:
                    raise type(e)(f"{step}: {e}") from None
        if name in ("join", "update"):
            options["dimension"] = _resolve(options["dimension"], base)
            try:
                options["dimension"] = as_dimension(options["dimension"], settings)  # read and checked once
            except UsageError as e:
                raise UsageError(f"{step}: {e}") from None
        step.options = options
        checked.append(step)

    # the tables a step reads exist, or an earlier step of this job makes them
    catalog, made = None, set()
    for step in checked:
        reads = {"join": "source", "update": "source", "stats": "table"}.get(step.name)
        if reads:
            ident = table_name(step.options[reads], settings.namespace)
            if ident not in made:
                catalog = catalog or _existing_catalog(settings)
                if catalog is None or not catalog.table_exists(ident):
                    raise UsageError(f"{step}: table {'.'.join(ident)} does not exist and no earlier step makes it "
                                     f"(warehouse {settings.warehouse})")
        if step.name not in ("stats", "index"):
            made.add(table_name(step.options["table"], settings.namespace))
    return checked


def _existing_catalog(settings):
    """The catalog if there is one already (a job's first step may create it); None otherwise."""
    from .table.catalog import open_catalog

    try:
        return open_catalog(settings.warehouse, settings.catalog, create=False)
    except UsageError:
        return None


def run_steps(client, settings, steps: list[Step]) -> list[dict]:
    """Run checked steps in order; the first failure stops the job."""
    results = []
    for step in steps:
        interrupts.check()  # a signal Python dropped during the last step (interrupts.py) stops the job here
        o = step.options
        if step.name == "partition":
            from .stages.partition import partition

            results.append(partition(client, settings, o["sources"], o["table"], replace=o.get("replace", False),
                                     append=o.get("append", False), buckets=o.get("buckets"),
                                     allow_empty=o.get("allow_empty", False)))
        elif step.name == "index":
            from .stages.index import index

            results.append({"event": "gzip_indexes", "sources": index(client, settings, o["sources"])})
        elif step.name == "join":
            from .stages.join import join

            results.append(join(client, settings, o["dimension"], o["source"], o["table"], full=o.get("full", False)))
        elif step.name == "update":
            from .stages.update import update

            results.append(update(client, settings, o["dimension"], o["source"], o["table"],
                                  full_snapshot=o.get("full_snapshot", False), dry_run=o.get("dry_run", False)))
        elif step.name == "stats":
            from .stages.table_stats import table_stats

            results.append(table_stats(client, settings, o["table"], recount=o.get("recount", False)))
    return results
