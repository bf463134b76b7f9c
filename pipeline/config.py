"""Configuration: dask.config defaults shipped as YAML, env overrides, CLI options win.

Resolved once into a frozen `Settings` so the rest of the code never reads globals.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import dask.config
import yaml
from dask.utils import parse_bytes

from .errors import UsageError

_DEFAULTS = Path(__file__).with_name("impressions.yaml")


def _load_defaults() -> None:
    """The shipped YAML, under anything the user configured. Its `distributed:` section changes some of Dask's own
    defaults, which Dask's rules would not keep: a default added later replaces an earlier one only where the config
    still holds the earlier value (so a user's value equal to Dask's default would be lost), and
    `dask.config.refresh()` applies the first one added. So ours are applied, then the user's own values for the
    same keys (their YAML files and DASK_* variables) again, and ours go first in the list `refresh` reads."""
    import distributed  # noqa: F401  (registers distributed's defaults before ours)

    with open(_DEFAULTS) as f:
        defaults = yaml.safe_load(f)
    ours = {"distributed": defaults.pop("distributed")}
    dask.config.update_defaults(defaults)
    dask.config.defaults.insert(0, ours)
    dask.config.update(dask.config.config, ours, priority="new")
    dask.config.update(dask.config.config, _within(dask.config.collect(), ours), priority="new")


def _within(config: dict, shape: dict) -> dict:
    """The part of `config` under the keys of `shape` (down to the leaves)."""
    out = {}
    for k, v in shape.items():
        if k in config:
            out[k] = _within(config[k], v) if isinstance(v, dict) and isinstance(config[k], dict) else config[k]
    return out


_load_defaults()


def byte_size(value) -> int:
    try:
        return int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (ValueError, TypeError) as e:
        raise UsageError(f"not a byte size: {value!r}") from e


def _int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"impressions.{key} must be an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if number != int(number):
            raise ValueError
        return int(number)
    except (ValueError, OverflowError):
        raise UsageError(f"impressions.{key} must be an integer, got {value!r}") from None


@dataclass(frozen=True)
class ReadSettings:
    range_size: int
    index_spacing: int
    small_file: int
    block_size: int
    max_line: int
    quarantine_line_bytes: int
    index_threads: int = 1


@dataclass(frozen=True)
class RecordSettings:
    heartbeat: float  # seconds between heartbeats of a RUNNING load
    stale_after: float  # seconds without a heartbeat after which a RUNNING load is ABANDONED


@dataclass(frozen=True)
class MaintenanceSettings:
    target_file_size: int
    older_than: timedelta
    retain_last: int


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value, key: str = "duration") -> timedelta:
    """`3d`, `12h`, `30m`, `0s`, `1w` (or a number of seconds)."""
    text = str(value).strip().lower()
    try:
        if text[-1:] in _UNITS:
            seconds = float(text[:-1]) * _UNITS[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise UsageError(f"{key}: not a duration: {value!r} (use e.g. 3d, 12h, 30m, 0s)") from None
    if seconds < 0:
        raise UsageError(f"{key}: a duration cannot be negative: {value!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Settings:
    warehouse: str
    catalog: str | None
    namespace: str
    buckets: int
    workers: int
    threads_per_worker: int
    scheduler: str | None
    read: ReadSettings
    memory_budget: int
    compression: str
    row_group_rows: int
    quarantine_table: str
    dimension_table: str
    dimension_date_column: str | None
    dimension_types: dict = field(default_factory=dict)
    maintenance: MaintenanceSettings = MaintenanceSettings(128 << 20, timedelta(days=3), 1)
    loads_table: str = "loads"
    records: RecordSettings = RecordSettings(30.0, 300.0)

    def with_overrides(self, **kw) -> "Settings":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def load_settings(**overrides) -> Settings:
    """Read `impressions.*` from dask.config; keyword overrides (CLI options) win when not None."""
    def get(key):
        # dask.config.get canonicalizes '-' and '_', so env overrides written either way land here
        return dask.config.get(f"impressions.{key}")

    scheduler = get("scheduler") or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    s = Settings(
        warehouse=str(get("warehouse")),
        catalog=get("catalog"),
        namespace=str(get("namespace")),
        buckets=_int("buckets", get("buckets")),
        workers=_int("workers", get("workers")),
        threads_per_worker=_int("threads-per-worker", get("threads-per-worker")),
        scheduler=scheduler,
        read=ReadSettings(
            range_size=byte_size(get("read.range-size")),
            index_spacing=byte_size(get("read.index-spacing")),
            small_file=byte_size(get("read.small-file")),
            block_size=byte_size(get("read.block-size")),
            max_line=byte_size(get("read.max-line")),
            quarantine_line_bytes=byte_size(get("read.quarantine-line-bytes")),
            index_threads=_int("read.index-threads", get("read.index-threads")),
        ),
        memory_budget=byte_size(get("write.memory-budget")),
        compression=str(get("write.compression")),
        row_group_rows=_int("write.row-group-rows", get("write.row-group-rows")),
        quarantine_table=str(get("tables.quarantine")),
        dimension_table=str(get("tables.dimension")),
        dimension_date_column=get("dimension.date-column"),
        dimension_types=dict(get("dimension.types") or {}),
        loads_table=str(get("tables.loads")),
        records=RecordSettings(
            heartbeat=parse_duration(get("records.heartbeat"), "impressions.records.heartbeat").total_seconds(),
            stale_after=parse_duration(get("records.stale-after"), "impressions.records.stale-after").total_seconds(),
        ),
        maintenance=MaintenanceSettings(
            target_file_size=byte_size(get("maintenance.target-file-size")),
            older_than=parse_duration(get("maintenance.older-than"), "impressions.maintenance.older-than"),
            retain_last=_int("maintenance.retain-last", get("maintenance.retain-last")),
        ),
    ).with_overrides(**overrides)
    validate(s)
    if s.read.block_size > s.read.range_size:  # a small range reads in blocks of its own size
        s = replace(s, read=replace(s.read, block_size=s.read.range_size))
    return s


def validate(s: Settings) -> None:
    if not 1 <= s.buckets <= 1_000_000:
        raise UsageError(f"buckets must be between 1 and 1000000, got {s.buckets}")
    if s.workers < 1:
        raise UsageError(f"workers must be at least 1, got {s.workers}")
    if s.read.block_size < 1024 or s.read.range_size < 1024:
        raise UsageError(f"read.block-size ({s.read.block_size}) and read.range-size ({s.read.range_size}) "
                         "must be at least 1 KiB")
    if s.read.max_line < 1024:
        raise UsageError("read.max-line must be at least 1 KiB")
    if not 1 <= s.read.index_threads <= 1024:
        raise UsageError(f"read.index-threads must be between 1 and 1024, got {s.read.index_threads}")
    if not 0 < s.records.heartbeat < s.records.stale_after:
        raise UsageError("records.heartbeat must be above 0 and below records.stale-after")
    if s.maintenance.target_file_size < 1 << 20 or s.maintenance.retain_last < 1:
        raise UsageError("maintenance.target-file-size must be at least 1 MiB and maintenance.retain-last at least 1")
    for key, name in (("namespace", s.namespace), ("tables.quarantine", s.quarantine_table),
                      ("tables.dimension", s.dimension_table), ("tables.loads", s.loads_table)):
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):  # a name becomes a path under the warehouse
            raise UsageError(f"impressions.{key} must be a plain name (letters, digits, underscores), got {name!r}")
    codecs = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
    if s.compression not in codecs:
        raise UsageError(f"write.compression must be one of {', '.join(codecs)}, got {s.compression!r}")
