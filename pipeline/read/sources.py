"""Input files: what a source is (its URL, size and version when the load started) and its fingerprint."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..errors import UsageError
from ..storage import filesystem, full_url, is_remote

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Source:
    """One input file as it was when the load started; the fingerprint keys caches and load ids."""

    url: str
    size: int
    version: str  # ETag on S3, mtime (ns) locally

    @property
    def fingerprint(self) -> str:
        raw = json.dumps([self.url, self.size, self.version]).encode()
        return hashlib.sha256(raw).hexdigest()[:24]

    def to_dict(self) -> dict:
        return {"path": self.url, "size": self.size, "version": self.version, "fingerprint": self.fingerprint}

    def open(self, block_size: int = 8 << 20):
        fs, path = filesystem(self.url)
        if is_remote(self.url):
            return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        return open(path, "rb")


def describe(url: str) -> Source:
    """Stat a source; a missing file is a usage error naming it."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise UsageError(f"input not found: {url}") from None
    except PermissionError:
        raise UsageError(f"input not readable (permission denied): {url}") from None
    if info.get("type") == "directory":
        raise UsageError(f"input is a directory, not a file: {url}")
    if is_remote(url):
        version = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "").strip('"')
    else:
        version = str(os.stat(path).st_mtime_ns)
    return Source(url=full_url(url), size=int(info["size"]), version=version)


def is_gzip(source: Source) -> bool:
    with source.open(block_size=1 << 16) as f:
        return f.read(2) == GZIP_MAGIC
