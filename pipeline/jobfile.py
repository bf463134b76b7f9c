"""`impressions run JOB.yaml`: the steps of a job file, in order, on one Dask client."""
from __future__ import annotations

import os

import yaml

from .errors import UsageError

STEPS = ("partition", "join", "update", "stats")


def read_job(path: str) -> dict:
    from .storage import filesystem

    fs, p = filesystem(path)
    try:
        with fs.open(p, "r") as f:
            job = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"job file {path} is not valid YAML: {e}") from None
    if not isinstance(job, dict) or not isinstance(job.get("steps"), list) or not job["steps"]:
        raise UsageError(f"job file {path} needs a non-empty 'steps' list")
    return job


def _resolve(path: str, base_dir: str) -> str:
    """Relative paths in a job file are relative to that file."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in base_dir:  # a job file on S3: keep the scheme's double slash
        return f"{base_dir.rstrip('/')}/{path}"
    return os.path.normpath(os.path.join(base_dir, path))


def _step(step) -> tuple[str, dict]:
    if not isinstance(step, dict) or len(step) != 1:
        raise UsageError(f"each step is one mapping like {{partition: {{...}}}}, got {step!r}")
    (name, body), = step.items()
    if name not in STEPS:
        raise UsageError(f"unknown step {name!r}; steps are {', '.join(STEPS)}")
    if not isinstance(body, dict):
        raise UsageError(f"step {name} needs a mapping of options")
    return name, body


def run_steps(client, settings, steps: list, base_dir: str) -> list[dict]:
    """Validate every step first (a typo fails before any work), then run them in order."""
    parsed = [_step(s) for s in steps]
    results = []
    for name, body in parsed:
        try:
            if name == "partition":
                from .stages.partition import partition

                sources = body.get("sources") or ([body["source"]] if "source" in body else None)
                if not sources:
                    raise UsageError("partition step needs 'sources'")
                results.append(partition(client, settings, [_resolve(s, base_dir) for s in sources],
                                         body["table"], replace=bool(body.get("replace")),
                                         append=bool(body.get("append")),
                                         buckets=body.get("buckets")))
            elif name == "stats":
                from .stages.table_stats import table_stats

                results.append(table_stats(client, settings, body["table"], recount=bool(body.get("recount"))))
            elif name == "join":
                from .stages.join import join

                results.append(join(client, settings, _resolve(body["dimension"], base_dir), body["source"],
                                    body["table"], full=bool(body.get("full"))))
            elif name == "update":
                from .stages.update import update

                results.append(update(client, settings, _resolve(body["dimension"], base_dir), body["source"],
                                      body["table"], full_snapshot=bool(body.get("full_snapshot")),
                                      dry_run=bool(body.get("dry_run"))))
        except KeyError as e:
            raise UsageError(f"step {name} is missing {e}") from None
    return results
