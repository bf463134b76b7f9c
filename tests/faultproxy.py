"""A fault-injecting HTTP proxy in front of the loopback S3 server (moto), as a real separate process.

Every client (boto3, s3fs/aiobotocore, pyarrow's AWS SDK) reaches it through AWS_ENDPOINT_URL exactly as it
would reach S3; nothing in the client libraries is patched. The proxy forwards each request to the upstream
server unchanged (path-style S3, headers and body byte for byte), except for a share of requests it fails the
way S3 does:

- ``slowdown``: ``503 SlowDown`` with S3's XML error body (the request never reaches the server);
- ``internal``: ``500 InternalError`` (the request never reaches the server);
- ``reset``: the connection is reset (RST) after part of the request was received, no response;
- ``drop``: the request IS forwarded and served, then the response is cut in half (in its headers when the body
  is short) and the connection is reset: the client cannot know whether the operation happened;
- ``delay``: the response is held back ``delay_seconds`` (a slow server; longer than a read timeout, a timeout).

Deterministic *rules* answer permanent errors: the first matching rule answers every request whose S3 URL
(``s3://bucket/key``; for a listing, ``s3://bucket/<prefix parameter>``) starts with ``prefix`` (or matches
``regex``), optionally only for some HTTP ``methods`` and only the first ``times`` matches (so a rule can also be a
deterministic transient fault): ``{"prefix": "s3://b/secret/", "status": 403}`` (AccessDenied),
``{"prefix": "s3://nobucket", "status": 404, "code": "NoSuchBucket"}``, ``{"regex": "…", "status": 503,
"times": 2}``.

Run it as ``python tests/faultproxy.py --upstream http://127.0.0.1:PORT [--port 0] [--seed 1] [--slowdown 0.02]
[--internal 0.01] [--reset 0.01] [--drop 0.01] [--delay 0] [--delay-seconds 2]``; it prints
``LISTENING http://127.0.0.1:PORT`` as its first stdout line. A rule may also inject one of the faults above
instead of an error (``{"prefix": "s3://b/k", "fault": "drop", "times": 1}``), cut a dropped response at a chosen
place (``"cut"``: ``"half"`` of all bytes, the default; ``"headers"``, in the middle of the header block; ``"body"``,
after all headers and half the body), end it with a plain FIN instead of RST (``"fin": true``: a server process
that died), and narrow itself to requests whose query string matches ``query`` (``"query": "uploadId="``: the
parts and the completion of a multipart upload). The mix can be changed while it runs through the
admin endpoint ``/__faults__`` (``PUT`` a JSON config, ``GET`` the config and the counts of what was injected);
``__faults__`` cannot be an S3 bucket name, so the endpoint never shadows one. The pytest fixtures at the end
(``fault_proxy``) start the process once per session and give each test a clean mix.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ADMIN_PATH = "/__faults__"
KINDS = ("slowdown", "internal", "reset", "drop", "delay")
MESSAGES = {
    "AccessDenied": "Access Denied",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchKey": "The specified key does not exist.",
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}
DEFAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "expect"}
UPSTREAM_TIMEOUT = 60  # seconds: every wait has a bound


def clean_config() -> dict:
    return {"seed": 0, "rates": {k: 0.0 for k in KINDS}, "delay_seconds": 2.0, "rules": []}


class State:
    """The current mix, its random generator and the counts of what was injected (thread-safe)."""

    def __init__(self, config: dict):
        self.lock = threading.Lock()
        self.apply(config)

    def apply(self, config: dict) -> None:
        merged = clean_config()
        merged.update({k: v for k, v in config.items() if k != "rates"})
        merged["rates"].update(config.get("rates") or {})
        unknown = set(merged["rates"]) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
        if sum(merged["rates"].values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        rules = []
        for rule in merged["rules"]:
            rule = dict(rule)
            if "fault" in rule:
                if rule["fault"] not in KINDS:
                    raise ValueError(f"unknown fault {rule['fault']!r} (known: {', '.join(KINDS)})")
                if rule.get("cut", "half") not in ("half", "headers", "body"):
                    raise ValueError(f"unknown cut {rule['cut']!r} (half, headers or body)")
            else:
                rule.setdefault("status", 403)
                rule.setdefault("code", DEFAULT_CODES.get(int(rule["status"]), "AccessDenied"))
            rule["hits"] = 0
            rules.append(rule)
        merged["rules"] = rules
        with self.lock:
            self.config = merged
            self.random = random.Random(merged["seed"])
            self.counts = {"requests": 0, **{k: 0 for k in KINDS}, "rules": 0}
            self.log = []

    def decide(self, method: str, url: str, query: str = "") -> tuple[str | None, dict | None]:
        """(fault kind or None, matching error rule or None) for one request."""
        with self.lock:
            self.counts["requests"] += 1
            for rule in self.config["rules"]:
                if rule.get("methods") and method not in rule["methods"]:
                    continue
                if "prefix" in rule and not url.startswith(rule["prefix"]):
                    continue
                if "regex" in rule and not re.search(rule["regex"], url):
                    continue
                if "query" in rule and not re.search(rule["query"], query):
                    continue
                if rule.get("times") is not None and rule["hits"] >= rule["times"]:
                    continue
                rule["hits"] += 1
                self.counts["rules"] += 1
                if "fault" in rule:
                    self._note(rule["fault"], method, url)
                    return (rule["fault"], rule.get("cut"), bool(rule.get("fin"))), None
                self._note("rule", method, url, rule["status"])
                return None, rule
            u, edge = self.random.random(), 0.0
            for kind in KINDS:
                edge += self.config["rates"][kind]
                if u < edge:
                    self.counts[kind] += 1
                    self._note(kind, method, url)
                    return kind, None
        return None, None

    def _note(self, kind, method, url, status=None) -> None:
        if len(self.log) < 1000:
            self.log.append({"kind": kind, "method": method, "url": url, **({"status": status} if status else {})})

    def snapshot(self) -> dict:
        with self.lock:
            return {"config": json.loads(json.dumps(self.config)), "counts": dict(self.counts),
                    "log": list(self.log)}


def s3_url(method: str, target: str, headers) -> str | None:
    """The S3 URL a path-style request is about (None for non-S3 calls such as Glue's POST /)."""
    parts = urlsplit(target)
    path = unquote(parts.path)
    if path in ("", "/") or path.startswith("/moto-api"):
        return None
    bucket, _, key = path.lstrip("/").partition("/")
    if not key:
        key = parse_qs(parts.query).get("prefix", [""])[0]
    return f"s3://{bucket}/{key}"


def error_body(code: str, message: str, resource: str) -> bytes:
    bucket = resource[5:].split("/", 1)[0] if resource.startswith("s3://") else ""
    extra = f"<BucketName>{bucket}</BucketName>" if code == "NoSuchBucket" else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource>{extra}<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId>"
            f"<HostId>faultproxy</HostId></Error>").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection is closed after this long
    server_version = "faultproxy"
    state: State
    upstream: tuple[str, int]
    _fin = False

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    # -------------------------------------------------------------- request handling

    def _handle(self) -> None:
        if urlsplit(self.path).path == ADMIN_PATH:
            return self._admin()
        url = s3_url(self.command, self.path, self.headers)
        kind, rule = (None, None) if self.path.startswith("/moto-api") else \
            self.state.decide(self.command, url or self.path, urlsplit(self.path).query)
        rule_cut, self._fin = None, False
        if isinstance(kind, tuple):  # a fault rule: (kind, where to cut, FIN instead of RST)
            kind, rule_cut, self._fin = kind
        if kind == "reset":
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1:
                self.rfile.read(length // 2)
            return self._reset()
        body = self._read_body()
        if rule is not None:
            code = rule["code"]
            return self._error(int(rule["status"]), code, rule.get("message") or MESSAGES.get(code, code), url)
        if kind == "slowdown":
            return self._error(503, "SlowDown", MESSAGES["SlowDown"], url or self.path)
        if kind == "internal":
            return self._error(500, "InternalError", MESSAGES["InternalError"], url or self.path)
        if kind == "delay":
            time.sleep(float(self.state.config["delay_seconds"]))
        status, reason, headers, data = self._forward(body)
        if kind == "drop":
            return self._send(status, reason, headers, data, cut=(rule_cut or "half"))
        self._send(status, reason, headers, data)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    # -------------------------------------------------------------- responses

    def _send(self, status: int, reason: str, headers, data: bytes, cut: str | None = None) -> None:
        out = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
        length_given = False
        for name, value in headers:
            low = name.lower()
            if low in HOP_BY_HOP:
                continue
            if low == "content-length":
                if self.command != "HEAD":
                    continue
                length_given = True
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.command != "HEAD" and status not in (204, 304):
            out.append(f"Content-Length: {len(data)}\r\n".encode())
        elif not length_given and self.command == "HEAD":
            out.append(b"Content-Length: 0\r\n")
        out.append(b"\r\n")
        head = b"".join(out)
        raw = head + (b"" if self.command == "HEAD" else data)
        if cut:  # part of what the server answered, then RST
            at = {"half": len(raw) // 2,  # in the headers when the body is short
                  "headers": len(head) // 2,  # in the middle of the header block
                  "body": len(head) + (len(raw) - len(head)) // 2,  # all headers, half the body
                  }[cut]
            self.wfile.write(raw[:at])
            self.wfile.flush()
            return self._reset(graceful=self._fin)
        self.wfile.write(raw)
        self.wfile.flush()

    def _error(self, status: int, code: str, message: str, resource: str) -> None:
        body = b"" if self.command == "HEAD" else error_body(code, message, resource)
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", uuid.uuid4().hex[:16].upper())]
        if self.command == "HEAD":
            headers.append(("Content-Length", "0"))
        self._send(status, http.client.responses.get(status, "Error"), headers, body)

    def _reset(self, graceful: bool = False) -> None:
        """Close the connection now: with RST (SO_LINGER 0, the client sees 'connection reset'), or with
        `graceful` a plain FIN, as when the server process dies (the client sees the stream end early)."""
        self.close_connection = True
        if graceful:
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.wfile, self.rfile):  # the socket closes (RST) only once its file objects are closed
            try:
                f.close()
            except OSError:
                pass
        self.connection.close()
        self.wfile, self.rfile = io.BytesIO(), io.BytesIO()  # what the server still flushes and closes

    # -------------------------------------------------------------- admin

    def _admin(self) -> None:
        try:
            if self.command in ("PUT", "POST"):
                self.state.apply(json.loads(self._read_body() or b"{}"))
            data, status = json.dumps(self.state.snapshot()).encode(), 200
        except (ValueError, TypeError, KeyError) as e:
            data, status = json.dumps({"error": str(e)}).encode(), 400
        self._send(status, "OK" if status == 200 else "Bad Request", [("Content-Type", "application/json")], data)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-request is part of the game here, not worth a traceback."""


def serve(upstream: str, port: int, config: dict) -> ThreadingHTTPServer:
    parts = urlsplit(upstream)
    handler = type("BoundHandler", (Handler,), {"state": State(config),
                                                "upstream": (parts.hostname, parts.port or 80)})
    server = QuietServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="fault-injecting S3 proxy for tests (127.0.0.1 only)")
    p.add_argument("--upstream", required=True, help="the S3 server, e.g. http://127.0.0.1:5000")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument("--seed", type=int, default=0)
    for kind in KINDS:
        p.add_argument(f"--{kind}", type=float, default=0.0, help=f"share of requests answered with {kind}")
    p.add_argument("--delay-seconds", type=float, default=2.0)
    p.add_argument("--rules", default="[]", help="JSON list of permanent-error rules")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started it is gone")
    args = p.parse_args(argv)
    if urlsplit(args.upstream).hostname not in ("127.0.0.1", "localhost"):
        p.error("the upstream must be on loopback")
    config = {"seed": args.seed, "rates": {k: getattr(args, k) for k in KINDS},
              "delay_seconds": args.delay_seconds, "rules": json.loads(args.rules)}
    server = serve(args.upstream, args.port, config)
    if args.exit_with_parent:  # a killed test run leaves no proxy behind
        parent = os.getppid()

        def watch():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    print(f"LISTENING http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


# ------------------------------------------------------------------ pytest fixtures

try:
    import pytest
except ImportError:  # the proxy itself needs only the standard library
    pytest = None


class FaultProxy:
    """A handle on the running proxy process: its URL, and the mix it injects."""

    def __init__(self, url: str, process):
        self.url, self.process = url, process

    def _call(self, method: str, config: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=10)
        try:
            body = json.dumps(config).encode() if config is not None else None
            conn.request(method, ADMIN_PATH, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise ValueError(data.get("error"))
            return data
        finally:
            conn.close()

    def configure(self, *, seed: int = 0, rules: list | None = None, delay_seconds: float = 2.0,
                  **rates: float) -> dict:
        """Replace the mix: `configure(slowdown=0.02, internal=0.01, reset=0.01, seed=3, rules=[...])`."""
        return self._call("PUT", {"seed": seed, "rates": rates, "delay_seconds": delay_seconds,
                                  "rules": rules or []})

    def clean(self) -> dict:
        return self._call("PUT", clean_config())

    def stats(self) -> dict:
        """{"config", "counts": {"requests", "slowdown", ..., "rules"}, "log": [{"kind", "method", "url"}]}"""
        return self._call("GET")


def _start(upstream: str, timeout: float = 30.0):
    import subprocess

    proc = subprocess.Popen([sys.executable, __file__, "--upstream", upstream, "--port", "0", "--exit-with-parent"],
                            stdout=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].startswith("LISTENING "):
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"fault proxy did not start within {timeout}s: {line!r}")
    return proc, line[0].split()[1]


if pytest is not None:

    @pytest.fixture(scope="session")
    def fault_proxy_server(s3_endpoint):
        """The proxy process in front of the session's moto server (started once, killed at the end)."""
        proc, url = _start(s3_endpoint)
        yield FaultProxy(url, proc)
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            proc.kill()
            proc.wait(10)

    @pytest.fixture
    def fault_proxy(fault_proxy_server):
        """The proxy with a clean mix for this test; `fault_proxy.url` is the endpoint to give clients,
        `fault_proxy.configure(...)` sets rates, seed and rules, `fault_proxy.stats()` says what was injected."""
        fault_proxy_server.clean()
        yield fault_proxy_server
        fault_proxy_server.clean()


if __name__ == "__main__":
    sys.exit(main())
