"""Which sources a table holds, and the statistics of their rows: kept in the table's own current metadata.

Each committed source is one table property, `impressions.source.<fingerprint>`, set in the same transaction as
the data it describes: its path, size and content digest, the load that committed it, its row count and the
(n, mean, M2, min, max) of its viewing_percentage. Table properties survive everything standard Iceberg
maintenance does, whichever engine runs it: expiring snapshots, removing unreferenced files, compaction. So a
committed source never looks new, and `stats` needs no history walk: its cost does not grow with history.

Rows are tied to their source by the data file's name (`<fingerprint>_<uuid>_<n>.parquet`, kept by our own
join, update and compaction), and each file's footer carries its own moments (`impressions.vp`): files another
engine wrote or rewrote are simply read when their figures are needed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..report.stats import Moments

PREFIX = "impressions.source."
DIMENSION_SNAPSHOT = "impressions.dimension-snapshot-id"
DIMENSION_FINGERPRINT = "impressions.dimension-fingerprint"
FOOTER_MOMENTS = "impressions.vp"
FOOTER_SOURCE = "impressions.source"
_FILE = re.compile(r"(?:^|/)([0-9a-f]{24})_[0-9a-f]{8,32}_[0-9]{5}\.parquet$")


@dataclass(frozen=True)
class SourceEntry:
    """One source as committed to a table."""

    fingerprint: str
    path: str
    size: int
    digest: str
    load_id: str
    rows: int
    moments: Moments
    committed: str  # ISO time of the commit

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "size": self.size, "digest": self.digest, "load": self.load_id,
                           "rows": self.rows, "vp": self.moments.to_dict(), "committed": self.committed},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, fingerprint: str, text: str) -> "SourceEntry":
        d = json.loads(text)
        return cls(fingerprint, d["path"], int(d["size"]), d["digest"], d["load"], int(d["rows"]),
                   Moments.from_dict(d["vp"]), d.get("committed", ""))

    def with_rows(self, rows: int, moments: Moments, load_id: str, committed: str) -> "SourceEntry":
        return SourceEntry(self.fingerprint, self.path, self.size, self.digest, load_id, rows, moments, committed)


class LineageError(ValueError):
    """A lineage property that cannot be read: the table's metadata was edited by hand or by a broken tool."""


def lineage(properties: dict) -> dict[str, SourceEntry]:
    """fingerprint → entry, from a table's properties (a malformed entry is an error, never ignored)."""
    out = {}
    for key, value in properties.items():
        if key.startswith(PREFIX):
            fingerprint = key[len(PREFIX):]
            try:
                out[fingerprint] = SourceEntry.from_json(fingerprint, value)
            except (ValueError, KeyError, TypeError) as e:
                raise LineageError(f"table property {key} is not a source entry ({e}): fix or remove it") from None
    return out


def entry_properties(entries) -> dict[str, str]:
    return {PREFIX + e.fingerprint: e.to_json() for e in entries}


def property_key(fingerprint: str) -> str:
    return PREFIX + fingerprint


def file_name(fingerprint: str, write_id: str, number: int) -> str:
    """A data file's name: the fingerprint of the source its rows came from, a write id, a counter."""
    return f"{fingerprint}_{write_id}_{number:05d}.parquet"


def fingerprint_of(path: str) -> str | None:
    """The source fingerprint in a data file's name; None for a file named by another engine."""
    m = _FILE.search(path)
    return m.group(1) if m else None
