"""The campaign dimension: read and check the CSV, store it as an Iceberg table, diff two versions.

The dimension is small (it fits in the driver's memory) and is broadcast to every worker once.
Attributes are strings unless `impressions.dimension.types` says otherwise.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from ..errors import UsageError
from ..read.rules import parse_date
from ..schema import COLUMNS
from ..read.sources import describe
from ..storage import filesystem
from ..table import dimension_store

KEY = "campaign_id"


@dataclass(frozen=True)
class Dimension:
    rows: pa.Table  # key column(s) first, then attributes, all non-key columns nullable
    keys: tuple[str, ...]  # ("campaign_id",) or (date_column, "campaign_id")
    source: dict | None = None

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.rows.column_names if c not in self.keys]

    @cached_property
    def fingerprint(self) -> str:
        """Of the content (rows in key order, columns and types), not of the file it came from. Worked out once
        per version (its rows never change): an update asks for it several times, which py-spy put at 0.7 s of
        one update's driver CPU for a 3,000-row dimension."""
        rows = sorted(self.rows.to_pylist(), key=lambda r: [str(r[k]) for k in self.keys])
        raw = json.dumps([str(self.rows.schema), rows], default=str, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:24]


def store(catalog, namespace: str, settings, dim: Dimension, load_id: str, stage: str) -> int:
    """The snapshot id of this dimension version in the stored dimension table (stored once per content)."""
    props = {"impressions.load-id": load_id, "impressions.stage": stage,
             "impressions.sources": json.dumps([dim.source] if dim.source else [])}
    return dimension_store.store(catalog, (namespace, settings.dimension_table), dim.rows, dim.keys,
                                 dim.fingerprint, props)


def load_version(catalog, namespace: str, settings, snapshot_id: int | None = None) -> Dimension | None:
    """A stored dimension version (the current one by default); None if there is none."""
    found = dimension_store.load_version(catalog, (namespace, settings.dimension_table), snapshot_id)
    return Dimension(found[0], found[1], None) if found else None


def _arrow_type(name: str) -> pa.DataType:
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        raise UsageError(f"unknown type {name!r} in impressions.dimension.types") from None


def read_dimension(url: str, date_column: str | None = None, types: dict | None = None) -> Dimension:
    """Read a dimension CSV (gz or plain, with a header) and check its key."""
    source = describe(url)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UsageError(f"dimension {url}: corrupt gzip ({e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        names = pacsv.open_csv(io.BytesIO(data)).schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise UsageError(f"dimension {url} is not a CSV file with a header: {e}") from None
    if KEY not in names:
        raise UsageError(f"dimension {url} has no {KEY} column (columns: {', '.join(names)})")
    clash = [n for n in names if n in COLUMNS and n not in (KEY, date_column)]
    if clash:
        raise UsageError(f"dimension {url}: column(s) {', '.join(clash)} would shadow the impression columns; "
                         "rename them")
    if date_column and date_column not in names:
        raise UsageError(f"dimension {url} has no date column {date_column!r} (impressions.dimension.date-column)")
    types = dict(types or {})
    column_types = {n: (_arrow_type(types[n]) if n in types else pa.string()) for n in names}
    column_types[KEY] = pa.string()
    if date_column:
        column_types[date_column] = pa.string()
    try:
        t = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types=column_types, strings_can_be_null=True, null_values=[""]))
    except pa.ArrowInvalid as e:
        raise UsageError(f"dimension {url}: {e}") from None
    keys = (KEY,)
    if date_column:
        dates = [_dimension_date(s) for s in t[date_column].to_pylist()]
        if any(d is None for d in dates):
            bad = next(s for s, d in zip(t[date_column].to_pylist(), dates) if d is None)
            raise UsageError(f"dimension {url}: bad date {bad!r} in column {date_column} "
                             "(MM/DD/YYYY or YYYY-MM-DD)")
        t = t.set_column(t.schema.get_field_index(date_column), date_column, pa.array(dates, pa.date32()))
        keys = (date_column, KEY)
    if t[KEY].null_count:
        raise UsageError(f"dimension {url}: empty {KEY} in {t[KEY].null_count} row(s)")
    _check_unique(t, keys, url)
    order = list(keys) + [c for c in t.column_names if c not in keys]
    return Dimension(t.select(order), keys, source.to_dict())


def _dimension_date(text: str | None):
    """The facts' MM/DD/YYYY, or ISO YYYY-MM-DD as metadata exports often write dates."""
    if text is None:
        return None
    from datetime import date

    try:
        return date.fromisoformat(text) if len(text) == 10 and text[4] == "-" else parse_date(text)
    except ValueError:
        return None


def _check_unique(t: pa.Table, keys, url: str) -> None:
    counts = t.group_by(list(keys)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows:
        sample = ", ".join(str(tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]])
                           for r in dup.slice(0, 5).to_pylist())
        raise UsageError(f"dimension {url}: duplicate {'/'.join(keys)} in {dup.num_rows} key(s), e.g. {sample}")


# ------------------------------------------------------------------ versions and diffs

def as_dimension(dimension: "str | Dimension", settings) -> Dimension:
    """A dimension given by URL is read (and checked) here; one already read is used as it is."""
    if isinstance(dimension, Dimension):
        return dimension
    return read_dimension(dimension, settings.dimension_date_column, settings.dimension_types)


def upsert(old: Dimension, new: Dimension, full_snapshot: bool) -> Dimension:
    """The dimension after applying an update file (changed or new rows), or the file itself as a snapshot."""
    if full_snapshot or old is None:
        return new
    if list(new.keys) != list(old.keys):
        raise UsageError(f"the update is keyed by {new.keys}, the stored dimension by {old.keys}")
    columns = list(old.rows.column_names) + [c for c in new.rows.column_names if c not in old.rows.column_names]
    old_rows = _with_columns(old.rows, columns)
    new_rows = _with_columns(new.rows, columns)
    new_keys = _key_strings(new_rows, new.keys)
    keep = pc.invert(pc.is_in(_key_strings(old_rows, old.keys), value_set=new_keys))
    merged = pa.concat_tables([old_rows.filter(keep), new_rows.cast(old_rows.schema)])
    return Dimension(merged, old.keys, new.source)


def _with_columns(t: pa.Table, columns: list[str]) -> pa.Table:
    for c in columns:
        if c not in t.column_names:
            t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
    return t.select(columns)


def _key_strings(t: pa.Table, keys) -> pa.Array:
    parts = [pc.cast(t[k], pa.string()) for k in keys]
    return pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0].combine_chunks()


def changed_keys(old: Dimension | None, new: Dimension) -> pa.Table:
    """Keys whose attributes differ between two full dimension versions (added, changed or removed)."""
    if old is None:
        return new.rows.select(list(new.keys))
    columns = [c for c in dict.fromkeys(old.rows.column_names + new.rows.column_names)]
    a = _with_columns(old.rows, columns)
    b = _with_columns(new.rows, columns).cast(a.schema)
    ka, kb = _key_strings(a, old.keys).to_pylist(), _key_strings(b, new.keys).to_pylist()
    rows_a = dict(zip(ka, a.to_pylist()))
    rows_b = dict(zip(kb, b.to_pylist()))
    changed = [k for k in rows_a.keys() | rows_b.keys() if rows_a.get(k) != rows_b.get(k)]
    source = {k: (rows_b.get(k) or rows_a.get(k)) for k in changed}
    return pa.Table.from_pylist([{key: source[k][key] for key in new.keys} for k in sorted(changed)],
                                schema=pa.schema([a.schema.field(key) for key in new.keys]))
