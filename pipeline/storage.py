"""Where bytes live: local paths and s3:// URLs behind one fsspec interface.

The floor under read/, table/ and report/: URLs, filesystems and (later) cloud-error translation and retries
live here and nowhere else. The S3 endpoint comes from the standard AWS_ENDPOINT_URL, so the same code talks to
AWS or to a loopback server.
"""
from __future__ import annotations

import os

import fsspec

from .errors import UsageError


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


def iceberg_io_properties() -> dict:
    """FileIO properties for pyiceberg (which writes manifests and metadata with its own S3 client)."""
    props = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        props["s3.endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        props["s3.region"] = region
    return props
