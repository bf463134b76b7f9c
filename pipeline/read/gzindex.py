"""Seek-point indexes of gzip streams, so many tasks can read one gzip file at once.

One index pass per file (a Dask task) inflates the whole stream with rapidgzip, which checks every member's
CRC and size, and exports an indexed_gzip-format ("GZIDX" v1) index. The index is cached under the warehouse,
keyed by the source fingerprint, because input buckets may be read-only. A read task needs only the seek points
its range spans (about range-size / index-spacing + 2 of them, 32 KiB each): `sub_index` cuts them out of the
cached file with one ranged read, so per-task overhead does not grow with the file.
"""
from __future__ import annotations

import io
import os
import struct
import tempfile
from dataclasses import dataclass, replace

import rapidgzip

from ..errors import LoadError
from .sources import Source
from ..storage import filesystem, is_remote, scratch_directory

_MAGIC = b"GZIDX\x01"
_HEADER = struct.Struct("<QQIII")  # compressed size, uncompressed size, spacing, window size, points
_POINT = struct.Struct("<QQBB")  # compressed byte offset, uncompressed offset, bits, has-window flag


@dataclass(frozen=True)
class SeekPoint:
    compressed: int
    uncompressed: int
    bits: int
    window_offset: int  # byte offset of this point's window in the cached index file (-1: no window)


@dataclass(frozen=True)
class GzipIndex:
    """What the driver needs to plan ranges: the points, and where their windows live."""

    cache_url: str
    flags: int
    compressed_size: int
    uncompressed_size: int
    spacing: int
    window_size: int
    points: tuple[SeekPoint, ...]


def cache_url(warehouse: str, source: Source) -> str:
    return f"{warehouse.rstrip('/')}/_cache/gzindex/{source.fingerprint}.gzidx"


def read_index(url: str) -> GzipIndex:
    """A cached index's header and point table, read without its windows: those are 32 KiB per point (~0.3 GB
    for a 12 GB gzip), and each read task fetches only the ones of its range (`sub_index`)."""
    fs, path = filesystem(url)
    size = fs.size(path)
    head = fs.cat_file(path, start=0, end=min(size, 7 + _HEADER.size))
    if len(head) < 7 + _HEADER.size:
        raise ValueError(f"index {url} has {size} bytes, too few for a header")
    table_end = 7 + _HEADER.size + _HEADER.unpack_from(head, 7)[4] * _POINT.size
    return parse_index(head + fs.cat_file(path, start=len(head), end=min(size, table_end)), url, size)


def parse_index(data: bytes, url: str, size: int | None = None) -> GzipIndex:
    """Parse the GZIDX header and point table (windows stay in the file). `data` is the whole file, or (with
    the file's `size`) its head up to the end of the point table."""
    if data[:6] != _MAGIC:
        raise ValueError(f"not a GZIDX v1 index: {url}")
    flags = data[6]
    csize, usize, spacing, wsize, npoints = _HEADER.unpack_from(data, 7)
    offset = 7 + _HEADER.size
    raw = []
    for _ in range(npoints):
        raw.append(_POINT.unpack_from(data, offset))
        offset += _POINT.size
    points = []
    for c, u, bits, has_window in raw:
        points.append(SeekPoint(c, u, bits, offset if has_window else -1))
        offset += wsize if has_window else 0
    size = len(data) if size is None else size
    if offset != size:
        raise ValueError(f"index {url} has {size} bytes, expected {offset}")
    return GzipIndex(url, flags, csize, usize, spacing, wsize, tuple(points))


def sub_index(index: GzipIndex, points: tuple[SeekPoint, ...]) -> bytes:
    """A GZIDX index of just `points` (those covering one range): enough for rapidgzip to seek to the first
    and to inflate at full speed up to the last. Past its last point rapidgzip still reads correctly, but
    ~10x slower (it must decode without a known window), so a range gets every point it spans."""
    windows = {}
    with_window = [p for p in points if p.window_offset >= 0]
    if with_window:
        fs, path = filesystem(index.cache_url)
        first, last = with_window[0].window_offset, with_window[-1].window_offset + index.window_size
        blob = fs.cat_file(path, start=first, end=last)  # windows of consecutive points are contiguous
        windows = {p: blob[p.window_offset - first:p.window_offset - first + index.window_size] for p in with_window}
    return b"".join([
        _MAGIC,
        bytes([index.flags]),
        _HEADER.pack(index.compressed_size, index.uncompressed_size, index.spacing, index.window_size, len(points)),
        *(_POINT.pack(p.compressed, p.uncompressed, p.bits, 1 if p in windows else 0) for p in points),
        *(windows[p] for p in points if p in windows),
    ])


class Reader:
    """A rapidgzip reader that closes the S3 file object with it; the line splitter inflates into its own
    buffers with `readinto`."""

    def __init__(self, source: Source, **kw):
        self._file = source.open() if is_remote(source.url) else None
        self._gz = rapidgzip._RapidgzipFile(self._file if self._file else filesystem(source.url)[1], **kw)

    def __getattr__(self, name):  # readinto, seek, block_offsets, export_index, ...
        return getattr(self._gz, name)

    def import_index(self, data: bytes) -> None:
        """Import a GZIDX index from memory. rapidgzip 0.16 keeps references to the file object it imports from
        after the import (and after close): left open, a range's sub-index (~1.2 MB) stayed in its worker for
        good (computed: ~0.4 GB over a 12 GB gzip's ~320 ranges, split among the workers that read them).
        Closed here, its buffer goes (the object kept is ~13 KiB). The S3 file a reader wraps is closed with it,
        which drops its read-ahead cache the same way."""
        source = io.BytesIO(data)
        try:
            self._gz.import_index(source)
        finally:
            source.close()

    def close(self) -> None:
        self._gz.close()
        if self._file is not None:
            self._file.close()


def build_index(source: Source, warehouse: str, spacing: int, threads: int = 1) -> GzipIndex:
    """The index pass (runs as a task): inflate everything, check CRCs and completeness, cache the index.

    With `threads` > 1 rapidgzip's parallel decoder inflates chunks of the stream on that many threads (the task
    holds one of its worker's slots but uses that many cores): the pass a cold load of a big file waits for, made
    shorter on a node with cores to spare. On 2 cores it is slower than one thread (README, Performance)."""
    url = cache_url(warehouse, source)
    fs, path = filesystem(url)
    if fs.exists(path):
        return read_index(url)
    # the index goes to a local file, never into memory: its windows are 32 KiB per point, linear in the file
    # (33 MB for 4 GB of CSV; held twice, in a BytesIO and its value, they would be ~0.7 GB for a 12 GB gzip).
    # A local cache gets the file by a rename beside it; S3 by one PUT from the worker's local disk (an object
    # appears whole or not at all: no temporary key to copy and delete)
    remote = is_remote(url)
    if not remote:
        fs.makedirs(fs._parent(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gzindex-", dir=scratch_directory() if remote else fs._parent(path)) \
            as tmp:
        local = os.path.join(tmp, "index.gzidx")
        reader = Reader(source, parallelization=threads, chunk_size=spacing)
        try:
            buf = bytearray(4 << 20)
            while reader.readinto(buf):
                pass
            offsets = reader.block_offsets()
            with open(local, "wb") as f:
                reader.export_index(f)
        except (ValueError, RuntimeError) as e:
            raise LoadError(f"{source.url}: truncated or corrupt gzip stream ({e})") from None
        finally:
            reader.close()
        end_bits = max(offsets) if offsets else 0
        if end_bits != 8 * source.size:
            raise LoadError(
                f"{source.url}: gzip stream ends at byte {end_bits // 8} of {source.size}: "
                "the file is truncated or has trailing garbage"
            )
        index = replace(read_index(local), cache_url=url)  # validate before caching
        if remote:
            fs.put_file(local, path)
        else:
            os.replace(local, path)
    return index


def open_at(source: Source, index: GzipIndex, points: tuple[SeekPoint, ...], offset: int) -> Reader:
    """A rapidgzip reader positioned at uncompressed `offset`, knowing only `points` (the first one at or
    before `offset`)."""
    reader = Reader(source, parallelization=1)
    try:
        reader.import_index(sub_index(index, points))
        reader.seek(offset)
    except Exception:
        reader.close()
        raise
    return reader
