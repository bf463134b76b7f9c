"""Where bytes live: local paths and s3:// URLs behind one fsspec interface, and source fingerprints.

The S3 endpoint comes from the standard AWS_ENDPOINT_URL, so the same code talks to AWS or a loopback server.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec

from .errors import UsageError

GZIP_MAGIC = b"\x1f\x8b"


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URL."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint}
        fs = fsspec.filesystem("s3", **kwargs)
        return fs, url.split("://", 1)[1]
    if protocol != "file":
        raise UsageError(f"unsupported URL scheme {protocol!r} in {url} (use a local path or s3://)")
    path = url.split("://", 1)[1] if url.startswith("file://") else url
    return fsspec.filesystem("file"), os.path.abspath(path)


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def full_url(url: str) -> str:
    """Canonical form used in fingerprints and records: absolute path or s3://bucket/key."""
    if is_remote(url):
        return "s3://" + url.split("://", 1)[1]
    return filesystem(url)[1]


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
