"""Where bytes live: local paths and s3:// URLs behind one fsspec interface, and how S3 failures are handled.

The floor under read/, table/ and report/: URLs, filesystems, cloud-error translation and retries live here and
nowhere else. The S3 endpoint comes from the standard AWS_ENDPOINT_URL, so the same code talks to AWS or to a
loopback server.

Three clients reach S3, and all three get their settings from one `S3Policy` (``impressions.s3.*`` in dask.config):

- s3fs (sources, the gzip index cache, dimension files, copies): `filesystem(url)`; botocore "standard" retries
  (capped exponential backoff with full jitter) with `max-attempts` tries, and the connect/read timeouts;
- pyarrow's S3 filesystem under pyiceberg's FileIO (data files, manifests, metadata): `iceberg_io_properties()`;
  the AWS SDK's standard retry strategy with `max-attempts` tries (`ArrowRetryStrategy`), the same timeouts;
- boto3 clients (tags, metadata, CloudWatch): `boto_config()` / `boto_client(service)`; pyiceberg's Glue catalog,
  which makes its own boto3 client: `glue_properties()`.

Those clients retry each *request*. `retry(fn, ...)` is the one retry loop of our own (capped exponential backoff,
full jitter, `max-attempts` tries) for a whole *operation* that cannot be resumed where it broke (for example
writing a whole object again after its upload failed). Nothing retries forever: every loop has `max-attempts`,
every wait a cap, every request a timeout.

Errors are translated at one boundary, as s3fs does (s3fs/errors.py): `translate_error(exc, url)` turns anything an
S3 operation raised (botocore ClientError, s3fs's builtin errors, pyarrow's "AWS Error ..." OSErrors, connection
resets, timeouts) into ONE line of a builtin type that names the object, and for a permission error says which
action the role lacks: ``PermissionError("s3://bucket/key: access denied (the role needs s3:GetObject on it)")``.
`s3_errors(url)` is the same as a context manager. The s3fs filesystem returned by `filesystem()` applies it to
every call, so errors raised deep inside a reader (rapidgzip, a Dask task) already name their object.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import re
import shutil
import time
from dataclasses import dataclass

import dask.config
import fsspec
import pyarrow.fs
from dask.utils import parse_timedelta
from pyiceberg.io import InputFile, OutputFile
from pyiceberg.io.pyarrow import PyArrowFileIO

from . import config as _config  # noqa: F401  - loads the impressions.yaml defaults into dask.config
from .errors import UsageError

# ------------------------------------------------------------------ the policy

# The same values as the `s3:` section of impressions.yaml (a test keeps them equal), so the policy is defined even
# where the YAML defaults were not loaded.
S3_DEFAULTS = {
    "max-attempts": 10,
    "base-backoff": "200ms",
    "max-backoff": "20s",
    "connect-timeout": "10s",
    "read-timeout": "60s",
    "retry-mode": "standard",
}
# s3fs's own loop (around botocore's) re-issues a request whose response body broke off mid-stream. Kept small:
# for the errors both loops see (throttling, resets) it multiplies botocore's tries, so a request that keeps
# failing is tried up to S3FS_BODY_ATTEMPTS x max-attempts times in all before it fails.
S3FS_BODY_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Policy:
    """How every S3 client retries and waits (seconds)."""

    max_attempts: int
    base_backoff: float
    max_backoff: float
    connect_timeout: float
    read_timeout: float
    retry_mode: str

    def backoff(self, attempt: int, rand=random.random) -> float:
        """The wait before try `attempt + 1` (attempt 0 is the first failure): full jitter over a capped
        exponential, uniform in [0, min(max-backoff, base-backoff * 2**attempt)]."""
        return rand() * min(self.max_backoff, self.base_backoff * 2 ** min(attempt, 60))


def policy() -> S3Policy:
    """`impressions.s3.*` from dask.config, validated (a bad value is a UsageError naming the key)."""
    raw = tuple(dask.config.get(f"impressions.s3.{k}", default=v) for k, v in S3_DEFAULTS.items())
    return _policy(raw)


@functools.lru_cache(maxsize=16)
def _policy(raw: tuple) -> S3Policy:
    values = dict(zip(S3_DEFAULTS, raw))
    attempts = values["max-attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, (int, str)) or not str(attempts).strip().isdigit() \
            or not 1 <= int(attempts) <= 100:
        raise UsageError(f"impressions.s3.max-attempts must be an integer from 1 to 100, got {attempts!r}")

    def seconds(key: str, low: float, high: float) -> float:
        value = values[key]
        try:
            s = float(parse_timedelta(value, default="seconds"))
        except (ValueError, TypeError, KeyError):
            s = float("nan")
        if not low <= s <= high:
            raise UsageError(f"impressions.s3.{key} must be a duration from {low:g}s to {high:g}s "
                             f"(e.g. '20s', '500ms'), got {value!r}")
        return s

    mode = values["retry-mode"]
    if mode not in ("standard", "adaptive"):
        raise UsageError(f"impressions.s3.retry-mode must be 'standard' or 'adaptive', got {mode!r}")
    return S3Policy(
        max_attempts=int(attempts),
        base_backoff=seconds("base-backoff", 0.001, 60),
        max_backoff=seconds("max-backoff", 0.001, 600),
        connect_timeout=seconds("connect-timeout", 0.1, 600),
        read_timeout=seconds("read-timeout", 0.1, 3600),
        retry_mode=mode,
    )


def _endpoint(service: str = "s3") -> str | None:
    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL") or None


def boto_config(**overrides):
    """botocore Config with the policy's retries (mode, max attempts) and timeouts; for every boto3/botocore
    client (Glue, S3 tags and metadata, CloudWatch): `boto3.client("glue", config=storage.boto_config())`."""
    from botocore.config import Config

    p = policy()
    kwargs = {"retries": {"mode": p.retry_mode, "total_max_attempts": p.max_attempts},
              "connect_timeout": p.connect_timeout, "read_timeout": p.read_timeout}
    kwargs.update(overrides)
    return Config(**kwargs)


def boto_client(service: str, **kwargs):
    """A boto3 client for `service` with the endpoint from AWS_ENDPOINT_URL(_<SERVICE>) and `boto_config()`."""
    import boto3

    endpoint = _endpoint(service)
    if endpoint and "endpoint_url" not in kwargs:
        kwargs["endpoint_url"] = endpoint
    kwargs.setdefault("config", boto_config())
    return boto3.client(service, **kwargs)


def glue_properties() -> dict:
    """Catalog properties for pyiceberg's GlueCatalog, which builds its own boto3 client from them: the policy's
    retry mode and tries. `glue.max-retries` is botocore's `max_attempts` (retries after the first try) and must
    be an int, not a string."""
    p = policy()
    return {"glue.max-retries": p.max_attempts - 1, "glue.retry-mode": p.retry_mode}


class ArrowRetryStrategy(pyarrow.fs.AwsStandardS3RetryStrategy):
    """The AWS SDK's standard retry strategy with the policy's max attempts, for pyarrow's S3FileSystem.

    pyiceberg instantiates it by name, without arguments, from the FileIO property `s3.retry-strategy-impl`
    (in whichever process opens the file, so a worker uses its own `impressions.s3.max-attempts`)."""

    def __init__(self):
        super().__init__(max_attempts=policy().max_attempts)


def iceberg_io_properties() -> dict:
    """FileIO properties for pyiceberg (which reads and writes data files, manifests and metadata through pyarrow's
    S3 filesystem): our FileIO (errors translated), endpoint, region, the retry strategy and the policy's timeouts."""
    p = policy()
    props = {
        "py-io-impl": f"{__name__}.IcebergFileIO",
        "s3.retry-strategy-impl": f"{__name__}.ArrowRetryStrategy",
        "s3.connect-timeout": f"{p.connect_timeout:g}",
        "s3.request-timeout": f"{p.read_timeout:g}",
    }
    endpoint = _endpoint("s3")
    if endpoint:
        props["s3.endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        props["s3.region"] = region
    return props


class IcebergFileIO(PyArrowFileIO):
    """pyiceberg's PyArrowFileIO (pyiceberg loads it by name from the FileIO property `py-io-impl`) whose files
    fail with `translate_error`: opening, creating, sizing, checking and deleting a file name the object and,
    when denied, the action the role lacks. The streams it returns are pyarrow's own (no wrapper on the hot
    path); an error while writing or closing one is the caller's to translate (`s3_errors`)."""

    def new_input(self, location: str) -> "_IcebergFile":
        return _IcebergFile(super().new_input(location))

    def new_output(self, location: str) -> "_IcebergFile":
        return _IcebergFile(super().new_output(location))

    def delete(self, location) -> None:
        url = location if isinstance(location, str) else location.location
        with s3_errors(url, "delete"):
            super().delete(url)


class _IcebergFile(InputFile, OutputFile):
    """A PyArrowFile whose calls raise translated errors."""

    def __init__(self, inner):
        super().__init__(inner.location)
        self._inner = inner

    def __len__(self) -> int:
        with s3_errors(self.location, "read"):
            return len(self._inner)

    def exists(self) -> bool:
        with s3_errors(self.location, "read"):
            return self._inner.exists()

    def open(self, seekable: bool = True):
        with s3_errors(self.location, "read"):
            return self._inner.open(seekable=seekable)

    def create(self, overwrite: bool = False):
        with s3_errors(self.location, "write"):
            return self._inner.create(overwrite=overwrite)

    def to_input_file(self) -> "_IcebergFile":
        return self


# ------------------------------------------------------------------ filesystems and URLs


def __getattr__(name: str):
    if name == "S3FileSystem":  # defined on first use: s3fs (aiobotocore, aiohttp) costs ~0.25 s to import
        return _s3_filesystem_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _s3_filesystem_class():
    import s3fs

    class S3FileSystem(s3fs.S3FileSystem):
        """s3fs whose every call fails with `translate_error` (one line, builtin type, naming the object).

        The exception *types* are the ones s3fs itself raises (FileNotFoundError, PermissionError, OSError), so s3fs's
        own control flow (a missing key, then a listing) is unchanged; only the message gains the object and the
        action."""

        protocol = ("s3", "s3a")
        retries = S3FS_BODY_ATTEMPTS

        async def _call_s3(self, method, *akwarglist, **kwargs):
            try:
                return await super()._call_s3(method, *akwarglist, **kwargs)
            except Exception as e:  # noqa: BLE001 - translated, or passed on unchanged below
                bucket, key = kwargs.get("Bucket", ""), kwargs.get("Key", kwargs.get("Prefix", ""))
                url = f"s3://{bucket}/{key}" if bucket else "s3://"
                translated = translate_error(e, url, operation=_camel(method))
                if translated is e or _keep_for_s3fs(e):
                    raise
                if isinstance(translated, TimeoutError):
                    # s3fs's loop around a body read would retry a TimeoutError (socket.timeout) once more on top of
                    # the retries already done: hand it on as the OSError it is (same message, errno ETIMEDOUT)
                    translated = _retyped(translated, OSError, errno.ETIMEDOUT)
                raise translated from e

    S3FileSystem.__module__, S3FileSystem.__qualname__ = __name__, "S3FileSystem"  # pickled by reference
    return S3FileSystem


def _retyped(e: BaseException, cls, eno: int) -> BaseException:
    out = cls(str(e))
    out.errno = eno
    out.__dict__.update(e.__dict__)
    return out


def _keep_for_s3fs(e: BaseException) -> bool:
    """s3fs reads a few of its own errors by their args (a changed object during a read: FileExpired)."""
    return isinstance(e, OSError) and len(e.args) > 1 and e.args[0] == errno.EINVAL \
        and "pre-conditions" in str(e.args[1])


def s3fs_options() -> dict:
    """Keyword arguments of the s3fs filesystem: endpoint, and botocore's retries and timeouts from the policy."""
    p = policy()
    kwargs = {"config_kwargs": {"retries": {"mode": p.retry_mode, "total_max_attempts": p.max_attempts},
                                "connect_timeout": p.connect_timeout, "read_timeout": p.read_timeout}}
    endpoint = _endpoint("s3")
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    return kwargs


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URL."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        return _s3_filesystem_class()(**s3fs_options()), url.split("://", 1)[1]
    if protocol != "file":
        raise UsageError(f"unsupported URL scheme {protocol!r} in {url} (use a local path or s3://)")
    return fsspec.filesystem("file"), local_path(url)


def local_path(url: str) -> str:
    """The absolute path of a local path or file:// URL."""
    return os.path.abspath(url.split("://", 1)[1] if url.startswith("file://") else url)


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def full_url(url: str) -> str:
    """Canonical form used in fingerprints and records: absolute path or s3://bucket/key."""
    if is_remote(url):
        return "s3://" + url.split("://", 1)[1]
    return filesystem(url)[1]


# ------------------------------------------------------------------ errors: one boundary

# What each S3 operation needs in IAM terms (a denied operation names the action the role lacks).
_IAM_ACTION = {
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "SelectObjectContent": "s3:GetObject",
    "GetObjectAttributes": "s3:GetObject",
    "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "CopyObject": "s3:PutObject (and s3:GetObject on the source)",
    "UploadPartCopy": "s3:PutObject (and s3:GetObject on the source)",
    "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListObjects": "s3:ListBucket", "ListObjectsV2": "s3:ListBucket", "ListObjectVersions": "s3:ListBucketVersions",
    "HeadBucket": "s3:ListBucket", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetObjectTagging": "s3:GetObjectTagging", "PutObjectTagging": "s3:PutObjectTagging",
    "GetBucketTagging": "s3:GetBucketTagging", "PutBucketTagging": "s3:PutBucketTagging",
    "GetBucketLocation": "s3:GetBucketLocation",
}
_ACTION_HINTS = {"read": "s3:GetObject", "write": "s3:PutObject", "list": "s3:ListBucket",
                 "delete": "s3:DeleteObject", "copy": "s3:PutObject (and s3:GetObject on the source)",
                 "tag": "s3:GetBucketTagging and s3:PutBucketTagging"}
_BUCKET_ACTIONS = {"s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads", "s3:GetBucketTagging",
                   "s3:PutBucketTagging", "s3:GetBucketLocation"}

_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem", "ACCESS_DENIED",
           "AccessDeniedException", "UnauthorizedOperation"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                "ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId",
                "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN", "MISSING_AUTHENTICATION_TOKEN"}
_NO_BUCKET = {"NoSuchBucket", "NO_SUCH_BUCKET"}
_NO_KEY = {"NoSuchKey", "404", "NotFound", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "NoSuchUpload", "NO_SUCH_UPLOAD",
           "EntityNotFoundException"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
              "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
              "BandwidthLimitExceeded", "SLOW_DOWN", "THROTTLING", "503", "ServiceUnavailable",
              "SERVICE_UNAVAILABLE"}
_SERVER = {"InternalError", "InternalFailure", "INTERNAL_FAILURE", "500", "502", "504", "BadGateway",
           "GatewayTimeout", "RequestTimeout", "REQUEST_TIMEOUT", "PriorRequestNotComplete", "ServiceFailure"}
_TIMEOUT_CODES = {"REQUEST_TIMEOUT", "RequestTimeout"}
_NETWORK_CODES = {"NETWORK_CONNECTION"}

_ARROW_ERROR = re.compile(r"AWS Error (?:\[code (\d+)\]|([A-Z_]+))(?: \(HTTP status (\d+)\))?"
                          r"(?: during (\w+) operation)?: ?(.*)", re.S)
_ARROW_KEY = re.compile(r"key '([^']*)' in bucket '([^']*)'")
_ARROW_OPERATIONS = {"initiating multiple part upload": "CreateMultipartUpload",
                     "uploading part": "UploadPart", "completing multiple part upload": "CompleteMultipartUpload",
                     "reading information for key": "HeadObject", "getting information for key": "HeadObject",
                     "reading from": "GetObject", "listing objects": "ListObjectsV2",
                     "deleting": "DeleteObject", "copying": "CopyObject", "uploading object": "PutObject"}
# Old AWS SDK numeric codes in pyarrow messages ("AWS Error [code 15]"): the ones worth telling apart.
_ARROW_NUMERIC = {"15": "ACCESS_DENIED", "16": "RESOURCE_NOT_FOUND", "99": "NETWORK_CONNECTION"}


class _Failure:
    """What an exception says about S3: kind, error code, HTTP status, operation, the server's message."""

    __slots__ = ("kind", "code", "status", "operation", "message", "url")

    def __init__(self, kind, code="", status=None, operation="", message="", url=""):
        self.kind, self.code, self.status, self.operation, self.message, self.url = \
            kind, code, status, operation, message, url


def _camel(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_")) if "_" in method or method.islower() else method


def _classify_code(code: str, status: int | None) -> str:
    if code in _CREDENTIALS:
        return "credentials"
    if code in _NO_BUCKET:
        return "no-bucket"
    if code in _DENIED or (status == 403 and code not in _THROTTLED):
        return "denied"
    if code in _TIMEOUT_CODES:
        return "timeout"
    if code in _NETWORK_CODES:
        return "connection"
    if code in _NO_KEY or status == 404:
        return "no-key"
    if code in _THROTTLED or status in (429, 503):
        return "throttled"
    if code in _SERVER or (status is not None and status >= 500):
        return "server"
    return "other"


def _failure(exc: BaseException) -> _Failure | None:
    """Read an exception from any of the S3 clients; None if it is not about storage at all."""
    if getattr(exc, "s3_translated", False):
        return _Failure("translated")
    # botocore ClientError (directly, or as the cause of an s3fs-translated builtin error)
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:
            err = response.get("Error") or {}
            code = str(err.get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            try:
                status = int(status) if status is not None else (int(code) if code.isdigit() else None)
            except ValueError:
                status = None
            return _Failure(_classify_code(code, status), code, status, getattr(e, "operation_name", "") or "",
                            str(err.get("Message") or ""))
    text = str(exc)
    # pyarrow: "When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject ..."
    m = _ARROW_ERROR.search(text)
    if m and isinstance(exc, OSError):
        numeric, name, status, operation, message = m.groups()
        code = name or _ARROW_NUMERIC.get(numeric or "", f"code {numeric}")
        status = int(status) if status else None
        if not operation:
            low = text.lower()
            operation = next((op for phrase, op in _ARROW_OPERATIONS.items() if phrase in low), "")
        km = _ARROW_KEY.search(text)
        url = f"s3://{km.group(2)}/{km.group(1)}" if km else ""
        if code == "UNKNOWN" and status is not None:
            code = str(status)
        if code == "NETWORK_CONNECTION" and ("curlCode: 28" in message or "Timeout was reached" in message):
            code = "REQUEST_TIMEOUT"
        message = message.strip().rstrip(".")
        if message.lower().startswith("no response body"):
            message = ""
        return _Failure(_classify_code(code, status), code, status, operation, message, url)
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if isinstance(exc, (TimeoutError,)) or "Timeout" in name:
        return _Failure("timeout", name, message=text)
    if isinstance(exc, ConnectionError) or name in ("ConnectionClosedError", "EndpointConnectionError",
                                                    "ServerDisconnectedError", "ClientPayloadError",
                                                    "IncompleteReadError", "ResponseStreamingError",
                                                    "ClientOSError", "ProtocolError", "IncompleteRead",
                                                    "ClientConnectorError", "ServerTimeoutError",
                                                    "ResponseParserError", "HTTPClientError",
                                                    "FlexibleChecksumError", "ContentLengthError"):
        # FlexibleChecksumError: a body that broke off fails its checksum before its length is checked
        return _Failure("connection", name, message=text)
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "NoAuthTokenError", "UnauthorizedSSOTokenError", "TokenRetrievalError"):
        return _Failure("credentials", name, message=text)
    if isinstance(exc, FileNotFoundError):
        return _Failure("no-key", "NotFound", message=text)
    if isinstance(exc, PermissionError):
        return _Failure("denied", "AccessDenied", message=text)
    eno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and eno == errno.EBUSY:  # s3fs's 503 / SlowDown
        return _Failure("throttled", "503", 503, message=str(getattr(exc, "strerror", "") or text))
    if isinstance(exc, OSError) and eno == getattr(errno, "EREMOTEIO", -1):  # s3fs's 500 / InternalError
        return _Failure("server", "500", 500, message=str(getattr(exc, "strerror", "") or text))
    if module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3")):
        return _Failure("other", name, message=text)
    # any other OSError (FileExistsError, IsADirectoryError, a local disk error) keeps its type and message:
    # callers and the libraries themselves tell them apart by type
    return None


def is_transient(exc: BaseException) -> bool:
    """Throttling (SlowDown, 503), server errors (500, 502, 504), timeouts and broken connections: worth
    another try. Permanent errors (403, 404, a missing bucket, bad credentials) are not."""
    f = _failure(exc)
    if f is None:
        return False
    if f.kind == "translated":
        return bool(getattr(exc, "s3_transient", False))
    return f.kind in ("throttled", "server", "timeout", "connection")


def _bucket(url: str) -> str:
    return url[5:].split("/", 1)[0] if url.startswith("s3://") else ""


def translate_error(exc: BaseException, url: str | None = None, action: str | None = None, *,
                    operation: str | None = None) -> BaseException:
    """One line of a builtin type naming the object, for an exception raised by an S3 (or local) operation.

    `url` is the object (s3://bucket/key or a local path) the caller was working on; `action` a hint for a
    permission error when the exception does not say which operation failed ("read", "write", "list", "delete",
    "copy"). Exceptions that are not about storage (a ValueError from parsing) come back unchanged, as do
    errors already translated."""
    f = _failure(exc)
    if f is None or f.kind == "translated":
        return exc
    url = f.url or url or "s3://"
    remote = url.startswith("s3://")
    op = operation or f.operation
    detail = ", ".join(x for x in (f.code if f.code and not f.code.isdigit() else "", f.message) if x)
    detail = detail.replace("\n", " ").strip()
    if len(detail) > 200:
        detail = detail[:197] + "..."
    transient = False
    if f.kind == "denied":
        needed = _IAM_ACTION.get(op or "") or _ACTION_HINTS.get(action or "")
        if not remote:
            out = PermissionError(f"{url}: permission denied")
        elif needed in _BUCKET_ACTIONS:
            out = PermissionError(f"{url}: access denied (the role needs {needed} on bucket {_bucket(url)})")
        elif needed:
            hint = "; a missing object also looks like this without s3:ListBucket" if op == "HeadObject" else ""
            out = PermissionError(f"{url}: access denied (the role needs {needed} on it{hint})")
        else:
            out = PermissionError(f"{url}: access denied (check the role's S3 permissions for it)")
    elif f.kind == "credentials":
        out = PermissionError(f"{url}: AWS credentials were not accepted ({detail or f.code}); "
                              "check the role or AWS_PROFILE")
    elif f.kind == "no-bucket":
        out = FileNotFoundError(f"{url}: bucket {_bucket(url)} does not exist")
    elif f.kind == "no-key":
        out = FileNotFoundError(f"{url}: no such object" if remote else f"{url}: no such file")
        if f.code in ("NoSuchUpload", "NO_SUCH_UPLOAD"):
            out = FileNotFoundError(f"{url}: the multipart upload is gone (aborted or completed meanwhile)")
    elif f.kind in ("throttled", "server", "timeout", "connection"):
        transient = True
        attempts = policy().max_attempts
        why = {"throttled": "S3 kept throttling", "server": "S3 kept failing",
               "timeout": "S3 did not answer in time", "connection": "the connection to S3 kept breaking"}[f.kind]
        text = f"{url}: {why} ({detail or f.code}); gave up after retrying (impressions.s3.max-attempts: {attempts})"
        out = {"timeout": TimeoutError, "connection": ConnectionError}.get(f.kind, OSError)(text)
        if f.kind == "throttled":
            out.errno = errno.EBUSY
        elif f.kind == "server":
            out.errno = getattr(errno, "EREMOTEIO", errno.EIO)
    else:
        out = OSError(f"{url}: {detail or type(exc).__name__}")
        eno = getattr(exc, "errno", None)
        if isinstance(eno, int):
            out.errno = eno
    out.s3_translated = True
    out.s3_transient = transient
    out.s3_url = url
    return out


@contextlib.contextmanager
def s3_errors(url: str, action: str | None = None):
    """`with s3_errors(url, "write"): ...` raises `translate_error(e, url, action)` for a storage error."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - storage errors translated, anything else passed on unchanged
        translated = translate_error(e, url, action)
        if translated is e:
            raise
        raise translated from e


def retry(fn, *args, url: str, action: str | None = None, sleep=time.sleep, rand=random.random, **kwargs):
    """`fn(*args, **kwargs)`, tried again after a transient failure (throttling, 5xx, timeout, broken
    connection) up to `max-attempts` times in all, waiting `policy().backoff(n)` (capped exponential, full
    jitter) in between; a permanent failure is not retried. Fails with `translate_error(..., url, action)`.

    The one retry loop of our own: use it for a whole operation that cannot be resumed where it broke (writing
    a whole object again); single requests are already retried inside the clients."""
    p = policy()
    for attempt in range(p.max_attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e) or attempt == p.max_attempts - 1:
                translated = translate_error(e, url, action)
                if translated is e:
                    raise
                raise translated from e
            sleep(p.backoff(attempt, rand))
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------- object metadata, tags

def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


def upload(url: str, data: bytes, metadata: dict[str, str], content_type: str | None = None) -> None:
    """Write an object with user metadata (x-amz-meta-*) set as it is created: pyarrow's and s3fs's streams
    drop user metadata, so the bytes go up in one boto3 transfer (multipart when large, retried per part)."""
    import io

    bucket, key = _split(url)
    extra = {"Metadata": {k: str(v) for k, v in metadata.items()}}
    if content_type:
        extra["ContentType"] = content_type
    with s3_errors(url, "write"):
        boto_client("s3").upload_fileobj(io.BytesIO(data), bucket, key, ExtraArgs=extra)


def scratch_directory() -> str | None:
    """Inside a Dask task, the worker's own scratch directory (Dask's `temporary-directory`, removed with the
    worker): where spills and the index pass's file go. Elsewhere None: the system's temporary directory."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except ValueError:
        return None


def write_local(url: str, data) -> None:
    """Write a local file (a path or file:// URL) in one call, creating its directory (no filesystem object per
    file: this runs for every data file a worker writes)."""
    path = local_path(url)
    folder = os.path.dirname(path)
    try:  # a partition's own new folder, usually: one mkdir, not makedirs' walk up the path
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def link_local(src: str, dst: str) -> None:
    """A second name for a local file (paths or file:// URLs), its directory created: a hard link, or a copy
    where the filesystem refuses one (another device, no links). For immutable data files only: both names
    are the same bytes until one is deleted."""
    src, dst = local_path(src), local_path(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        raise  # never write over another file's bytes
    except OSError:
        shutil.copyfile(src, dst)


def object_metadata(url: str) -> dict[str, str]:
    """An object's user metadata (without the x-amz-meta- prefix)."""
    bucket, key = _split(url)
    with s3_errors(url, "read"):
        return dict(boto_client("s3").head_object(Bucket=bucket, Key=key).get("Metadata") or {})


BUCKET_TAG_LIMIT = 50


def set_bucket_tags(url: str, tags: dict[str, str], attempts: int = 6) -> bool:
    """Set (add or change) tags on the bucket of `url`, keeping its other tags. Returns False, changing
    nothing, when the bucket would pass S3's limit of 50 tags.

    S3 tags a bucket as a whole and has no conditional PutBucketTagging, so two writers merging at once can drop
    each other's change: the tags are read back after a short, growing, jittered pause, and merged again until
    ours stand (a concurrent writer's stand too, since each merges onto what it reads)."""
    bucket, _ = _split(url)
    client = boto_client("s3")
    wanted = {k: str(v)[:256] for k, v in tags.items()}

    def current() -> dict[str, str]:
        try:
            return {t["Key"]: t["Value"] for t in client.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        except client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchTagSet":
                raise
            return {}

    with s3_errors(f"s3://{bucket}", "tag"):
        for attempt in range(attempts):
            now = current()
            merged = {**now, **wanted}
            if merged == now:
                return True
            if len(merged) > BUCKET_TAG_LIMIT:
                return False
            client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": v}
                                                                         for k, v in sorted(merged.items())]})
            time.sleep(random.uniform(0.02, 0.05) * 2 ** attempt)  # a concurrent writer's put lands meanwhile
        return wanted.items() <= current().items()


def bucket_tags(url: str) -> dict[str, str]:
    bucket, _ = _split(url)
    client = boto_client("s3")
    with s3_errors(f"s3://{bucket}", "read"):
        try:
            return {t["Key"]: t["Value"] for t in client.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        except client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchTagSet":
                return {}
            raise
