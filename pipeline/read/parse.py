"""Parse blocks of complete CSV lines into typed Arrow rows, and name every line that is rejected.

Pure functions, no I/O. Every line gets the verdict `rules.verdict` gives it on its own; the two paths here are
faster ways of computing exactly that, so a line's fate never depends on its neighbours or on the path taken:

- the *typed* path hands the whole block to Arrow's CSV reader with typed columns (quotes handled by Arrow).
  Arrow accepts a few things the rules do not (hex ids, nan/inf), so the path is taken only when the block
  cannot contain them, and every row it would reject is decided by `rules.verdict` itself;
- the *careful* path, for a block Arrow refused: lines are located, the ones Arrow parses as the rules split them
  (no stray CR; quoted ones are checked for a quote left open) are read as raw bytes and checked column by column
  with the rules' own expressions, and the few odd lines left are decided by `rules.verdict` one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from ..schema import COLUMNS, PARSED_SCHEMA
from . import rules

_DICT = pa.dictionary(pa.int32(), pa.string())
_READ = pacsv.ReadOptions(column_names=COLUMNS, block_size=1 << 26, use_threads=False)
_QUOTED = pacsv.ParseOptions(quote_char='"', double_quote=True, newlines_in_values=False, ignore_empty_lines=False)
_UNQUOTED = pacsv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=False)
_NO_NULLS = dict(null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False)
# No UTF-8 check while parsing (~10 % of the parse): every string column is dictionary-encoded, so its distinct
# values are checked afterwards (`_valid_utf8`), and a stray byte in a number fails the number's parse
_TYPED = pacsv.ConvertOptions(
    column_types={"ad_date": _DICT, "impression_id": pa.int64(), "campaign_id": _DICT, "video_id": _DICT,
                  "viewing_percentage": pa.float64()}, check_utf8=False, **_NO_NULLS)
_RAW = pacsv.ConvertOptions(column_types={c: pa.binary() for c in COLUMNS}, **_NO_NULLS)
_BOM = b"\xef\xbb\xbf"  # Arrow drops one at the start of what it parses; to the rules it is part of the line
_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
_INT64_MAX = str(rules.INT64_MAX)
_INT64_MIN_DIGITS = str(rules.INT64_MAX + 1)


@dataclass
class Parsed:
    """Rows that passed, and the lines that did not (offset, reason, raw bytes)."""

    rows: pa.Table
    lines: int
    bad_offsets: list = field(default_factory=list)
    bad_reasons: list = field(default_factory=list)
    bad_lines: list = field(default_factory=list)

    def reject(self, offset: int, reason: str, line: bytes | bytearray) -> None:
        self.bad_offsets.append(offset)
        self.bad_reasons.append(reason)
        self.bad_lines.append(bytes(line))


CHUNK = 1 << 20  # a block the typed path refused is tried again in pieces of about this size


def parse_block(block: bytes | bytearray, offset: int, keep_bytes: int = 65536) -> Parsed:
    """Parse `block` (complete lines; the last may lack its newline) that starts at stream `offset`.

    When the typed path refuses the block (one bad line is enough), the block is tried again in line-aligned
    pieces of about CHUNK bytes, and only the pieces the typed path still refuses take the careful path: every
    path gives the rules' verdicts, so this changes the speed of a dirty block, never a line's fate."""
    typed = _parse_typed(block, offset, keep_bytes)
    if typed is not None:
        return typed
    if len(block) <= 2 * CHUNK:
        return _parse_careful(block, offset, keep_bytes)
    pieces, start = [], 0
    while start < len(block):
        end = block.find(b"\n", min(start + CHUNK, len(block)) - 1)
        end = len(block) if end < 0 else end + 1
        piece = block[start:end]
        pieces.append(_parse_typed(piece, offset + start, keep_bytes) or _parse_careful(piece, offset + start,
                                                                                        keep_bytes))
        start = end
    out = Parsed(pa.concat_tables([x.rows for x in pieces]), sum(x.lines for x in pieces))
    for x in pieces:
        out.bad_offsets += x.bad_offsets
        out.bad_reasons += x.bad_reasons
        out.bad_lines += x.bad_lines
    return out


# ------------------------------------------------------------------ line positions

def _line_spans(buf: np.ndarray):
    """Start, end (exclusive, without the `\\n`) and content end (without a `\\r` before it) of every line."""
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


def _line_count(block: bytes | bytearray) -> int:
    newlines = int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))  # 3.5x faster than .count
    return newlines + (0 if block.endswith(b"\n") else 1)


# ------------------------------------------------------------------ the typed path

def _parse_typed(block: bytes | bytearray, offset: int, keep_bytes: int) -> Parsed | None:
    """The whole block in one typed Arrow parse, or None when that could disagree with the rules.

    Arrow ends a row at a lone CR and lets an open quote swallow the next line, so "as many rows as lines, and no
    CR or LF inside a string value" proves every row is one line split as the rules split it. Arrow's int64 parser
    also takes hex (`0x1F`), and Arrow drops a leading BOM: such blocks go the careful way.
    """
    if not block or block.startswith(_BOM) or _may_hold_hex(block):
        return None
    lines = _line_count(block)
    options = _QUOTED if b'"' in block else _UNQUOTED  # Arrow parses ~1.5x faster when quotes need no care
    try:
        t = pacsv.read_csv(pa.py_buffer(block), read_options=_READ, parse_options=options, convert_options=_TYPED)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if t.num_rows != lines:
        return None
    dates, campaigns, videos = (_one_dict(t[c]) for c in ("ad_date", "campaign_id", "video_id"))
    if any(not _valid_utf8(d.dictionary) or _has_line_break(d.dictionary) for d in (dates, campaigns, videos)):
        return None
    days, date_ok = _dates(dates)
    vp = t["viewing_percentage"]
    camp_names = campaigns.dictionary.to_pylist()
    # per-row masks only for checks that can fail here (a clean block has none): None = every row passes
    masks = [date_ok, _in_unit_interval(vp), None if all(camp_names) else
             _by_dictionary(campaigns, [name != "" for name in camp_names])]
    masks = [m for m in masks if m is not None]
    rows = pa.table([days, t["impression_id"], campaigns, videos, vp], schema=PARSED_SCHEMA)
    result = Parsed(rows, lines)
    ok = np.logical_and.reduce(masks) if masks else None
    if ok is not None and not ok.all():
        # the rows Arrow's values reject (a bad date, nan, 1e400, ...) are decided by the rules, line by line
        starts, ends, cends = _line_spans(np.frombuffer(block, dtype=np.uint8))
        for i in np.flatnonzero(~ok):
            reason, _ = rules.verdict(block[starts[i]:ends[i]])
            if reason:
                result.reject(offset + int(starts[i]), reason, block[starts[i]:min(cends[i], starts[i] + keep_bytes)])
            else:  # Arrow's values were right and only our cheap check doubted them
                ok[i] = True
        result.rows = rows.filter(pa.array(ok))
    return result


def _may_hold_hex(block: bytes | bytearray) -> bool:
    """Whether `0x` or `0X` occurs (one-byte searches first: `0` is everywhere, `x` rarely is)."""
    if block.find(b"x") < 0 and block.find(b"X") < 0:
        return False
    buf = np.frombuffer(block, dtype=np.uint8)
    after = np.flatnonzero((buf[1:] == 0x78) | (buf[1:] == 0x58))
    return bool((buf[after] == 0x30).any())


def _one_dict(col) -> pa.DictionaryArray:
    """One dictionary array out of a (possibly chunked) dictionary column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _valid_utf8(values: pa.Array) -> bool:
    """Whether every value of a string array (parsed without Arrow's UTF-8 check) is UTF-8."""
    try:
        values.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _has_line_break(values: pa.Array) -> bool:
    return bool(pc.any(pc.match_substring_regex(values, "[\r\n]")).as_py())


def _in_unit_interval(values: pa.ChunkedArray) -> np.ndarray | None:
    """Per row: 0 <= value <= 1 (NaN is not); None when every row is (two reductions, NaN making them fail).
    The typed path parses without nulls, so there are none."""
    v = values.to_numpy()
    if not len(v) or (v.min() >= 0.0 and v.max() <= 1.0):
        return None
    return (v >= 0.0) & (v <= 1.0)


def _by_dictionary(col: pa.DictionaryArray, per_value: list) -> np.ndarray:
    """A per-row mask from one boolean per distinct value."""
    if not len(col):
        return np.ones(0, dtype=bool)
    return np.array(per_value, dtype=bool)[col.indices.to_numpy(zero_copy_only=False)]


def _dates(col: pa.DictionaryArray) -> tuple[pa.Array, np.ndarray | None]:
    """date32 values and a validity mask (None: every date is valid), each distinct date string parsed once by
    the rules."""
    parsed = [rules.parse_date(s) for s in col.dictionary.to_pylist()]
    days = np.array([d.toordinal() - _EPOCH_ORDINAL if d else 0 for d in parsed], dtype=np.int32)
    codes = col.indices.to_numpy(zero_copy_only=False)
    ok = None if all(d is not None for d in parsed) else \
        np.array([d is not None for d in parsed], dtype=bool)[codes]
    return pa.array(days[codes] if len(codes) else days[:0], type=pa.int32()).cast(pa.date32()), ok


# ------------------------------------------------------------------ the careful path

def _parse_careful(block: bytes | bytearray, offset: int, keep_bytes: int) -> Parsed:
    """Every line located; most checked column by column with the rules' expressions, odd ones one by one."""
    buf = np.frombuffer(block, dtype=np.uint8)
    starts, ends, cends = _line_spans(buf)
    n = len(starts)
    result = Parsed(PARSED_SCHEMA.empty_table(), n)
    if n == 0:
        return result
    quotes = _count_in(np.flatnonzero(buf == 34), starts, cends)
    inner_cr = _count_in(np.flatnonzero(buf == 13), starts, cends)
    commas = _count_in(np.flatnonzero(buf == 44), starts, cends)
    arrow_safe = (inner_cr == 0) & ~_starts_with_bom(buf, starts)
    if quotes.any():
        arrow_safe &= _decodable(block, starts, ends, quotes > 0)  # Arrow's bad-row handler cannot show bad UTF-8
    plain = arrow_safe & (quotes == 0) & (commas == 4)
    quoted = arrow_safe & (quotes > 0)
    one_by_one = list(np.flatnonzero(~(plain | quoted)))
    tables = []
    for mask, options in ((plain, _UNQUOTED), (quoted, _QUOTED)):
        if not mask.any():
            continue
        raw, parsed_idx, odd = _raw_columns(block, buf, starts, ends, mask, options)
        one_by_one += odd
        if raw is not None:
            tables.append(_check_columns(raw, block, starts[parsed_idx], cends[parsed_idx], offset, result,
                                         keep_bytes))
    for i in sorted(one_by_one):
        reason, values = rules.verdict(block[starts[i]:ends[i]])
        if reason:
            result.reject(offset + int(starts[i]), reason, block[starts[i]:min(cends[i], starts[i] + keep_bytes)])
        else:
            tables.append(_one_row(values))
    if tables:
        result.rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return result


def _starts_with_bom(buf: np.ndarray, starts: np.ndarray) -> np.ndarray:
    s = starts[starts + 3 <= len(buf)]
    hit = np.zeros(len(starts), dtype=bool)
    hit[: len(s)] = (buf[s] == 0xEF) & (buf[s + 1] == 0xBB) & (buf[s + 2] == 0xBF)
    return hit


def _decodable(block: bytes | bytearray, starts, ends, mask) -> np.ndarray:
    """Per line: False for the lines in `mask` that are not UTF-8 (checked one by one only if the block is not)."""
    ok = np.ones(len(starts), dtype=bool)
    try:
        block.decode("utf-8")
        return ok
    except UnicodeDecodeError:
        pass
    for i in np.flatnonzero(mask):
        try:
            block[starts[i]:ends[i]].decode("utf-8")
        except UnicodeDecodeError:
            ok[i] = False
    return ok


def _raw_columns(block, buf, starts, ends, mask, options) -> tuple[pa.Table | None, np.ndarray, list]:
    """The lines in `mask` parsed by Arrow as raw bytes: (table, the lines its rows are, lines left to the rules).

    A line Arrow cannot split into five fields goes to the rules (which say why); if an open quote swallowed a
    line break, Arrow's rows no longer match the lines and all of them go to the rules.
    """
    idx = np.flatnonzero(mask)
    if len(idx) == len(starts):
        data = block
    else:
        lengths = ends - starts + 1  # with the newline (the last line may lack it: clipped below)
        data = buf[np.repeat(mask, lengths)[: len(buf)]].tobytes()
    skipped = []

    def skip(row) -> str:
        skipped.append(row.number - 1)  # physical line number (1-based) within `data`
        return "skip"

    opts = pacsv.ParseOptions(quote_char=options.quote_char, double_quote=True, newlines_in_values=False,
                              ignore_empty_lines=False, invalid_row_handler=skip)
    try:
        t = pacsv.read_csv(pa.py_buffer(data), read_options=_READ, parse_options=opts, convert_options=_RAW)
    except pa.ArrowInvalid:
        return None, idx[:0], list(idx)
    swallowed = options.quote_char and t.num_rows and any(_has_line_break(t[c].combine_chunks()) for c in COLUMNS)
    if t.num_rows + len(skipped) != len(idx) or swallowed:  # an open quote took a line break
        return None, idx[:0], list(idx)
    keep = np.ones(len(idx), dtype=bool)
    keep[[k for k in skipped if 0 <= k < len(idx)]] = False
    return t, idx[keep], list(idx[~keep])


def _check_columns(t: pa.Table, block: bytes | bytearray, line_starts, line_ends, offset, result: Parsed, keep_bytes):
    """The rules, column by column, on raw bytes: the same expressions `rules.verdict` uses."""
    strs, enc_ok = {}, np.ones(t.num_rows, dtype=bool)
    for c in COLUMNS:
        strs[c], ok = _utf8(t[c].combine_chunks())
        enc_ok &= ok
    dates, date_ok = _dates(pc.dictionary_encode(strs["ad_date"]))
    date_ok = np.ones(t.num_rows, dtype=bool) if date_ok is None else date_ok
    ids, id_ok = _ids(strs["impression_id"])
    camp_ok = pc.greater(pc.binary_length(strs["campaign_id"]), 0).to_numpy(zero_copy_only=False)
    vp, vp_num, vp_range = _numbers(strs["viewing_percentage"])
    reason = _first_failure(t.num_rows, [
        ("encoding", enc_ok), ("bad_date", date_ok), ("bad_number", id_ok), ("empty_campaign", camp_ok),
        ("bad_number", vp_num), ("out_of_range", vp_range)])
    rows = pa.table([dates, ids, strs["campaign_id"].cast(_DICT), strs["video_id"].cast(_DICT), vp],
                    schema=PARSED_SCHEMA)
    bad = np.flatnonzero(reason != "")
    for i in bad:
        s, e = int(line_starts[i]), int(line_ends[i])
        result.reject(offset + s, reason[i], bytes(block[s:min(e, s + keep_bytes)]))
    return rows.filter(pa.array(reason == "")) if len(bad) else rows


def _utf8(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """binary → string, with a per-row mask of values that are valid UTF-8."""
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


def _ids(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """int64 ids and a mask: `-?[0-9]+` between blanks, within int64 (compared as digit strings)."""
    text = pc.utf8_trim(text, characters=rules.BLANKS)
    try:  # the common case: every value an int64 (Arrow's cast also takes hex, which the rules do not)
        ids = pc.cast(text, pa.int64())
        if not pc.any(pc.match_substring_regex(text, "[xX]")).as_py():
            return ids, np.ones(len(text), dtype=bool)
    except pa.ArrowInvalid:
        pass
    ok = pc.match_substring_regex(text, f"^{rules.INT_RE}$")
    negative = pc.starts_with(text, "-")
    digits = pc.utf8_ltrim(pc.if_else(negative, pc.utf8_slice_codeunits(text, 1), text), characters="0")
    width = pc.utf8_length(digits)
    limit = pc.if_else(negative, _INT64_MIN_DIGITS, _INT64_MAX)
    fits = pc.or_(pc.less(width, 19), pc.and_(pc.equal(width, 19), pc.less_equal(digits, limit)))
    ok = pc.fill_null(pc.and_(ok, fits), False)
    ids = pc.cast(pc.if_else(ok, text, "0"), pa.int64())
    return ids, ok.to_numpy(zero_copy_only=False)


def _numbers(text: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """float64 values, a mask of decimal numbers, and a mask of those within [0, 1] (1e400 casts to inf)."""
    text = pc.utf8_trim(text, characters=rules.BLANKS)
    try:  # the common case: every value a finite number (Arrow's finite floats are the rules' decimals)
        values = pc.cast(text, pa.float64())
        if pc.all(pc.is_finite(values)).as_py() is not False:
            in_range = pc.and_(pc.greater_equal(values, 0.0), pc.less_equal(values, 1.0))
            return values, np.ones(len(text), dtype=bool), in_range.to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        pass
    ok = pc.fill_null(pc.match_substring_regex(text, f"^{rules.DECIMAL_RE}$"), False)
    values = pc.cast(pc.if_else(ok, text, "0"), pa.float64())
    in_range = pc.and_(pc.greater_equal(values, 0.0), pc.less_equal(values, 1.0))
    return values, ok.to_numpy(zero_copy_only=False), pc.and_(ok, in_range).to_numpy(zero_copy_only=False)


def _first_failure(nrows, checks) -> np.ndarray:
    """First failing check per row (checks in order), '' when all pass."""
    reason = np.full(nrows, "", dtype=object)
    for name, ok in checks:
        reason[(~ok) & (reason == "")] = name
    return reason


def _one_row(values: tuple) -> pa.Table:
    day, ident, campaign, video, vp = values
    return pa.table([pa.array([day], pa.date32()), pa.array([ident], pa.int64()), pa.array([campaign]).cast(_DICT),
                     pa.array([video]).cast(_DICT), pa.array([vp], pa.float64())], schema=PARSED_SCHEMA)
