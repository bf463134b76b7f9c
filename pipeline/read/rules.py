"""The validation rules for one impression line: the single definition every parsing path must agree with.

`verdict(line)` decides a line on its own bytes alone, in plain Python. The vectorised paths in parse.py are
faster ways of computing exactly this; the tests check that they agree line by line, whatever the neighbours.

A line (without its `\\n`; one `\\r` before it is part of the line break):
- must be UTF-8, else `encoding`;
- is split into fields like Python's csv module (excel dialect, non-strict): a field that starts with `"` is
  quoted, `""` inside it is a quote, text after the closing quote is appended; a quote inside an unquoted field
  is a plain character. A quote left open at the end of the line, or a CR anywhere in it, is a line break inside
  a record, which is not supported: `field_count`. Not exactly five fields: `field_count`;
- `ad_date`: MM/DD/YYYY (month and day may drop their leading zero), a real calendar date, else `bad_date`;
- `impression_id`: an optional `-` and decimal digits that fit int64, else `bad_number`;
- `campaign_id`: not empty, else `empty_campaign`;
- `viewing_percentage`: a decimal number, optionally signed, optionally with an exponent, else `bad_number`;
  outside [0, 1]: `out_of_range`.
Blanks (spaces and tabs) around a number or a date are ignored; string fields are kept exactly as written.
The checks run in the order above; a line gets the first reason that applies.
"""
from __future__ import annotations

import re
from datetime import date

BLANKS = " \t"
REASONS = ("field_count", "bad_date", "bad_number", "out_of_range", "empty_campaign", "encoding", "line_too_long")

INT_RE = r"-?[0-9]+"
DECIMAL_RE = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
DATE_RE = r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})"
INT64_MAX = 2**63 - 1

_INT = re.compile(INT_RE + r"\Z")
_DECIMAL = re.compile(DECIMAL_RE + r"\Z")
_DATE = re.compile(DATE_RE + r"\Z")


def parse_date(text: str) -> date | None:
    """MM/DD/YYYY with blanks around ignored; None unless it is a real date (02/30/2019 is not)."""
    m = _DATE.match(text.strip(BLANKS))
    if not m:
        return None
    month, day, year = (int(g) for g in m.groups())
    try:
        return date(year, month, day)
    except ValueError:
        return None


def parse_id(text: str) -> int | None:
    text = text.strip(BLANKS)
    if not _INT.match(text):
        return None
    value = int(text)
    return value if -INT64_MAX - 1 <= value <= INT64_MAX else None


def parse_number(text: str) -> float | None:
    """A decimal number (not nan, inf or Python's `1_0`); its float value, which may be inf (1e400)."""
    text = text.strip(BLANKS)
    return float(text) if _DECIMAL.match(text) else None


def split_fields(text: str) -> list[str] | None:
    """The fields of one line as Python's csv module reads them (non-strict); None when a quote is left open."""
    fields, field, i, n = [], [], 0, len(text)
    quoted = False  # inside an open quoted field
    while i < n:
        c = text[i]
        if quoted:
            if c == '"':
                if i + 1 < n and text[i + 1] == '"':
                    field.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                field.append(c)
        elif c == ",":
            fields.append("".join(field))
            field = []
        elif c == '"' and not field and (i == 0 or text[i - 1] == ","):
            quoted = True
        else:
            field.append(c)
        i += 1
    if quoted:
        return None
    fields.append("".join(field))
    return fields


def verdict(line: bytes) -> tuple[str | None, tuple | None]:
    """(reason, None) for a rejected line; (None, (date, id, campaign, video, vp)) for a row."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "encoding", None
    fields = split_fields(text) if "\r" not in text else None
    if fields is None or len(fields) != 5:
        return "field_count", None
    d, ident, campaign, video, vp = fields
    day = parse_date(d)
    if day is None:
        return "bad_date", None
    number = parse_id(ident)
    if number is None:
        return "bad_number", None
    if campaign == "":
        return "empty_campaign", None
    value = parse_number(vp)
    if value is None:
        return "bad_number", None
    if not 0.0 <= value <= 1.0:
        return "out_of_range", None
    return None, (day, number, campaign, video, value)
