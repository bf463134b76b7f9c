"""pipeline/storage.py: the S3 policy (impressions.s3.*), the clients it configures, error translation, retry().

Every error here is a real response: moto's server on loopback (NoSuchKey, NoSuchBucket, 404) or the fault proxy
in front of it (403 AccessDenied, 503 SlowDown, 500 InternalError, resets, slow answers), read by the real
boto3 / s3fs / pyarrow clients. Nothing in the client libraries is patched; `retry()` takes its own `sleep` and
`rand` so its schedule can be checked without waiting.
"""
from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import dask.config
import pytest
import yaml

from pipeline import storage
from pipeline.errors import UsageError


# ------------------------------------------------------------------ helpers

ONE_TRY = {"mode": "standard", "total_max_attempts": 1}  # botocore without its own retries: retry() alone


@pytest.fixture
def bucket(s3_endpoint):
    import boto3

    name = f"st-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="data/k.csv", Body=b"a,b\n1,2\n")
    return name


@pytest.fixture
def via_proxy(fault_proxy, monkeypatch):
    """AWS_ENDPOINT_URL points at the fault proxy for this test (our code reads it when it builds a client)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    yield fault_proxy


@pytest.fixture
def quick():
    """Small retry budgets, so tests of exhausted retries stay fast."""
    with dask.config.set({"impressions.s3.max-attempts": 3, "impressions.s3.base-backoff": "10ms",
                          "impressions.s3.max-backoff": "50ms", "impressions.s3.read-timeout": "2s",
                          "impressions.s3.connect-timeout": "2s"}):
        yield storage.policy()


def raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    pytest.fail("no exception")


def s3fs_fs():
    fs, _ = storage.filesystem("s3://x/y")
    fs.invalidate_cache()
    return fs


def arrow_io():
    from pyiceberg.io import load_file_io

    return load_file_io(storage.iceberg_io_properties(), "s3://x/")


# ------------------------------------------------------------------ 1. the policy: every key, from dask.config


def test_defaults_come_from_the_yaml_section_and_equal_the_code_fallbacks():
    shipped = yaml.safe_load((Path(storage.__file__).with_name("impressions.yaml")).read_text())
    assert shipped["impressions"]["s3"] == storage.S3_DEFAULTS
    p = storage.policy()
    assert p == storage.S3Policy(max_attempts=10, base_backoff=0.2, max_backoff=20.0, connect_timeout=10.0,
                                 read_timeout=60.0, retry_mode="standard")


@pytest.mark.parametrize("key, value, field, want", [
    ("max-attempts", 4, "max_attempts", 4),
    ("max-attempts", "7", "max_attempts", 7),
    ("base-backoff", "50ms", "base_backoff", 0.05),
    ("max-backoff", "2s", "max_backoff", 2.0),
    ("max-backoff", 3, "max_backoff", 3.0),
    ("connect-timeout", "1.5s", "connect_timeout", 1.5),
    ("read-timeout", "2 minutes", "read_timeout", 120.0),
    ("retry-mode", "adaptive", "retry_mode", "adaptive"),
])
def test_each_key_is_read_from_dask_config(key, value, field, want):
    with dask.config.set({f"impressions.s3.{key}": value}):
        assert getattr(storage.policy(), field) == want


def test_environment_overrides_reach_the_policy(monkeypatch):
    monkeypatch.setenv("DASK_IMPRESSIONS__S3__MAX_ATTEMPTS", "5")
    monkeypatch.setenv("DASK_IMPRESSIONS__S3__READ_TIMEOUT", "30s")
    dask.config.refresh()
    try:
        assert storage.policy().max_attempts == 5 and storage.policy().read_timeout == 30.0
    finally:
        monkeypatch.delenv("DASK_IMPRESSIONS__S3__MAX_ATTEMPTS")
        monkeypatch.delenv("DASK_IMPRESSIONS__S3__READ_TIMEOUT")
        dask.config.refresh()
    assert storage.policy().max_attempts == 10


@pytest.mark.parametrize("key, value", [
    ("max-attempts", 0), ("max-attempts", 101), ("max-attempts", "many"), ("max-attempts", True),
    ("max-attempts", 2.5), ("base-backoff", "soon"), ("max-backoff", "-1s"), ("connect-timeout", "0s"),
    ("read-timeout", "2 days"), ("retry-mode", "legacy"),
])
def test_bad_values_are_one_line_usage_errors_naming_the_key(key, value):
    with dask.config.set({f"impressions.s3.{key}": value}):
        with pytest.raises(UsageError, match=rf"impressions\.s3\.{key} must be"):
            storage.policy()


def test_backoff_is_capped_exponential_with_full_jitter():
    p = storage.S3Policy(max_attempts=10, base_backoff=0.1, max_backoff=1.0, connect_timeout=1, read_timeout=1,
                         retry_mode="standard")
    assert [p.backoff(n, rand=lambda: 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.backoff(3, rand=lambda: 0.0) == 0.0
    assert p.backoff(10_000, rand=lambda: 1.0) == 1.0  # no overflow, still capped
    waits = [p.backoff(4) for _ in range(200)]
    assert 0 <= min(waits) and max(waits) <= 1.0 and len(set(waits)) > 100  # jittered


# ------------------------------------------------------------------ 2. the clients get the policy


def test_every_client_gets_the_policy(s3_endpoint):
    with dask.config.set({"impressions.s3.max-attempts": 6, "impressions.s3.connect-timeout": "3s",
                          "impressions.s3.read-timeout": "7s", "impressions.s3.retry-mode": "adaptive"}):
        cfg = storage.boto_config()
        assert cfg.retries == {"mode": "adaptive", "total_max_attempts": 6}
        assert (cfg.connect_timeout, cfg.read_timeout) == (3.0, 7.0)
        glue = storage.boto_client("glue")
        assert glue.meta.endpoint_url == s3_endpoint
        assert glue.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 6}

        fs, path = storage.filesystem("s3://bkt/some/key")
        assert path == "bkt/some/key" and isinstance(fs, storage.S3FileSystem)
        assert fs.config_kwargs == {"retries": {"mode": "adaptive", "total_max_attempts": 6},
                                    "connect_timeout": 3.0, "read_timeout": 7.0}
        assert fs.client_kwargs == {"endpoint_url": s3_endpoint}
        assert fs.retries == storage.S3FS_BODY_ATTEMPTS

        props = storage.iceberg_io_properties()
        assert props["s3.endpoint"] == s3_endpoint
        assert (props["s3.connect-timeout"], props["s3.request-timeout"]) == ("3", "7")
        assert props["py-io-impl"] == "pipeline.storage.IcebergFileIO"
        strategy = storage.ArrowRetryStrategy()  # what pyiceberg instantiates from s3.retry-strategy-impl
        assert strategy.max_attempts == 6
        io = arrow_io()
        assert isinstance(io, storage.IcebergFileIO)
        assert props["s3.retry-strategy-impl"] == f"{storage.__name__}.{type(strategy).__name__}"


def test_glue_catalog_gets_the_policy(s3_endpoint):
    from pyiceberg.catalog.glue import GlueCatalog

    with dask.config.set({"impressions.s3.max-attempts": 4, "impressions.s3.retry-mode": "adaptive"}):
        props = storage.glue_properties()
        catalog = GlueCatalog("impressions", **{**props, "glue.endpoint": s3_endpoint, "glue.region": "us-east-1"})
    assert catalog.glue.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}


def test_catalog_properties_carry_the_fileio_properties(tmp_path):
    from pipeline.table.catalog import catalog_properties

    props = catalog_properties(str(tmp_path))
    for key, value in storage.iceberg_io_properties().items():
        assert props[key] == value


# ------------------------------------------------------------------ 3. retries of single requests, per client


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError")])
def test_each_client_retries_transient_answers(bucket, via_proxy, quick, status, code):
    """Two failures, then success: every client gets through with max-attempts 3."""
    rule = {"prefix": f"s3://{bucket}/data/k.csv", "status": status, "code": code, "times": 2}
    via_proxy.configure(rules=[rule])
    assert storage.boto_client("s3").get_object(Bucket=bucket, Key="data/k.csv")["Body"].read() == b"a,b\n1,2\n"
    via_proxy.configure(rules=[rule])
    assert s3fs_fs().cat_file(f"{bucket}/data/k.csv") == b"a,b\n1,2\n"
    via_proxy.configure(rules=[rule])
    with arrow_io().new_input(f"s3://{bucket}/data/k.csv").open() as f:
        assert f.read() == b"a,b\n1,2\n"
    assert via_proxy.stats()["counts"]["rules"] == 2


@pytest.mark.parametrize("fault", ["reset", "drop"])
def test_each_client_retries_broken_connections(bucket, via_proxy, quick, fault):
    url = f"s3://{bucket}/data/k.csv"
    rule = {"prefix": url, "methods": ["GET"], "fault": fault, "times": 2}
    if fault == "drop":
        rule["cut"] = "body"  # every header arrived, then the body broke off (RST)
    via_proxy.configure(rules=[rule])
    s3 = storage.boto_client("s3")
    if fault == "reset":
        assert s3.get_object(Bucket=bucket, Key="data/k.csv")["Body"].read() == b"a,b\n1,2\n"
    else:
        # botocore retries a request, not the reading of a body that broke off after the headers: that is a
        # whole operation to do again, storage.retry's job
        e = raised(lambda: s3.get_object(Bucket=bucket, Key="data/k.csv")["Body"].read())
        assert storage.is_transient(e), repr(e)
        via_proxy.configure(rules=[rule])
        body = storage.retry(lambda: s3.get_object(Bucket=bucket, Key="data/k.csv")["Body"].read(), url=url,
                             sleep=lambda s: None)
        assert body == b"a,b\n1,2\n"
    via_proxy.configure(rules=[rule])
    assert s3fs_fs().cat_file(f"{bucket}/data/k.csv") == b"a,b\n1,2\n"
    via_proxy.configure(rules=[rule])
    with arrow_io().new_input(f"s3://{bucket}/data/k.csv").open() as f:
        assert f.read() == b"a,b\n1,2\n"


def test_a_slow_answer_times_out_and_is_retried(bucket, via_proxy):
    with dask.config.set({"impressions.s3.read-timeout": "1s", "impressions.s3.max-attempts": 3}):
        rule = {"prefix": f"s3://{bucket}/data/k.csv", "methods": ["GET"], "fault": "delay", "times": 1}
        for read in (lambda: storage.boto_client("s3").get_object(Bucket=bucket, Key="data/k.csv")["Body"].read(),
                     lambda: s3fs_fs().cat_file(f"{bucket}/data/k.csv"),
                     lambda: arrow_io().new_input(f"s3://{bucket}/data/k.csv").open().read()):
            via_proxy.configure(delay_seconds=4, rules=[rule])
            t = time.monotonic()
            assert read() == b"a,b\n1,2\n"
            assert time.monotonic() - t < 3.9, "waited for the slow answer instead of timing out"


def test_a_server_that_never_answers_in_time_fails_in_bounded_time(bucket, via_proxy):
    url = f"s3://{bucket}/data/k.csv"
    with dask.config.set({"impressions.s3.read-timeout": "1s", "impressions.s3.max-attempts": 2}):
        via_proxy.configure(delay_seconds=3, rules=[{"prefix": url, "methods": ["GET"], "fault": "delay"}])
        t = time.monotonic()
        e = raised(lambda: arrow_io().new_input(url).open().read())
        assert time.monotonic() - t < 15
        t = storage.translate_error(e, url)
        assert isinstance(t, TimeoutError) and str(t).startswith(f"{url}: S3 did not answer in time"), t


# ------------------------------------------------------------------ 4. translation of real errors


def test_boto3_errors_from_moto(bucket, s3_endpoint):
    s3 = storage.boto_client("s3")
    e = raised(lambda: s3.get_object(Bucket=bucket, Key="nope"))
    t = storage.translate_error(e, f"s3://{bucket}/nope")
    assert type(t) is FileNotFoundError and str(t) == f"s3://{bucket}/nope: no such object"
    e = raised(lambda: s3.head_object(Bucket=bucket, Key="nope"))  # a bodiless 404
    assert str(storage.translate_error(e, f"s3://{bucket}/nope")) == f"s3://{bucket}/nope: no such object"
    e = raised(lambda: s3.get_object(Bucket="no-such-bucket-st", Key="k"))
    t = storage.translate_error(e, "s3://no-such-bucket-st/k")
    assert type(t) is FileNotFoundError
    assert str(t) == "s3://no-such-bucket-st/k: bucket no-such-bucket-st does not exist"
    assert not storage.is_transient(e)


@pytest.mark.parametrize("op, action", [
    ("get", "s3:GetObject"), ("put", "s3:PutObject"), ("list", "s3:ListBucket"), ("delete", "s3:DeleteObject"),
    ("head", "s3:GetObject"),
])
def test_access_denied_names_the_object_and_the_action(bucket, via_proxy, op, action):
    url = f"s3://{bucket}/data/k.csv"
    via_proxy.configure(rules=[{"prefix": f"s3://{bucket}/data/", "status": 403}])
    s3 = storage.boto_client("s3")
    call = {"get": lambda: s3.get_object(Bucket=bucket, Key="data/k.csv"),
            "head": lambda: s3.head_object(Bucket=bucket, Key="data/k.csv"),
            "put": lambda: s3.put_object(Bucket=bucket, Key="data/k.csv", Body=b"x"),
            "delete": lambda: s3.delete_object(Bucket=bucket, Key="data/k.csv"),
            "list": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="data/k.csv")}[op]
    e = raised(call)
    t = storage.translate_error(e, url)
    assert type(t) is PermissionError
    if action == "s3:ListBucket":
        assert str(t) == f"{url}: access denied (the role needs s3:ListBucket on bucket {bucket})"
    else:
        assert str(t).startswith(f"{url}: access denied (the role needs {action} on it"), t
    assert "\n" not in str(t)
    assert not storage.is_transient(e)
    assert via_proxy.stats()["counts"]["rules"] == 1, "a permanent error was retried"


def test_s3fs_errors_name_the_object(bucket, via_proxy):
    """The filesystem from storage.filesystem() translates inside s3fs: errors raised deep in a reader already
    name their object."""
    url = f"s3://{bucket}/data/k.csv"
    fs = s3fs_fs()
    via_proxy.configure(rules=[{"prefix": url, "methods": ["GET"], "status": 403}])
    e = raised(lambda: fs.open(f"{bucket}/data/k.csv", "rb").read())
    assert type(e) is PermissionError
    assert str(e) == f"{url}: access denied (the role needs s3:GetObject on it)"
    assert via_proxy.stats()["counts"]["rules"] == 1
    via_proxy.configure(rules=[{"prefix": url, "status": 403}])
    e = raised(lambda: s3fs_fs().info(f"{bucket}/data/k.csv"))
    assert type(e) is PermissionError and str(e).startswith(f"{url}: access denied (the role needs s3:GetObject")
    via_proxy.clean()
    e = raised(lambda: s3fs_fs().cat_file("no-such-bucket-st/k"))
    assert type(e) is FileNotFoundError and "bucket no-such-bucket-st does not exist" in str(e)
    e = raised(lambda: s3fs_fs().info(f"{bucket}/nope"))  # s3fs's own control flow: head, then list
    assert type(e) is FileNotFoundError
    assert storage.translate_error(e, f"s3://{bucket}/nope") is not e


def test_pyarrow_errors_name_the_object(bucket, via_proxy):
    url = f"s3://{bucket}/data/k.csv"
    io = arrow_io()
    via_proxy.configure(rules=[{"prefix": url, "status": 403}])
    e = raised(lambda: io.new_input(url).open().read())
    assert type(e) is PermissionError
    assert str(e).startswith(f"{url}: access denied (the role needs s3:GetObject on it"), e
    out = f"s3://{bucket}/wh/meta.json"
    via_proxy.configure(rules=[{"prefix": out, "methods": ["PUT", "POST"], "status": 403}])
    e = raised(lambda: io.new_output(out).create(overwrite=True).close())
    assert type(e) is PermissionError and str(e) == f"{out}: access denied (the role needs s3:PutObject on it)"
    via_proxy.clean()
    e = raised(lambda: io.new_output("s3://no-such-bucket-st/wh/m.json").create(overwrite=True).close())
    assert type(e) is FileNotFoundError
    assert str(e) == "s3://no-such-bucket-st/wh/m.json: bucket no-such-bucket-st does not exist"
    e = raised(lambda: io.new_input(f"s3://{bucket}/nope").open())
    assert type(e) is FileNotFoundError and str(e) == f"s3://{bucket}/nope: no such object"
    # pyarrow's own error text, as raised by its filesystem without our FileIO, is read the same way
    import pyarrow.fs as pafs

    raw = pafs.S3FileSystem(endpoint_override=via_proxy.url, region="us-east-1")
    via_proxy.configure(rules=[{"prefix": url, "status": 403}])
    e = raised(lambda: raw.open_input_file(f"{bucket}/data/k.csv"))
    assert "AWS Error" in str(e)
    t = storage.translate_error(e)  # the object comes from the message
    assert type(t) is PermissionError and str(t).startswith(f"{url}: access denied (the role needs s3:GetObject")


def test_exhausted_retries_say_what_and_how_often(bucket, via_proxy, quick):
    url = f"s3://{bucket}/data/k.csv"
    via_proxy.configure(rules=[{"prefix": url, "status": 503, "code": "SlowDown"}])
    e = raised(lambda: storage.boto_client("s3").get_object(Bucket=bucket, Key="data/k.csv"))
    assert storage.is_transient(e)
    t = storage.translate_error(e, url)
    assert isinstance(t, OSError) and t.errno == errno.EBUSY
    assert str(t) == (f"{url}: S3 kept throttling (SlowDown, Please reduce your request rate.); gave up after "
                      "retrying (impressions.s3.max-attempts: 3)")
    assert via_proxy.stats()["counts"]["rules"] == 3  # max-attempts, exactly
    via_proxy.configure(rules=[{"prefix": url, "status": 500, "code": "InternalError"}])
    e = raised(lambda: arrow_io().new_input(url).open().read())
    assert isinstance(e, OSError) and str(e).startswith(f"{url}: S3 kept failing"), e
    via_proxy.configure(rules=[{"prefix": url, "methods": ["GET"], "fault": "reset"}])
    e = raised(lambda: s3fs_fs().cat_file(f"{bucket}/data/k.csv"))
    t = storage.translate_error(e, url)
    assert isinstance(t, ConnectionError) and str(t).startswith(f"{url}: the connection to S3 kept breaking"), t


def test_credentials_and_unknown_errors():
    from botocore.exceptions import ClientError, NoCredentialsError

    e = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "The key does not exist"},
                     "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    t = storage.translate_error(e, "s3://b/k")
    assert type(t) is PermissionError and str(t).startswith("s3://b/k: AWS credentials were not accepted")
    t = storage.translate_error(NoCredentialsError(), "s3://b/k")
    assert type(t) is PermissionError and "credentials" in str(t)
    e = ClientError({"Error": {"Code": "InvalidObjectState", "Message": "The operation is not valid\nfor it"},
                     "ResponseMetadata": {"HTTPStatusCode": 409}}, "GetObject")
    t = storage.translate_error(e, "s3://b/k")
    assert type(t) is OSError and str(t) == "s3://b/k: InvalidObjectState, The operation is not valid for it"


def test_non_storage_errors_and_local_files():
    e = ValueError("not a number")
    assert storage.translate_error(e, "s3://b/k") is e
    e = FileExistsError("exists")  # kept: callers tell it apart by type
    assert storage.translate_error(e, "s3://b/k") is e
    with pytest.raises(ValueError, match="not a number"):
        with storage.s3_errors("s3://b/k"):
            raise ValueError("not a number")
    with pytest.raises(FileNotFoundError, match=r"^/no/such/file: no such file$"):
        with storage.s3_errors("/no/such/file"):
            open("/no/such/file")
    t = storage.translate_error(PermissionError(13, "Permission denied"), "/root/x")
    assert type(t) is PermissionError and str(t) == "/root/x: permission denied"
    t = storage.translate_error(storage.translate_error(FileNotFoundError("x"), "s3://b/k"), "s3://other/k")
    assert str(t) == "s3://b/k: no such object"  # translated once, at the innermost boundary


def test_translated_errors_cross_process_boundaries():
    import pickle

    t = storage.translate_error(PermissionError("Access Denied"), "s3://b/k", "read")
    back = pickle.loads(pickle.dumps(t))
    assert type(back) is PermissionError and str(back) == str(t) == \
        "s3://b/k: access denied (the role needs s3:GetObject on it)"
    assert back.s3_translated and back.s3_url == "s3://b/k"


# ------------------------------------------------------------------ 5. retry(): the one loop of our own


def test_retry_retries_transient_failures_with_backoff(bucket, via_proxy):
    url = f"s3://{bucket}/data/k.csv"
    waits = []
    with dask.config.set({"impressions.s3.max-attempts": 4, "impressions.s3.base-backoff": "100ms",
                          "impressions.s3.max-backoff": "250ms"}):
        s3 = storage.boto_client("s3", config=storage.boto_config(retries=ONE_TRY))
        via_proxy.configure(rules=[{"prefix": url, "status": 503, "code": "SlowDown", "times": 3}])
        body = storage.retry(lambda: s3.get_object(Bucket=bucket, Key="data/k.csv")["Body"].read(), url=url,
                             sleep=waits.append, rand=lambda: 1.0)
    assert body == b"a,b\n1,2\n"
    assert waits == [0.1, 0.2, 0.25]  # exponential, capped at max-backoff (rand=1: the top of the jitter)


def test_retry_gives_up_after_max_attempts(bucket, via_proxy):
    url = f"s3://{bucket}/data/k.csv"
    with dask.config.set({"impressions.s3.max-attempts": 3}):
        s3 = storage.boto_client("s3", config=storage.boto_config(retries=ONE_TRY))
        via_proxy.configure(rules=[{"prefix": url, "status": 500, "code": "InternalError"}])
        waits = []
        e = raised(lambda: storage.retry(s3.get_object, Bucket=bucket, Key="data/k.csv", url=url,
                                         sleep=waits.append))
    assert len(waits) == 2 and via_proxy.stats()["counts"]["rules"] == 3
    assert isinstance(e, OSError) and str(e).startswith(f"{url}: S3 kept failing (InternalError")


def test_retry_does_not_retry_permanent_errors(bucket, via_proxy):
    url = f"s3://{bucket}/data/k.csv"
    via_proxy.configure(rules=[{"prefix": url, "status": 403}])
    s3 = storage.boto_client("s3")
    waits = []
    e = raised(lambda: storage.retry(s3.get_object, Bucket=bucket, Key="data/k.csv", url=url, sleep=waits.append))
    assert waits == [] and via_proxy.stats()["counts"]["rules"] == 1
    assert type(e) is PermissionError and str(e) == f"{url}: access denied (the role needs s3:GetObject on it)"
    e = raised(lambda: storage.retry(int, "x", url=url, sleep=waits.append))
    assert type(e) is ValueError and waits == []  # not a storage error: unchanged, not retried


def test_retry_rewrites_a_whole_object_after_its_upload_failed(bucket, via_proxy, quick):
    """What retry() is for: an upload that cannot be resumed is written again from the start."""
    url = f"s3://{bucket}/wh/data.bin"
    io = arrow_io()
    payload = os.urandom(100_000)

    def write():
        with io.new_output(url).create(overwrite=True) as f:
            f.write(payload)

    # every request of the first upload fails past the client's own retries (3 per request), then none does
    via_proxy.configure(rules=[{"prefix": url, "methods": ["POST", "PUT"], "status": 503, "code": "SlowDown",
                                "times": 3}])
    storage.retry(write, url=url, action="write", sleep=lambda s: None)
    assert storage.boto_client("s3").get_object(Bucket=bucket, Key="wh/data.bin")["Body"].read() == payload


# ------------------------------------------------------------------ 6. the proxy itself


def test_proxy_injects_the_configured_mix(bucket, fault_proxy):
    import http.client

    port = int(fault_proxy.url.rsplit(":", 1)[1])
    fault_proxy.configure(seed=3, slowdown=0.2, internal=0.2)
    statuses = []
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/{bucket}/data/k.csv")
        r = conn.getresponse()
        body = r.read()
        statuses.append(r.status)
        if r.status == 503:
            assert b"<Code>SlowDown</Code>" in body
        conn.close()
    counts = fault_proxy.stats()["counts"]
    assert counts["requests"] == 200
    assert statuses.count(503) == counts["slowdown"] and statuses.count(500) == counts["internal"]
    assert 20 < counts["slowdown"] < 60 and 20 < counts["internal"] < 60  # 20% each of 200
    # the rest reached moto (which refuses these unsigned requests: it answered, the proxy did not)
    assert len([s for s in statuses if s not in (500, 503)]) == 200 - counts["slowdown"] - counts["internal"]
    with pytest.raises(ValueError, match="unknown fault kinds"):
        fault_proxy.configure(teapot=0.1)
    with pytest.raises(ValueError, match="more than 1"):
        fault_proxy.configure(slowdown=0.7, internal=0.7)


# ------------------------------------------------------------------ 7. what the clients cannot see (canaries)


@pytest.mark.xfail(strict=True, reason="measured: when a connection ends with a plain FIN inside a response's "
                   "headers, boto3 (urllib3) and pyarrow (AWS SDK/curl) take what arrived for a complete response: "
                   "an empty body, a size of 0, or uninitialized bytes from read_at (docs/s3.md). Flips when fixed.")
@pytest.mark.parametrize("client", ["boto3-range-get", "pyarrow-read-at", "pyarrow-size"])
def test_a_response_ended_inside_its_headers_is_not_taken_for_data(bucket, via_proxy, client):
    import pyarrow.fs as pafs

    payload = os.urandom(5000)
    storage.boto_client("s3").put_object(Bucket=bucket, Key="data/blob", Body=payload)
    raw = pafs.S3FileSystem(endpoint_override=via_proxy.url, region="us-east-1")
    method = "HEAD" if client == "pyarrow-size" else "GET"
    via_proxy.configure(rules=[{"prefix": f"s3://{bucket}/data/blob", "methods": [method], "fault": "drop",
                                "cut": "headers", "fin": True, "times": 1}])
    try:
        if client == "boto3-range-get":
            got = storage.boto_client("s3").get_object(Bucket=bucket, Key="data/blob",
                                                       Range="bytes=0-999")["Body"].read()
            want = payload[:1000]
        elif client == "pyarrow-read-at":
            got, want = raw.open_input_file(f"{bucket}/data/blob").read_at(100, 1000), payload[1000:1100]
        else:
            got, want = raw.get_file_info(f"{bucket}/data/blob").size, 5000
    except Exception:  # noqa: BLE001 - failing cleanly is the right answer
        return
    assert got == want


def test_concurrent_bucket_tag_writers_keep_each_others_tags(bucket):
    """S3 has no conditional PutBucketTagging: eight writers merging their own tag at once (as eight loads into
    eight tables committing together would) must all end up in the tag set."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    def one(i):
        return storage.set_bucket_tags(f"s3://{bucket}/tables/t{i}", {f"impressions:t{i}:rows": str(1000 + i)})

    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(one, range(8)))
    tags = {t["Key"]: t["Value"] for t in boto3.client("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags == {f"impressions:t{i}:rows": str(1000 + i) for i in range(8)}
