"""Parse blocks of complete CSV lines into typed Arrow rows, and name every line that is rejected.

Pure functions, no I/O. The fast path hands the whole block to pyarrow's CSV reader with typed columns and
validates the low-cardinality string columns on their dictionaries. A block with anything odd in it falls back
to a vectorized per-row check, so a bad line costs little and every line is either a row or a quarantine entry
with its reason and its byte offset in the uncompressed stream.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from ..schema import COLUMNS, PARSED_SCHEMA

_DICT = pa.dictionary(pa.int32(), pa.string())
_READ = pacsv.ReadOptions(column_names=COLUMNS, block_size=1 << 26, use_threads=False)
_PARSE = pacsv.ParseOptions(newlines_in_values=False, quote_char=False)
_PARSE_STRICT = pacsv.ParseOptions(newlines_in_values=False, quote_char=False, ignore_empty_lines=False)
_TYPED = pacsv.ConvertOptions(
    column_types={"ad_date": _DICT, "impression_id": pa.int64(), "campaign_id": _DICT, "video_id": _DICT,
                  "viewing_percentage": pa.float64()},
    strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[],
)
_RAW = pacsv.ConvertOptions(column_types={c: pa.binary() for c in COLUMNS}, null_values=[],
                            strings_can_be_null=False)
_INT_RE = r"^-?[0-9]{1,18}$"
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?([Nn][Aa][Nn]|[Ii][Nn][Ff]([Ii][Nn][Ii][Tt][Yy])?)$"
_EPOCH = date(1970, 1, 1)


@dataclass
class Parsed:
    """Rows that passed, and the lines that did not (offset, reason, raw bytes)."""

    rows: pa.Table
    lines: int
    bad_offsets: list = field(default_factory=list)
    bad_reasons: list = field(default_factory=list)
    bad_lines: list = field(default_factory=list)

    def reject(self, offset: int, reason: str, line: bytes) -> None:
        self.bad_offsets.append(offset)
        self.bad_reasons.append(reason)
        self.bad_lines.append(line)


def parse_date(text: str) -> date | None:
    """Strict MM/DD/YYYY (zero padding optional): 02/30/2019 and stray spaces are rejected."""
    try:
        return datetime.strptime(text, "%m/%d/%Y").date() if text.strip() == text else None
    except ValueError:
        return None


def _line_spans(buf: np.ndarray):
    """Start and end (exclusive, without the line break) of every line; CR before LF is not content."""
    nl = np.flatnonzero(buf == 10)
    n = len(buf)
    ends = nl if (len(nl) and nl[-1] == n - 1) or n == 0 else np.append(nl, n)
    starts = np.concatenate(([0], nl[: len(ends) - 1] + 1)) if len(ends) else np.zeros(0, np.int64)
    content_ends = ends.copy()
    if len(ends):
        has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
        content_ends[has_cr] -= 1
    return starts.astype(np.int64), ends.astype(np.int64), content_ends.astype(np.int64)


def _count_in(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return np.searchsorted(positions, ends) - np.searchsorted(positions, starts)


def parse_block(block: bytes, offset: int, keep_bytes: int = 65536) -> Parsed:
    """Parse `block` (complete lines; the last may lack its newline) that starts at stream `offset`."""
    fast = _parse_clean(block, offset, keep_bytes)
    if isinstance(fast, Parsed):
        return fast
    buf = np.frombuffer(block, dtype=np.uint8)
    starts, ends, cends = _line_spans(buf)
    nlines = len(starts)
    if nlines == 0:
        return Parsed(PARSED_SCHEMA.empty_table(), 0)
    commas = _count_in(np.flatnonzero(buf == 44), starts, cends)
    quotes = _count_in(np.flatnonzero(buf == 34), starts, cends)
    crs = _count_in(np.flatnonzero(buf == 13), starts, cends)
    simple = (commas == 4) & (quotes == 0) & (crs == 0)
    result = Parsed(PARSED_SCHEMA.empty_table(), nlines)
    tables = []
    if simple.all():
        # the same bytes the clean path saw: if its typed parse failed, go straight to the raw one
        tables.append(_parse_simple(block, starts, cends, offset, result, keep_bytes,
                                    typed=fast is not _TYPED_FAILED))
    else:
        idx = np.flatnonzero(simple)
        if len(idx):
            lengths = ends - starts + 1  # with the newline (the last line may lack it: clipped below)
            mask = np.repeat(simple, lengths)[: len(buf)]
            tables.append(_parse_simple(buf[mask].tobytes(), starts[idx], cends[idx], offset, result, keep_bytes,
                                        original=(block, starts[idx], cends[idx])))
        for i in np.flatnonzero(~simple):
            line = block[starts[i]:cends[i]]
            _parse_odd_line(line, offset + int(starts[i]), result, tables, keep_bytes)
    result.rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return result


_TYPED_FAILED = "typed parse failed"


def _parse_clean(block: bytes, offset: int, keep_bytes: int) -> Parsed | str | None:
    """The common case in one typed Arrow parse: no quotes, and exactly one row per line.

    Arrow also ends a row at a lone CR, and with empty lines kept a stray CR yields an empty or short row:
    so "as many 5-field rows as newlines" proves the block has no odd line. Lines are located only if a
    value check fails (to name their offsets). Otherwise None, or _TYPED_FAILED when Arrow's typed parse
    rejected the block (so the careful path need not try it again on the same bytes).
    """
    if not block or b'"' in block:
        return None
    lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    try:
        t = pacsv.read_csv(pa.py_buffer(block), read_options=_READ, parse_options=_PARSE_STRICT,
                           convert_options=_TYPED)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return _TYPED_FAILED
    if t.num_rows != lines:
        return None
    result = Parsed(PARSED_SCHEMA.empty_table(), lines)
    result.rows = _check_typed(t, block, None, None, offset, result, keep_bytes)
    return result


def _parse_simple(data: bytes, starts, cends, offset, result: Parsed, keep_bytes, original=None,
                  typed: bool = True) -> pa.Table:
    """Lines with exactly five unquoted fields: typed parse (unless known to fail), then column checks."""
    src, line_starts, line_ends = original if original is not None else (data, starts, cends)
    try:
        if not typed:
            raise pa.ArrowInvalid("typed parse already failed on these bytes")
        t = pacsv.read_csv(pa.py_buffer(data), read_options=_READ, parse_options=_PARSE, convert_options=_TYPED)
        if t.num_rows != len(line_starts):
            raise pa.ArrowInvalid("row count mismatch")
        return _check_typed(t, src, line_starts, line_ends, offset, result, keep_bytes)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        t = pacsv.read_csv(pa.py_buffer(data), read_options=_READ, parse_options=_PARSE, convert_options=_RAW)
        return _check_raw(t, src, line_starts, line_ends, offset, result, keep_bytes)


def _one_dict(col) -> pa.DictionaryArray:
    """One dictionary array out of a (possibly chunked) dictionary column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _dict_dates(col) -> tuple[pa.Array, np.ndarray]:
    """date32 values and a validity mask, validating each distinct date string once."""
    col = _one_dict(col)
    parsed = [parse_date(s) for s in col.dictionary.to_pylist()]
    days = np.array([(d - _EPOCH).days if d else 0 for d in parsed], dtype=np.int32)
    ok_dict = np.array([d is not None for d in parsed], dtype=bool)
    codes = col.indices.to_numpy(zero_copy_only=False)
    return pa.array(days[codes], type=pa.int32()).cast(pa.date32()), ok_dict[codes]


def _reasons(nrows, checks) -> np.ndarray:
    """First failing check per row (checks in order), '' when all pass."""
    reason = np.full(nrows, "", dtype=object)
    for name, ok in checks:
        bad = (~ok) & (reason == "")
        reason[bad] = name
    return reason


def _finish(t: pa.Table, reason: np.ndarray, src, line_starts, line_ends, offset, result, keep_bytes):
    bad = np.flatnonzero(reason != "")
    if len(bad) and line_starts is None:  # the clean path locates lines only when it must
        line_starts, _, line_ends = _line_spans(np.frombuffer(src, dtype=np.uint8))
    for i in bad:
        s, e = int(line_starts[i]), int(line_ends[i])
        result.reject(offset + s, reason[i], bytes(src[s:min(e, s + keep_bytes)]))
    if len(bad):
        t = t.filter(pa.array(reason == ""))
    return t


def _check_typed(t, src, line_starts, line_ends, offset, result, keep_bytes) -> pa.Table:
    dates, date_ok = _dict_dates(t["ad_date"])
    camp = _one_dict(t["campaign_id"])
    camp_ok = np.array([s != "" for s in camp.dictionary.to_pylist()], dtype=bool)[
        camp.indices.to_numpy(zero_copy_only=False)] if len(camp) else np.ones(0, bool)
    vp = t["viewing_percentage"]
    vp_ok = pc.and_(pc.greater_equal(vp, 0.0), pc.less_equal(vp, 1.0)).to_numpy(zero_copy_only=False)
    out = pa.table([dates, t["impression_id"], camp, _one_dict(t["video_id"]), vp], schema=PARSED_SCHEMA)
    if date_ok.all() and camp_ok.all() and vp_ok.all():
        return out
    reason = _reasons(t.num_rows, [("bad_date", date_ok), ("empty_campaign", camp_ok), ("out_of_range", vp_ok)])
    return _finish(out, reason, src, line_starts, line_ends, offset, result, keep_bytes)


def _utf8(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """binary → string, with a per-row validity mask for undecodable bytes."""
    try:
        return col.cast(pa.string()), np.ones(len(col), dtype=bool)
    except pa.ArrowInvalid:
        values = col.to_pylist()
        ok = np.ones(len(values), dtype=bool)
        for i, v in enumerate(values):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                ok[i] = False
        return pa.array([v.decode("utf-8", "replace") for v in values], pa.string()), ok


def _check_raw(t, src, line_starts, line_ends, offset, result, keep_bytes) -> pa.Table:
    cols = {c: t[c].combine_chunks() for c in COLUMNS}
    strs, enc_ok = {}, np.ones(t.num_rows, dtype=bool)
    for c in COLUMNS:
        strs[c], ok = _utf8(cols[c])
        enc_ok &= ok
    date_dict = pc.dictionary_encode(strs["ad_date"])
    dates, date_ok = _dict_dates(date_dict)
    id_ok = pc.match_substring_regex(strs["impression_id"], _INT_RE).to_numpy(zero_copy_only=False)
    ids = pc.cast(pc.if_else(pa.array(id_ok), strs["impression_id"], "0"), pa.int64())
    vp_num = pc.match_substring_regex(strs["viewing_percentage"], _FLOAT_RE).to_numpy(zero_copy_only=False)
    vp = pc.cast(pc.if_else(pa.array(vp_num), strs["viewing_percentage"], "0"), pa.float64())
    vp_range = pc.and_(pc.greater_equal(vp, 0.0), pc.less_equal(vp, 1.0)).to_numpy(zero_copy_only=False)
    camp_ok = pc.greater(pc.binary_length(strs["campaign_id"]), 0).to_numpy(zero_copy_only=False)
    reason = _reasons(t.num_rows, [
        ("encoding", enc_ok), ("bad_date", date_ok), ("bad_number", id_ok), ("empty_campaign", camp_ok),
        ("bad_number", vp_num), ("out_of_range", vp_range),
    ])
    out = pa.table([dates, ids, strs["campaign_id"].cast(_DICT), strs["video_id"].cast(_DICT), vp],
                   schema=PARSED_SCHEMA)
    return _finish(out, reason, src, line_starts, line_ends, offset, result, keep_bytes)


def _parse_odd_line(line: bytes, offset: int, result: Parsed, tables: list, keep_bytes: int) -> None:
    """A line with quotes, stray CRs or the wrong number of commas: checked on its own in Python."""
    raw = line[:keep_bytes]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        result.reject(offset, "encoding", raw)
        return
    try:
        fields = next(csv.reader([text], strict=True)) if text else []
    except (csv.Error, StopIteration):
        fields = []
    if len(fields) != 5 or "\r" in text:
        result.reject(offset, "field_count", raw)
        return
    d, ident, camp, video, vp = fields
    day = parse_date(d)
    if day is None:
        result.reject(offset, "bad_date", raw)
        return
    if not re.fullmatch(_INT_RE[1:-1], ident):
        result.reject(offset, "bad_number", raw)
        return
    if camp == "":
        result.reject(offset, "empty_campaign", raw)
        return
    if not re.fullmatch(_FLOAT_RE.replace("^", "").replace("$", ""), vp):
        result.reject(offset, "bad_number", raw)
        return
    value = float(vp)
    if not 0.0 <= value <= 1.0:
        result.reject(offset, "out_of_range", raw)
        return
    tables.append(pa.table([pa.array([day]), pa.array([int(ident)]), pa.array([camp]).cast(_DICT),
                            pa.array([video]).cast(_DICT), pa.array([value])], schema=PARSED_SCHEMA))
