"""A counting HTTP proxy between the safekeeper and moto's S3 server, for the benchmarks.

It is test_runner/fixtures/s3_faults.py's `FaultProxy` with its faults left off (rate 0, never
enabled), so every request is forwarded unchanged; this subclass only adds accounting. For every
request it records, when the request has been answered (or failed): the monotonic time, the S3
operation (`classify`), the key, and the request body bytes read from the client and sent
upstream (as framed on the wire: with aws-chunked or chunked framing, the framing bytes count
too). Totals per operation are `snapshot()`; the full log is `log` (guarded by the proxy's lock).

It hooks the fixture's per-request method `_one_request` (a private method of the fixture: if
that changes, this breaks loudly, not silently: the counters stay zero and the benchmark says so).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test_runner"))

from fixtures.s3_faults import FaultProxy  # noqa: E402


def classify(method: str, target: str, copy: bool = False) -> tuple[str, str]:
    """(operation, key) of an S3 request in path style (`/bucket/key?query`); `copy`: it has an
    `x-amz-copy-source` header (server-side copy, no WAL in the body)."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = unquote(parts.path).lstrip("/")
    key = path.split("/", 1)[1] if "/" in path else ""
    if method == "PUT":
        op = ("UploadPartCopy" if copy else "UploadPart") if "partNumber" in query else ("CopyObject" if copy else "PutObject")
    elif method == "POST":
        op = "DeleteObjects" if "delete" in query else "CreateMultipartUpload" if "uploads" in query else \
            "CompleteMultipartUpload" if "uploadId" in query else "POST other"
    elif method == "GET":
        op = "ListObjects" if ("list-type" in query or not key) else "GetObject"
    elif method == "HEAD":
        op = "HeadObject" if key else "HeadBucket"
    elif method == "DELETE":
        op = "DeleteObject"
    else:
        op = method
    return op, key


@dataclass
class Request:
    t: float          # time.monotonic() when the request was done
    method: str
    op: str
    key: str
    body_bytes: int


class _CountingReader:
    """Wraps the client's buffered reader: counts the body bytes the fixture copies upstream."""

    def __init__(self, inner: BinaryIO):
        self.inner, self.n = inner, 0

    def read1(self, n: int = -1) -> bytes:
        data = self.inner.read1(n)
        self.n += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        line = self.inner.readline(limit)
        self.n += len(line)
        return line


class CountingProxy(FaultProxy):
    """Forwards every request to moto on `upstream_port`, counting requests and body bytes."""

    def __init__(self, upstream_port: int):
        super().__init__(upstream_port, rate=0.0, seed=0)
        self.log: list[Request] = []

    def _one_request(self, client, rfile, head) -> bool:  # noqa: ANN001 - the fixture's signature
        method, target, _version = head[0].decode("latin-1").split(" ", 2)
        copy = any(line.lower().startswith(b"x-amz-copy-source:") for line in head[1:])
        op, key = classify(method, target, copy)
        counting = _CountingReader(rfile)
        try:
            return super()._one_request(client, counting, head)
        finally:
            with self._lock:
                self.log.append(Request(time.monotonic(), method, op, key, counting.n))

    def requests_between(self, t0: float, t1: float) -> list[Request]:
        with self._lock:
            return [r for r in self.log if t0 <= r.t < t1]

    def snapshot(self) -> tuple[Counter, Counter]:
        """(requests by operation, body bytes by operation) since the start."""
        n, b = Counter(), Counter()
        with self._lock:
            for r in self.log:
                n[r.op] += 1
                b[r.op] += r.body_bytes
        return n, b
