"""Shared fixtures: a real loopback S3 (moto's server), small input files, a LocalCluster.

AWS calls go through boto3/s3fs exactly as in production, pointed at 127.0.0.1 by AWS_ENDPOINT_URL.
"""
from __future__ import annotations

import gc
import gzip
import os
import signal
import uuid

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3/Glue/CloudWatch server on a free loopback port, shared by the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = old
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket per test (name returned); fsspec's instance cache is cleared so no stale listings leak."""
    import boto3
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def client():
    """One 2-worker LocalCluster for the session (process workers, as in production)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="4GiB") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def settings(tmp_path):
    """Settings with a fresh local warehouse and small read ranges, so small files still get many read tasks."""
    import dask.config

    from pipeline.config import load_settings

    small = {"impressions.read.range-size": "256 KiB", "impressions.read.index-spacing": "64 KiB",
             "impressions.read.small-file": "16 KiB", "impressions.read.block-size": "32 KiB",
             "impressions.read.max-line": "64 KiB", "impressions.buckets": 8}
    with dask.config.set(small):
        return load_settings(warehouse=str(tmp_path / "warehouse"))


def write_gz(path, text: bytes | str, members: int = 1) -> str:
    """Write `text` as a gzip file of `members` concatenated members (split on byte boundaries)."""
    data = text.encode() if isinstance(text, str) else text
    step = max(1, -(-len(data) // members)) if data else 1
    with open(path, "wb") as f:
        for i in range(members):
            f.write(gzip.compress(data[i * step:(i + 1) * step]))
    return str(path)


def swallowed_sigterm() -> None:
    """A real SIGTERM whose `Interrupted` is raised inside a gc callback, where Python prints and drops it."""
    def fire(phase, info):
        if phase == "start":
            gc.callbacks.remove(fire)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the callback
                pass

    gc.callbacks.append(fire)
    gc.collect()


from faultproxy import fault_proxy, fault_proxy_server  # noqa: F401,E402  (the fault-injecting S3 proxy)
