"""A counting, fault-injecting HTTP/1.1 reverse proxy for tests and scripts (stdlib only).

The daemon under test talks to the proxy; the proxy talks to a real server (SeaweedFS,
Azurite, fake-gcs-server). The proxy

- forwards every request head and response head byte for byte (S3 SigV4 signs the Host
  header and others: nothing is rewritten, the Host the client sent reaches the server),
- streams bodies in both directions (a 1 GiB GET never sits in memory), with
  Content-Length, chunked and read-until-close framing and ``Expect: 100-continue``,
- records every request as a `Seen` (method, path, query, Range header, status), so a test
  asserts what the server was asked: ``proxy.count(method="GET", path="/bucket/key")``,
- injects faults into the next N matching requests: `fail` (answer a status itself, by
  default an S3 ``503 SlowDown``), `delay` (wait before forwarding), `stall` (pause the
  response body after some bytes), `cut` (close the connection after some body bytes),
  `trickle` (after some body bytes, send the rest one byte at a time, slowly).

Each client connection gets its own upstream connection, so a cut or a stall never hits
another request. ``reset()`` clears the record and the faults and releases open stalls.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, unquote

BUFSIZE = 256 * 1024
MAX_HEAD = 64 * 1024

FaultKind = Literal["fail", "delay", "stall", "cut", "trickle"]

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_S3_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    500: "InternalError",
    503: "SlowDown",
}


@dataclass
class Seen:
    """One request as the proxy received it."""

    method: str
    raw_path: str  # as sent, percent-encoded
    query: str  # without the "?"
    range: str | None  # the Range header, if any
    headers: dict[str, str]  # lower-cased names; last value wins
    time: float = field(default_factory=time.monotonic)
    status: int | None = None  # final status sent to the client (None: none sent)
    fault: str | None = None  # fault kinds applied, comma separated
    # response body bytes handed to the client; counted just before the send, so a
    # client that has read a byte always finds it counted here
    body_bytes: int = 0
    ended: float | None = None  # when its response was sent whole (time.monotonic)

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    @property
    def ranged(self) -> bool:
        return self.range is not None

    def matches(
        self,
        method: str | None = None,
        path: str | None = None,
        ranged: bool | None = None,
        prefix: str | None = None,
    ) -> bool:
        if method is not None and self.method != method.upper():
            return False
        if path is not None and path not in (self.path, self.raw_path):
            return False
        if prefix is not None and not (
            self.path.startswith(prefix) or self.raw_path.startswith(prefix)
        ):
            return False
        return ranged is None or self.ranged == ranged


@dataclass(eq=False)
class Fault:
    """A fault for the next ``remaining`` requests that match (None: every one)."""

    kind: FaultKind
    remaining: int | None
    method: str | None = None
    path: str | None = None
    prefix: str | None = None
    status: int = 503
    body: bytes | None = None
    seconds: float = 0.0
    after_bytes: int = 0
    hits: int = 0
    # query parameters the request must carry with exactly these (decoded) values
    query: dict[str, str] | None = None

    def take(self, req: Seen) -> bool:
        """Whether this fault applies to `req` (and count it if so). Call under the lock."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if not req.matches(self.method, self.path, None, self.prefix):
            return False
        if self.query is not None:
            params = parse_qs(req.query, keep_blank_values=True)
            if any(params.get(name) != [value] for name, value in self.query.items()):
                return False
        if self.remaining is not None:
            self.remaining -= 1
        self.hits += 1
        return True


class _Closed(Exception):
    """The peer closed the connection (or a fault cut it)."""


class _Reader:
    """Buffered reads from a socket: heads, lines, and body bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(BUFSIZE)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on EOF before any byte."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head, self.buf = self.buf[: end + 4], self.buf[end + 4 :]
                return head
            if len(self.buf) > MAX_HEAD:
                raise _Closed("head too large")
            if not self._fill():
                if self.buf.strip():
                    raise _Closed("EOF inside a head")
                return None

    def read_line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 2], self.buf[end + 2 :]
                return line
            if len(self.buf) > MAX_HEAD or not self._fill():
                raise _Closed("EOF inside a line")

    def read_some(self, limit: int) -> bytes:
        """Up to `limit` bytes (at least one); b"" on EOF."""
        if self.buf:
            data, self.buf = self.buf[:limit], self.buf[limit:]
            return data
        return self.sock.recv(min(limit, BUFSIZE))


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """First line and lower-cased headers of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _is_chunked(headers: dict[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _wants_close(headers: dict[str, str], version: str) -> bool:
    conn = headers.get("connection", "").lower()
    if "close" in conn:
        return True
    return version == "HTTP/1.0" and "keep-alive" not in conn


class _BodySink:
    """Sends response body bytes to the client, applying stall, cut and trickle faults."""

    def __init__(
        self,
        conn: _Connection,
        seen: Seen,
        stall: Fault | None,
        cut: Fault | None,
        trickle: Fault | None = None,
    ) -> None:
        self.conn = conn
        self.seen = seen
        self.stall = stall
        self.cut = cut
        self.trickle = trickle
        self.stalled = False
        # taken once per response: a `release` during its trickle frees all of its body,
        # whichever later chunk of the upstream's it comes in (`release` swaps the event)
        self.released = conn.proxy._release

    def _deliver(self, data: bytes) -> None:
        self.seen.body_bytes += len(data)
        self.conn.client.sendall(data)

    def _trickle(self, data: bytes, fault: Fault) -> None:
        """Send `data` one byte every `fault.seconds`; all at once after `release`."""
        released = self.released
        for at in range(len(data)):
            if self.conn.proxy._stopping.is_set():
                raise _Closed("proxy stopping")
            if released.is_set():
                self._deliver(data[at:])
                return
            released.wait(fault.seconds)
            self._deliver(data[at : at + 1])

    def send(self, data: bytes) -> None:
        trickle = self.trickle
        if trickle is not None and self.seen.body_bytes + len(data) > trickle.after_bytes:
            head = data[: max(0, trickle.after_bytes - self.seen.body_bytes)]
            if head:
                self._deliver(head)
            self._trickle(data[len(head) :], trickle)
            return
        while data:
            sent = self.seen.body_bytes
            if self.cut is not None and sent + len(data) >= self.cut.after_bytes:
                head = data[: max(0, self.cut.after_bytes - sent)]
                if head:
                    self._deliver(head)
                raise _Closed("cut by fault")
            stall = self.stall
            if stall is not None and not self.stalled and sent + len(data) >= stall.after_bytes:
                head = data[: max(0, stall.after_bytes - sent)]
                if head:
                    self._deliver(head)
                data = data[len(head) :]
                self.stalled = True
                self.conn.proxy._wait(stall.seconds)
                continue
            self._deliver(data)
            return


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: Proxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.creader = _Reader(client)
        self.upstream: socket.socket | None = None
        self.ureader: _Reader | None = None

    # -- plumbing

    def _connect_upstream(self) -> tuple[socket.socket, _Reader]:
        if self.upstream is not None and self.ureader is not None:
            # Reuse only if the server has not closed the idle connection meanwhile.
            readable, _, _ = select.select([self.upstream], [], [], 0)
            if not readable and not self.ureader.buf:
                return self.upstream, self.ureader
            self._close_upstream()
        sock = socket.create_connection(self.proxy.upstream, timeout=None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy._track(sock)
        self.upstream, self.ureader = sock, _Reader(sock)
        return sock, self.ureader

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.proxy._untrack(self.upstream)
            with contextlib.suppress(OSError):
                self.upstream.close()
        self.upstream = self.ureader = None

    def _pump_exact(self, src: _Reader, n: int, send: socket.socket | _BodySink | None) -> None:
        while n > 0:
            data = src.read_some(min(n, BUFSIZE))
            if not data:
                raise _Closed("EOF inside a body")
            n -= len(data)
            if isinstance(send, socket.socket):
                send.sendall(data)
            elif send is not None:
                send.send(data)

    def _pump_body(
        self,
        src: _Reader,
        headers: dict[str, str],
        send: socket.socket | _BodySink | None,
        until_close: bool = False,
    ) -> None:
        """Forward (or with send=None, drop) one message body framed by `headers`."""

        def out(data: bytes) -> None:
            if isinstance(send, socket.socket):
                send.sendall(data)
            elif send is not None:
                send.send(data)

        if _is_chunked(headers):
            while True:
                line = src.read_line()
                out(line)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = src.read_line()
                        out(trailer)
                        if trailer == b"\r\n":
                            return
                self._pump_exact(src, size + 2, send)
        elif "content-length" in headers:
            self._pump_exact(src, int(headers["content-length"]), send)
        elif until_close:
            while True:
                data = src.read_some(BUFSIZE)
                if not data:
                    return
                out(data)

    # -- one request

    def _answer_fault(self, seen: Seen, fault: Fault) -> None:
        status = fault.status
        reason = _REASONS.get(status, "Injected")
        body = fault.body
        if body is None:
            code = _S3_CODES.get(status, "InternalError")
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message>"
                f"<Resource>{seen.raw_path}</Resource><RequestId>test-proxy</RequestId></Error>"
            ).encode()
        if seen.method == "HEAD":
            body = b""
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            "x-amz-request-id: test-proxy\r\n"
            "\r\n"
        ).encode()
        seen.status = status
        seen.body_bytes = len(body)
        self.client.sendall(head + body)

    def _read_final_response(self, ureader: _Reader) -> tuple[bytes, str, dict[str, str]]:
        """The first non-1xx response head; 1xx heads are forwarded as they come."""
        while True:
            head = ureader.read_head()
            if head is None:
                raise _Closed("upstream closed before answering")
            first, headers = _parse_head(head)
            status = int(first.split(" ", 2)[1])
            if 100 <= status < 200 and status != 101:
                self.client.sendall(head)
                continue
            return head, first, headers

    def handle_one(self) -> bool:
        """Serve one request; False when the connection is done."""
        head = self.creader.read_head()
        if head is None:
            return False
        first, headers = _parse_head(head)
        parts = first.split(" ")
        if len(parts) != 3:
            raise _Closed(f"bad request line {first!r}")
        method, target, version = parts
        raw_path, _, query = target.partition("?")
        seen = Seen(method, raw_path, query, headers.get("range"), headers)
        faults = self.proxy._record(seen)
        close = _wants_close(headers, version)
        has_body = _is_chunked(headers) or int(headers.get("content-length", "0") or 0) > 0
        expect = "100-continue" in headers.get("expect", "").lower()

        delay = faults.get("delay")
        if delay is not None:
            self.proxy._wait(delay.seconds)
        fail = faults.get("fail")
        if fail is not None:
            if has_body and expect:
                close = True  # the client may never send the body: we cannot reuse
            else:
                self._pump_body(self.creader, headers, None)
            self._answer_fault(seen, fail)
            return not close

        try:
            upstream, ureader = self._connect_upstream()
        except OSError as exc:
            raise _Closed(f"upstream unreachable: {exc}") from exc
        upstream.sendall(head)
        early: tuple[bytes, str, dict[str, str]] | None = None
        if has_body:
            if expect and not self.creader.buf:
                # Wait for the server's 100 (or its final answer) or for the client to
                # give up waiting and send the body anyway.
                while True:
                    readable, _, _ = select.select([upstream, self.client], [], [], 0.5)
                    if self.proxy._stopping.is_set():
                        raise _Closed("proxy stopping")
                    if upstream in readable:
                        resp = ureader.read_head()
                        if resp is None:
                            raise _Closed("upstream closed")
                        rfirst, rheaders = _parse_head(resp)
                        if int(rfirst.split(" ", 2)[1]) == 100:
                            self.client.sendall(resp)
                            self._pump_body(self.creader, headers, upstream)
                        else:
                            early = (resp, rfirst, rheaders)
                            close = True  # body not sent: the connection cannot be reused
                        break
                    if self.client in readable:
                        self._pump_body(self.creader, headers, upstream)
                        break
            else:
                self._pump_body(self.creader, headers, upstream)

        rhead, rfirst, rheaders = early or self._read_final_response(ureader)
        rversion, status_text = rfirst.split(" ", 2)[:2]
        status = int(status_text)
        seen.status = status
        self.client.sendall(rhead)
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        upstream_closes = _wants_close(rheaders, rversion)
        if not no_body:
            framed = _is_chunked(rheaders) or "content-length" in rheaders
            sink = _BodySink(
                self, seen, faults.get("stall"), faults.get("cut"), faults.get("trickle")
            )
            self._pump_body(ureader, rheaders, sink, until_close=not framed)
            if not framed:
                upstream_closes = True
        seen.ended = time.monotonic()
        if upstream_closes:
            self._close_upstream()
        return not (close or upstream_closes)

    def run(self) -> None:
        try:
            while not self.proxy._stopping.is_set() and self.handle_one():
                pass
        except (_Closed, OSError, ValueError, IndexError):
            pass
        finally:
            self._close_upstream()
            self.proxy._untrack(self.client)
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.client.close()


class Proxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (host, port).

    Use as a context manager or call `start` / `stop`. ``endpoint`` is "127.0.0.1:PORT".
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0, name: str = "proxy") -> None:
        self.upstream = upstream
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._faults: list[Fault] = []
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> Proxy:
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept, name=f"{self.name}-accept")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._release.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Close every open connection (client and upstream side) now."""
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._track(client)
            conn = _Connection(self, client)
            thread = threading.Thread(target=conn.run, name=f"{self.name}-conn")
            thread.daemon = True
            thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _wait(self, seconds: float) -> None:
        """Sleep for a fault; `reset`, `release` and `stop` end it early."""
        self._release.wait(seconds)

    def _record(self, seen: Seen) -> dict[str, Fault]:
        with self._lock:
            self._seen.append(seen)
            chosen: dict[str, Fault] = {}
            for fault in self._faults:
                if fault.kind not in chosen and fault.take(seen):
                    chosen[fault.kind] = fault
            if chosen:
                seen.fault = ",".join(sorted(chosen))
            return chosen

    # -- what the server was asked

    def reset(self) -> None:
        """Forget the recorded requests and the faults; release stalls in progress."""
        with self._lock:
            self._seen.clear()
            self._faults.clear()
        self.release()

    def release(self) -> None:
        """End every delay and stall in progress (new ones wait again)."""
        self._release.set()
        self._release = threading.Event()

    def requests(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        ranged: bool | None = None,
        prefix: str | None = None,
    ) -> list[Seen]:
        """Requests received so far that match; `path` is compared decoded or raw."""
        with self._lock:
            return [s for s in self._seen if s.matches(method, path, ranged, prefix)]

    def count(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        ranged: bool | None = None,
        prefix: str | None = None,
    ) -> int:
        """How many requests matched, e.g. ``count("GET", "/bucket/key")``."""
        return len(self.requests(method, path, ranged=ranged, prefix=prefix))

    def counts(self) -> Counter[tuple[str, str, bool]]:
        """(method, decoded path, has Range header) -> number of requests."""
        with self._lock:
            return Counter((s.method, s.path, s.ranged) for s in self._seen)

    # -- faults (each returns the Fault, whose .hits tells how often it fired)

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        count: int | None = 1,
        status: int = 503,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
        body: bytes | None = None,
        query: dict[str, str] | None = None,
    ) -> Fault:
        """Answer the next `count` matching requests with `status` (default S3 SlowDown);
        `query` picks requests by parameters, e.g. a listing's prefix."""
        return self._add(
            Fault("fail", count, method, path, prefix, status=status, body=body, query=query)
        )

    def delay(
        self,
        seconds: float,
        count: int | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
    ) -> Fault:
        """Wait `seconds` before forwarding the next `count` matching requests."""
        return self._add(Fault("delay", count, method, path, prefix, seconds=seconds))

    def stall(
        self,
        after_bytes: int,
        seconds: float,
        count: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
        query: dict[str, str] | None = None,
    ) -> Fault:
        """Pause a response body for `seconds` (or until `release`) after its first
        `after_bytes` bytes; `query` picks requests by parameters, e.g. a listing's prefix."""
        stall = Fault("stall", count, method, path, prefix, seconds=seconds, query=query)
        stall.after_bytes = after_bytes
        return self._add(stall)

    def cut(
        self,
        after_bytes: int,
        count: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
    ) -> Fault:
        """Close the connection after `after_bytes` bytes of a response body."""
        return self._add(Fault("cut", count, method, path, prefix, after_bytes=after_bytes))

    def trickle(
        self,
        after_bytes: int,
        seconds: float,
        count: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
    ) -> Fault:
        """After the first `after_bytes` bytes of a response body, send the rest one byte
        every `seconds` (a server that never stays silent long enough for a read timeout);
        `release` sends the rest at once."""
        return self._add(
            Fault("trickle", count, method, path, prefix, seconds=seconds, after_bytes=after_bytes)
        )

    @contextlib.contextmanager
    def faulted(self, fault: Fault) -> Iterator[Fault]:
        """Scope a fault: ``with proxy.faulted(proxy.fail(None)): ...`` removes it after."""
        try:
            yield fault
        finally:
            with self._lock:
                if fault in self._faults:
                    self._faults.remove(fault)
