"""Reading our data files back: their viewing_percentage moments, from the footer or from the data."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from ..report.stats import Moments, chunk
from ..storage import object_metadata
from .lineage import FOOTER_MOMENTS
from .write import WriteTarget


def file_moments(target: WriteTarget, path: str, from_footer: bool = True) -> tuple[int, Moments]:
    """(rows, moments) of one data file: from the footer our writer left (one small read), else — a file another
    engine wrote, or `from_footer=False` for an audit — from the viewing_percentage column itself."""
    with target.io().new_input(path).open() as f:
        pf = pq.ParquetFile(f)
        kv = pf.metadata.metadata or {}
        if from_footer and FOOTER_MOMENTS.encode() in kv:
            return pf.metadata.num_rows, Moments.from_dict(json.loads(kv[FOOTER_MOMENTS.encode()]))
        column = pf.read(columns=["viewing_percentage"])["viewing_percentage"]
    return len(column), chunk(column)


def files_moments(target: WriteTarget, paths: list[str], from_footer: bool = True) -> list[tuple[str, int, Moments]]:
    """Several files in one task: per-file figures are small, the task overhead is not."""
    return [(p, *file_moments(target, p, from_footer)) for p in paths]


def metadata_rows(path: str) -> int | None:
    """The row count an S3 data file carries in its object metadata (None: not on S3, or not written by us)."""
    if not path.startswith(("s3://", "s3a://")):
        return None
    rows = object_metadata(path).get("rows")
    return int(rows) if rows is not None else None


def audit_files(target: WriteTarget, paths: list[str]) -> list[tuple[str, int, Moments, int | None]]:
    """`stats --recount`: every file's rows and moments from its data, and the row count its metadata claims."""
    return [(p, *file_moments(target, p, from_footer=False), metadata_rows(p)) for p in paths]
