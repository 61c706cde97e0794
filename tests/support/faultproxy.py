"""A fault-injecting HTTP proxy for the S3 tests: the standard library only, in front of the weed server.

    with FaultProxy(("127.0.0.1", 8333), rates={"slowdown": 0.05, "cut_body": 0.05}, seed=1) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint           # the job talks to the proxy
        proxy.add("PUT", "/champion.json", "reset_response", times=1)   # and one targeted fault

Requests are passed on byte for byte: SigV4 signs the Host header and the path, so both arrive as the
client sent them, and the server checks the signature it would have checked anyway. Per request, a
fault is drawn (each kind with its own rate), or taken from a targeted rule first:

    slowdown        answer 503 SlowDown; the server never sees the request
    internal        answer 500 InternalError; the server never sees the request
    reset_request   reset the connection while the request is being sent (the server never sees it)
    reset_response  pass the request on, then reset the connection partway through the reply: the
                    request took effect, and its reply is lost
    cut_headers     pass the request on, then send the reply's status line and part of its headers,
                    and close (urllib3 then complains of unparsable headers)
    cut_body        pass the request on, then send the headers (with the full Content-Length) and part
                    of the body, and close
    delay           wait `delay` seconds (drawn uniformly) before passing the request on

and faults only a rule serves (`add`), never a rate: the first two are what `cut_headers` does now
and then, made certain:

    cut_date        pass the request on, then send the headers up to the middle of Last-Modified
                    ('Sat, 28 No'), and close
    cut_etag        pass the request on, then send the headers up to the middle of the ETag's value
                    (a multipart part then looks uploaded with a garbled ETag), and close
    invalid_part    answer 400 InvalidPart, as S3 answers a CompleteMultipartUpload naming a part by a
                    wrong ETag; the server never sees the request

`counts` says how often each fault was served, so a test can show that its faults really happened.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

FAULTS = ("slowdown", "internal", "reset_request", "reset_response", "cut_headers", "cut_body", "delay")
TARGETED = ("cut_date", "cut_etag", "invalid_part")
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "invalid_part": (400, "Bad Request", "InvalidPart", "One or more of the specified parts could not be found."),
}


@dataclass
class Rule:
    """A targeted fault: the next `times` requests whose method and path (with query) match get `fault`."""

    method: str | None
    path: str
    fault: str
    times: int


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], rates: dict[str, float] | None = None, seed: int = 0,
                 delay: tuple[float, float] = (2.0, 5.0)):
        unknown = set(rates or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}; choose from {FAULTS}")
        self.upstream = upstream
        self.rates = dict(rates or {})
        self.delay = delay
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.rewrites: list[Callable[[str, str, bytes], bytes | None]] = []
        self.counts: collections.Counter = collections.Counter()
        self.requests = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.closed = False

    # ------------------------------------------------------------------------------------------ control

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True
        self.server.close()

    def add(self, method: str | None, path: str, fault: str, times: int = 1) -> None:
        assert fault in FAULTS + TARGETED or fault == "pass", fault
        with self.lock:
            self.rules.append(Rule(method, path, fault, times))

    def clear(self) -> None:
        """Drop every rule: storage is well again."""
        with self.lock:
            self.rules.clear()

    def rewrite(self, change: Callable[[str, str, bytes], bytes | None]) -> None:
        """change(method, target, body) -> a new reply body, or None to leave the reply alone."""
        self.rewrites.append(change)

    def set_rates(self, rates: dict[str, float]) -> None:
        with self.lock:
            self.rates = dict(rates)

    def _choose(self, method: str, target: str) -> str | None:
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule.times > 0 and (rule.method is None or rule.method == method) and rule.path in target:
                    rule.times -= 1
                    fault = None if rule.fault == "pass" else rule.fault
                    break
            else:
                draw, fault = self.random.random(), None
                for name, rate in self.rates.items():
                    if draw < rate:
                        fault = name
                        break
                    draw -= rate
            if fault:
                self.counts[fault] += 1
            return fault

    # ------------------------------------------------------------------------------------------ serving

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            reader = client.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                method, target, headers = _parse_head(head)
                fault = self._choose(method, target)
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if fault == "reset_request":
                    length = int(headers.get("content-length", "0") or 0)
                    reader.read(length // 2)
                    return _reset(client)
                body = _read_body(reader, headers, method, request=True)
                if fault in _ERRORS:
                    client.sendall(_error_reply(*_ERRORS[fault]))
                    continue
                if fault == "delay":
                    time.sleep(self.random.uniform(*self.delay))
                for fresh in (upstream is None, True):  # a kept-alive connection the server closed: once more
                    if fresh:
                        if upstream is not None:
                            upstream.close()
                        upstream = socket.create_connection(self.upstream)
                        upstream_reader = upstream.makefile("rb")
                    try:
                        upstream.sendall(head + body)
                        reply_head, reply_body = _read_reply(upstream_reader, method)
                        break
                    except OSError:
                        if fresh:
                            raise
                reply_head, reply_body = self._rewritten(method, target, reply_head, reply_body)
                if _header(reply_head, "connection").lower() == "close":
                    upstream.close()
                    upstream = None
                if fault == "reset_response":
                    reply = reply_head + reply_body
                    client.sendall(reply[: self.random.randrange(1, len(reply))])
                    return _reset(client)
                if fault == "cut_headers":
                    first_line = reply_head.index(b"\r\n") + 2
                    client.sendall(reply_head[: self.random.randrange(first_line, max(first_line + 1, len(reply_head) - 3))])
                    return _close(client)
                if fault == "cut_date" and b"\r\nlast-modified: " in reply_head.lower():
                    at = reply_head.lower().index(b"\r\nlast-modified: ") + len(b"\r\nlast-modified: Sat, 28 No")
                    client.sendall(reply_head[:at])
                    return _close(client)
                if fault == "cut_etag" and b"\r\netag: " in reply_head.lower():
                    at = reply_head.lower().index(b"\r\netag: ") + len(b"\r\netag: ") + 6
                    client.sendall(reply_head[:at])
                    return _close(client)
                if fault == "cut_body" and reply_body:
                    client.sendall(reply_head + reply_body[: self.random.randrange(0, len(reply_body))])
                    return _close(client)
                client.sendall(reply_head + reply_body)
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            client.close()

    def _rewritten(self, method: str, target: str, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        for change in self.rewrites:
            plain = _unchunk(body) if _header(head, "transfer-encoding").lower() == "chunked" else body
            new = change(method, target, plain)
            if new is not None:
                lines = [line for line in head.split(b"\r\n")[:-2]
                         if not line.lower().startswith((b"content-length:", b"transfer-encoding:"))]
                head = b"\r\n".join(lines + [f"Content-Length: {len(new)}".encode(), b"", b""])
                body = new
        return head, body


# ---------------------------------------------------------------------------------------------- HTTP/1.1


def _read_head(reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    first, *rest = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _header(head: bytes, name: str) -> str:
    return _parse_head(b"X / HTTP/1.1\r\n" + head.split(b"\r\n", 1)[1])[2].get(name, "")


def _read_body(reader, headers: dict[str, str], method: str, request: bool, status: int = 200) -> bytes:
    """The raw body bytes (chunk framing kept), as the peer sent them."""
    if not request and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = []
        while True:
            size_line = reader.readline(65536)
            raw.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = reader.readline(65536)
                    raw.append(line)
                    if line in (b"\r\n", b"\n", b""):
                        return b"".join(raw)
            raw.append(reader.read(size + 2))
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    return b"" if request else reader.read()


def _read_reply(reader, method: str) -> tuple[bytes, bytes]:
    while True:
        head = _read_head(reader)
        if head is None:
            raise ConnectionError("the server closed the connection")
        status = int(head.split(b" ", 2)[1])
        if status == 100:  # the server's own 100 Continue: the client had ours already
            continue
        _, _, headers = _parse_head(b"X / HTTP/1.1\r\n" + head.split(b"\r\n", 1)[1])
        return head, _read_body(reader, headers, method, request=False, status=status)


def _unchunk(raw: bytes) -> bytes:
    out, rest = [], raw
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def _error_reply(status: int, reason: str, code: str, message: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            "x-amz-request-id: fault-proxy\r\n\r\n").encode()
    return head + body


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _close(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
