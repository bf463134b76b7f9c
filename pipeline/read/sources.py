"""Input files: what a source is, and how a source is recognised by its content.

A source's fingerprint is derived from its size and a content digest — the ETag on S3, a SHA-256 of the bytes
locally (about 1.2 GB/s on one core) — never from its path or mtime. So a touched or re-downloaded copy of a
loaded file is the same source, and a path that now holds other bytes is a different one. The fingerprint keys
load ids, the gzip index cache and the table's lineage.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import LoadError, UsageError
from ..storage import filesystem, full_url, is_remote, translate_error

GZIP_MAGIC = b"\x1f\x8b"
_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class Source:
    """One input file as it was when the load started."""

    url: str
    size: int
    version: str  # ETag on S3, mtime (ns) locally: what the file was when it was read
    digest: str  # content: "etag:<ETag>" on S3, "sha256:<hex>" locally

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.size, self.digest]).encode()).hexdigest()[:24]

    def to_dict(self) -> dict:
        return {"path": self.url, "size": self.size, "digest": self.digest, "fingerprint": self.fingerprint}

    def open(self, block_size: int = 8 << 20):
        fs, path = filesystem(self.url)
        if is_remote(self.url):
            return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        return open(path, "rb")


def stat(url: str) -> dict:
    """The file's info; a missing or unreadable file, or a directory, is a usage error naming it."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise UsageError(f"input not found: {url}") from None
    except PermissionError as e:
        raise UsageError(str(translate_error(e, url, "read"))) from None
    if info.get("type") == "directory":
        raise UsageError(f"input is a directory, not a file: {url}")
    return info


def refuse_empty(url: str, size: int, allow_empty: bool) -> None:
    """A 0-byte input is almost always a failed or unfinished upload: loading it would record the source as
    loaded, with no rows, and the real file would then look like a changed one. Refused unless allowed."""
    if size == 0 and not allow_empty:
        raise LoadError(f"{url} is empty (0 bytes: a failed or unfinished upload?); nothing was loaded "
                        f"(--allow-empty loads it as a source without rows)")


def describe(url: str) -> Source:
    """A source with its content digest (local files are read once to hash them)."""
    info = stat(url)
    if is_remote(url):
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        if not etag:
            raise UsageError(f"{url}: the object has no ETag, so its content cannot be recognised")
        return Source(url=full_url(url), size=int(info["size"]), version=etag, digest=f"etag:{etag}")
    path = filesystem(url)[1]
    before = os.stat(path)
    digest = _sha256(path)
    after = os.stat(path)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise UsageError(f"{url} changed while it was being read; load it when it is complete")
    return Source(url=full_url(url), size=after.st_size, version=str(after.st_mtime_ns), digest=f"sha256:{digest}")


def describe_all(urls: list[str | Source]) -> list[Source]:
    """Describe several sources at once (local hashing runs in parallel threads; hashlib releases the GIL).
    A source already described is kept as it is."""
    if len(urls) <= 1:
        return [_described(u) for u in urls]
    with ThreadPoolExecutor(min(8, len(urls))) as pool:
        return list(pool.map(_described, urls))


def describe_in_background(urls: list[str]) -> Future:
    """describe_all on a thread of its own, so a command hashes its local sources (~0.2 s per 250 MB) while its
    cluster starts, instead of after; the future raises what describe_all would have. A daemon thread, not an
    executor's: Python joins executor threads at exit, so a Ctrl-C would wait for a 12 GB file's hash to end."""
    described: Future = Future()

    def run() -> None:
        try:
            described.set_result(describe_all(urls))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the result
            described.set_exception(e)

    threading.Thread(target=run, name="describe-sources", daemon=True).start()
    return described


def _described(url: str | Source) -> Source:
    return url if isinstance(url, Source) else describe(url)


def refuse_duplicates(sources: list[Source]) -> None:
    """The same content under two names in one command is a usage error (it would be read twice)."""
    seen: dict = {}
    for s in sources:
        if s.fingerprint in seen:
            raise UsageError(f"the same content is given twice: {seen[s.fingerprint]} and {s.url}")
        seen[s.fingerprint] = s.url


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_BLOCK):
            h.update(chunk)
    return h.hexdigest()


def is_gzip(source: Source) -> bool:
    with source.open(block_size=1 << 16) as f:
        return f.read(2) == GZIP_MAGIC
