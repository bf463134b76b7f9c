"""Plan a source into byte ranges of its uncompressed stream, and read exactly the lines a range owns.

Ownership rule (every line exactly once, whatever the range boundaries): range [s, e) owns the first line of
the stream if s == 0, and every line that starts right after a newline at a position t with s <= t < e. A task
therefore never needs bytes before s, and reads past e only to finish the line it owns there.
Lines longer than `max_line` are never held whole: they are cut, quarantined as `line_too_long`, and skipped.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from typing import Iterator

from .gzindex import GzipIndex, SeekPoint, open_at

BOM = b"\xef\xbb\xbf"
_TAIL_STEP = 64 * 1024


@dataclass(frozen=True)
class ByteRange:
    """A unit of read work, plain data planned on the driver before any task runs."""

    source_index: int  # position of the source in the load
    number: int  # position of the range within its source
    start: int  # uncompressed offsets [start, end); end None = to the end of the stream
    end: int | None
    mode: str  # "indexed" (gzip + seek points), "stream" (gzip from its start, ISA-L) or "plain" (not gzip)
    index: GzipIndex | None = None  # header and cache location only (points stripped, to keep tasks small)
    points: tuple[SeekPoint, ...] = ()  # the seek points from `start` to just past `end`

    @property
    def key(self) -> str:
        return f"{self.source_index}:{self.number}"


def read_mode(size: int, gzip: bool, small_file: int) -> str:
    """How a source is read: "plain" (not gzip: ranges at any offset), "stream" (a small gzip file: one ISA-L
    task from its start) or "indexed" (a big gzip file: ranges at the seek points of its index)."""
    if not gzip:
        return "plain"
    return "stream" if size < small_file else "indexed"


def plan_indexed(source_index: int, index: GzipIndex, range_size: int, start: int = 0,
                 first_number: int = 0, tail: int = 0) -> list[ByteRange]:
    """Ranges of about `range_size` uncompressed bytes over [start, end of stream), cut at seek points.

    `start` need not be a seek point (the part before it may have been read by a streaming head task while
    the index was built): the first range opens at the point before it and inflates forward to it. The last
    `tail` bytes are cut into ranges of half the size, so that the workers' last tasks end close together.
    """
    points = [p for p in index.points if p.uncompressed < index.uncompressed_size]
    if not points:  # an empty stream still gets one (empty) range, so it is accounted for
        return [ByteRange(source_index, first_number, start, None, "stream")] if start == 0 else []
    if start >= index.uncompressed_size:
        return []
    bounds = [start]
    for p in points:
        step = range_size if index.uncompressed_size - bounds[-1] > tail else max(1, range_size // 2)
        if p.uncompressed - bounds[-1] >= step:
            bounds.append(p.uncompressed)
    header = replace(index, points=())
    offsets = [p.uncompressed for p in points]
    ranges = []
    for i, lo in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else None
        first = bisect_right(offsets, lo) - 1  # the last point at or before the range's start
        last = bisect_left(offsets, end) + 1 if end is not None else len(points) - 1
        span = tuple(points[first:last + 1])  # one point past `end` covers the line that crosses it
        ranges.append(ByteRange(source_index, first_number + i, lo, end, "indexed", header, span))
    return ranges


def plan_plain(source_index: int, size: int, range_size: int) -> list[ByteRange]:
    n = max(1, -(-size // range_size))
    return [
        ByteRange(source_index, i, i * range_size, (i + 1) * range_size if i + 1 < n else None, "plain")
        for i in range(n)
    ]


def open_range(source, r: ByteRange):
    """A binary stream positioned at r.start."""
    if r.mode == "indexed":
        return open_at(source, r.index, r.points, r.start)
    if r.mode == "stream":
        from isal import igzip

        return igzip.GzipFile(fileobj=source.open(), mode="rb")
    f = source.open()
    f.seek(r.start)
    return f


@dataclass
class LongLine:
    offset: int
    prefix: bytes


def owned_blocks(stream, start: int, end: int | None, block_size: int, max_line: int,
                 keep_bytes: int = 65536) -> Iterator[tuple[int, bytearray] | LongLine]:
    """Yield (offset, bytes of complete owned lines) blocks, or LongLine markers, from a stream at `start`.

    Each block is a new bytearray the caller keeps: the stream inflates straight into it (`readinto`), behind
    the partial line the previous block left, so only that partial line is ever copied (slicing and concatenating
    `bytes` cost three copies of every byte, and the page faults of each new buffer).
    The last line of the stream may lack its newline; it is yielded as is.
    """
    end = float("inf") if end is None else end
    pos = start  # stream offset of buf[0]
    buf, got = _fill(stream, bytearray(), block_size)
    if start == 0:
        if buf.startswith(BOM):
            del buf[:3]  # deleting at the front of a bytearray moves its start, not its bytes
            pos = 3
    else:
        # Skip to just after the first newline at a position in [start, end); none means we own nothing.
        while True:
            if not got:
                return
            limit = min(len(buf), int(end - pos)) if end != float("inf") else len(buf)
            i = buf.find(b"\n", 0, limit)
            if i >= 0:
                del buf[:i + 1]
                pos += i + 1
                break
            if pos + len(buf) >= end:
                return
            pos += len(buf)
            buf, got = _fill(stream, bytearray(), block_size)
    while True:
        # The line owned last is the one that starts at or before `end`: it ends at the first newline >= end.
        j = buf.find(b"\n", max(0, int(min(end, pos + len(buf)) - pos))) if end != float("inf") else -1
        if j >= 0:
            del buf[j + 1:]
            yield pos, buf
            return
        k = buf.rfind(b"\n")
        if k >= 0:
            block, buf = buf, buf[k + 1:]  # the partial line after the last newline starts the next block
            del block[k + 1:]
            yield pos, block
            pos += k + 1
        if len(buf) > max_line:
            # Quarantine the line by its prefix and discard the rest of it without buffering.
            yield LongLine(pos, bytes(buf[:keep_bytes]))
            pos += len(buf)
            while True:
                buf, got = _fill(stream, bytearray(), block_size)
                if not got:
                    return
                i = buf.find(b"\n")
                if i >= 0:
                    pos += i + 1
                    del buf[:i + 1]
                    if pos - 1 >= end:  # the long line's newline lies past the range: it was our last line
                        return
                    break
                pos += len(buf)
            continue
        # Near `end` only the last owned line is missing: read it in small, doubling steps (reading far past
        # the range leaves its seek points, where inflating is ~10x slower).
        ahead = end - (pos + len(buf))
        buf, got = _fill(stream, buf, block_size if ahead >= block_size else int(max(ahead, _TAIL_STEP, len(buf))))
        if not got:
            if buf:
                yield pos, buf
            return


def _fill(stream, carry: bytearray, n: int) -> tuple[bytearray, int]:
    """A new buffer holding `carry` and then up to `n` more bytes of the stream, read in place; and how many
    were read (0: the stream has ended)."""
    buf = bytearray(len(carry) + n)
    buf[:len(carry)] = carry
    with memoryview(buf) as view, view[len(carry):] as free:
        got = stream.readinto(free) or 0
    del buf[len(carry) + got:]
    return buf, got
