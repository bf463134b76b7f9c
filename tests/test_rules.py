"""A line's verdict depends on that line alone (docs/interface.md, Inputs).

`rules.verdict` is the plain-Python definition of the rules. `parse_block` must give every line exactly that
verdict — the same reason for a rejected line, the same values for a row — whether the line is alone, in a block
of clean lines, or in a block with bad lines (which sends the block down the careful path). Hypothesis mixes
valid lines of every kind (blank padding, quoting, leading zeros, 19-digit ids, exponents, CRLF, empty video ids,
unicode) with invalid ones (bad dates, hex or overflowing ids, nan, inf, 1e400, wrong field counts, open quotes,
stray CRs, bad UTF-8).
"""
from __future__ import annotations

import csv
import math
from datetime import date

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipeline.read import rules
from pipeline.read.parse import parse_block

INT64_MAX = 2**63 - 1
BLANK = st.sampled_from(["", "", "", " ", "  ", "\t", " \t"])


@st.composite
def padded(draw, text: str) -> str:
    return draw(BLANK) + text + draw(BLANK)


@st.composite
def date_field(draw) -> str:
    if draw(st.booleans()):
        d = draw(st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)))
        month, day = (f"{d.month:02d}", f"{d.day:02d}") if draw(st.booleans()) else (str(d.month), str(d.day))
        return draw(padded(f"{month}/{day}/{d.year:04d}"))
    return draw(st.sampled_from(["13/01/2019", "02/30/2019", "2019-01-01", "", "01/01/19", "01/ 02/2019",
                                 "0/1/2019", "01/01/2019x", "\ufeff01/01/2019", "1/1/0000", "١/1/2019"]))


@st.composite
def id_field(draw) -> str:
    if draw(st.booleans()):
        n = draw(st.one_of(st.integers(-INT64_MAX - 1, INT64_MAX), st.sampled_from([0, INT64_MAX, -INT64_MAX - 1])))
        text = str(n)
        if draw(st.booleans()):  # leading zeros keep it valid
            zeros = "0" * draw(st.integers(1, 5))
            text = "-" + zeros + text[1:] if text.startswith("-") else zeros + text
        return draw(padded(text))
    return draw(st.sampled_from(["+5", "0x10", "0X1F", "1.0", "", "9223372036854775808", "-9223372036854775809",
                                 "99999999999999999999", "1e3", "５", "- 5", "5 5", "nan", "-", "0b1"]))


@st.composite
def vp_field(draw) -> str:
    if draw(st.booleans()):
        x = draw(st.floats(0.0, 1.0))
        text = draw(st.sampled_from([repr(x), f"{x:.4f}", f"{x:e}", f"{x:.3E}", f"+{x!r}"]))
        text = draw(st.sampled_from([text, ".5", "5e-1", "1", "1.", "0", "-0", "0.50000", "1e-400", "00.25"]))
        return draw(padded(text))
    return draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1.5", "-0.1", "1e400", "abc", "",
                                 "0.5.5", ".", "1e", "+-0.5", "1_0", "0x1p-3", "0.5f", "1.01", "2"]))


TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ_09 -é€😀,\"")), max_size=8)


def quote(field: str, force: bool) -> str:
    if force or any(c in field for c in ',"') or field.startswith(" "):
        return '"' + field.replace('"', '""') + '"'
    return field


@st.composite
def line(draw) -> bytes:
    """One line with its line break (or none at the very end, decided by the caller)."""
    fields = [draw(date_field()), draw(id_field()),
              draw(st.one_of(TEXT.filter(bool), st.just(""))), draw(TEXT), draw(vp_field())]
    quoted = [quote(f, draw(st.booleans()) and draw(st.booleans())) if i in (2, 3) or draw(st.integers(0, 4)) == 0
              else f for i, f in enumerate(fields)]
    # unquoted numbers/dates with a comma or quote in them would be a different line: keep them unquoted only
    # when they are plain
    quoted = [q if ("," not in q and '"' not in q) or q.startswith('"') else quote(q, True) for q in quoted]
    text = ",".join(quoted)
    damage = draw(st.integers(0, 9))
    if damage == 0:
        text = ",".join(quoted[: draw(st.integers(0, 4))])  # too few fields
    elif damage == 1:
        text += "," + draw(TEXT)  # too many
    elif damage == 2:
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + "\r" + text[pos:]  # a stray CR
    elif damage == 3:
        text += ',"open'  # a quote left open
    data = text.encode("utf-8")
    if damage == 4:
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82"])) + data[pos:]
    return data + draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))


def expected(lines: list[bytes], offset: int = 0):
    """What the rules say: {offset: reason} of rejected lines and the sorted rows."""
    bad, rows, pos = {}, [], offset
    for ln in lines:
        content = ln[:-1] if ln.endswith(b"\n") else ln
        reason, values = rules.verdict(content)
        if reason:
            bad[pos] = reason
        else:
            rows.append(values)
        pos += len(ln)
    return bad, sorted(rows, key=repr)


def actual(lines: list[bytes], offset: int = 0):
    parsed = parse_block(b"".join(lines), offset)
    assert parsed.lines == len(lines)
    rows = [tuple(r.values()) for r in parsed.rows.to_pylist()]
    return dict(zip(parsed.bad_offsets, parsed.bad_reasons)), sorted(rows, key=repr)


def same(a, b) -> bool:
    """Rows equal, floats bit for bit (-0.0 and 0.0 apart too)."""
    return len(a) == len(b) and all(
        all((math.copysign(1, x) == math.copysign(1, y) and x == y) if isinstance(x, float) else x == y
            for x, y in zip(r, s)) for r, s in zip(a, b))


CLEAN = [b"01/01/2019,50000,campaign_00,video_0,0.5\n", b"02/02/2020,50018,campaign_08,video_0,0.33\n"] * 3
DIRTY = [b"01/01/2019,50000,campaign_00,video_0,0.5\n", b"not a line at all\n", b"13/13/2019,1,c,v,0.5\n"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line(), min_size=1, max_size=12), st.booleans())
@example([b"01/01/2019, 9223372036854775807 ,c,v, 1e-1 \n", b"bad\n"], False)
@example([b'"01/01/2019","5","c","v","0.5"\n', b"01/01/2019,0x10,c,v,0.5\n"], True)
def test_every_line_gets_its_own_verdict(lines, last_without_newline):
    if last_without_newline and lines[-1].endswith(b"\n"):
        lines[-1] = lines[-1].rstrip(b"\r\n")
        assume(lines[-1])  # a stream's last line without a newline is never empty
    want_bad, want_rows = expected(lines, 1000)
    got_bad, got_rows = actual(lines, 1000)
    assert got_bad == want_bad
    assert same(got_rows, want_rows)


@settings(max_examples=200, deadline=None)
@given(line())
def test_a_line_has_the_same_verdict_alone_in_a_clean_block_and_in_a_dirty_block(one):
    want = rules.verdict(one.rstrip(b"\n"))
    for before, after in (([], []), (CLEAN, CLEAN), (DIRTY, CLEAN), (CLEAN, DIRTY), (DIRTY, DIRTY)):
        lines = before + [one] + after
        bad, rows = actual(lines)
        offset = sum(len(x) for x in before)
        assert bad.get(offset) == want[0], (before is CLEAN, after is CLEAN)
        if want[0] is None:
            assert any(same([r], [want[1]]) for r in rows)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab ,"\t')), max_size=14))
def test_fields_split_like_pythons_csv_module(text):
    fields = rules.split_fields(text)
    if fields is None:  # a quote left open at the end of the line
        with pytest.raises(csv.Error):
            next(csv.reader([text], strict=True))
    else:
        assert fields == next(csv.reader([text])) if text else fields == [""]


def test_the_users_lines_and_edge_values():
    assert rules.verdict(b"01/01/2019,50000,campaign_00,video_0,0.5")[1] == (
        date(2019, 1, 1), 50000, "campaign_00", "video_0", 0.5)
    assert rules.verdict(b"01/01/2019,9223372036854775807,c,v,1")[0] is None
    assert rules.verdict(b"01/01/2019,9223372036854775808,c,v,1")[0] == "bad_number"
    assert rules.verdict(b"01/01/2019,-9223372036854775808,c,v,1")[0] is None
    assert rules.verdict(b" 01/01/2019 , 5 ,c,v, 0.5 ")[1][1:] == (5, "c", "v", 0.5)  # blanks around numbers
    assert rules.verdict(b"01/01/2019,5, c ,v,0.5")[1][2] == " c "  # strings kept as written
    assert rules.verdict(b"01/01/2019,0x10,c,v,0.5")[0] == "bad_number"
    assert rules.verdict(b"01/01/2019,+5,c,v,0.5")[0] == "bad_number"
    assert rules.verdict(b"01/01/2019,5,c,v,nan")[0] == "bad_number"
    assert rules.verdict(b"01/01/2019,5,c,v,1e400")[0] == "out_of_range"
    assert rules.verdict(b"02/30/2019,5,c,v,0.5")[0] == "bad_date"
    assert rules.verdict(b"01/01/2019,5,,v,0.5")[0] == "empty_campaign"
    assert rules.verdict(b'01/01/2019,5,"c,d",v,0.5')[1][2] == "c,d"
    assert rules.verdict(b'01/01/2019,5,"c\rd",v,0.5')[0] == "field_count"  # a line break inside quotes
    assert rules.verdict(b'01/01/2019,5,c,v,"0.5')[0] == "field_count"
    assert rules.verdict(b"01/01/2019,5,c\xff,v,0.5")[0] == "encoding"
    assert rules.verdict(b"01/01/2019,5,c,v,0.5\r")[0] is None  # CRLF


def test_valid_rows_are_kept_whatever_their_neighbours():
    """The defect this guards against: valid 19-digit and blank-padded ids were quarantined when their block
    held one bad line (the fallback applied stricter checks than the fast path)."""
    good = [b"01/01/2019,9223372036854775807,c,v,0.5\n", b"01/01/2019, 42 ,c,v, 0.25 \n",
            b"01/01/2019,0000000000000000000007,c,v,1e-1\n", b'"01/01/2019","-8","c","v","0.5"\n']
    for block in (good, good + [b"a bad line\n"], [b"a bad line\n"] + good):
        bad, rows = actual(block)
        assert len(rows) == 4, block
        assert len(bad) == len(block) - 4


def test_an_all_quoted_block_stays_on_the_typed_path():
    from pipeline.read import parse

    block = b'"01/01/2019","5","campaign_00","video_0","0.5"\r\n' * 100
    assert parse._parse_typed(block, 0, 65536) is not None
    assert parse_block(block, 0).rows.num_rows == 100


def test_a_byte_that_is_not_utf8_in_any_text_column_keeps_the_block_off_the_typed_path():
    """Arrow parses without its UTF-8 check; the typed path checks each column's distinct values instead."""
    from pipeline.read import parse

    good = [b"01/01/2019,%d,campaign_%02d,video_%d,0.5\n" % (i, i % 7, i % 3) for i in range(200)]
    for bad in (b"01/01/2019\xff,1,c,v,0.5\n", b"01/01/2019,1,c\xc3,v,0.5\n", b"01/01/2019,1,c,v\xe2\x82,0.5\n"):
        lines = good[:100] + [bad] + good[100:]
        assert parse._parse_typed(b"".join(lines), 0, 65536) is None, bad
        assert actual(lines) == expected(lines)
        assert list(actual(lines)[0].values()) == ["encoding"]
    assert parse._parse_typed(b"".join(good), 0, 65536) is not None


def test_a_big_dirty_block_tried_again_in_pieces_gives_every_line_its_own_verdict():
    """Above 2 MiB, a block the typed path refuses is retried in ~1 MiB pieces (only refused pieces go the careful
    way): the verdicts are still the rules', line by line."""
    import random

    from pipeline.read import parse

    rng = random.Random(5)
    good = [b"01/01/2019,%d,campaign_%02d,video_1,0.%d\n" % (i, i % 50, i % 10) for i in range(80_000)]
    bad = [b"01/01/2019,x,c,v,0.5\n", b"13/01/2019,1,c,v,0.5\n", b'"01/01/2019,1,c,v,0.5\n', b"01/01/2019,1,c,v,2\n",
           b"01/01/2019,0x10,c,v,0.5\n", b"\n"]
    lines = list(good)
    for _ in range(40):
        lines.insert(rng.randrange(len(lines)), rng.choice(bad))
    assert len(b"".join(lines)) > 2 * parse.CHUNK
    assert actual(lines, 7) == expected(lines, 7)
