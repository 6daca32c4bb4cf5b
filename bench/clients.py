"""HTTP clients that keep a page busy from threads, and the record of every request they sent.

Two kinds, as browsers and proxies behave: a *fresh* client opens a new connection for each
request (``Connection: close``); a *keep-alive* client keeps one HTTP/1.1 connection and, before
it reuses it, checks that the server has not closed it meanwhile (urllib3's
``is_connection_dropped``: readable while idle means EOF or garbage). A connection found closed
there is an *idle connection lost*, not a failed request: the client opens a new one and sends
its request on that. A request the client did send and got no 2xx answer to is a failure, by kind:
refused, reset, EOF before any byte of a response, EOF inside one, a timeout, a non-2xx status.

Each client runs a closed loop (the next request after the answer and a short pause) in a thread
that may enter a container's network namespace first (:func:`bench.poller.enter_netns`).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from bench.poller import enter_netns

FRESH = "fresh"
KEEP_ALIVE = "keep-alive"
OK = "ok"
# what a failed request ended with (Request.result); "status" has the code in ``detail``
FAILURES = {
    "refused": "refused",
    "reset": "reset",
    "eof": "EOF before a response",
    "truncated": "EOF inside a response",
    "timeout": "timeout",
    "status": "non-2xx",
    "invalid": "not HTTP",
    "error": "other error",
}
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST: no TIME_WAIT for thousands of connections
_MAX_HEADER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One request a client sent (or tried to: a refused connect counts)."""

    client: str  # "fresh-1", "keep-alive-3"
    start: float  # wall-clock time (time.time()) when the client began: connect or send
    seconds: float  # until the answer was read, or the failure
    result: str  # OK or a key of FAILURES
    detail: str = ""  # the status code, the errno name
    reused: bool = False  # sent on a kept-alive connection that had served before

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def ok(self) -> bool:
        return self.result == OK

    def failure(self) -> str:
        """The failure's name for a report, e.g. "refused", "non-2xx 503"."""
        name = FAILURES.get(self.result, self.result)
        return f"{name} {self.detail}" if self.detail else name


class _Eof(Exception):
    def __init__(self, partial: bool) -> None:
        super().__init__("EOF inside a response" if partial else "EOF before a response")
        self.partial = partial


class _Invalid(Exception):
    pass


class _Reader:
    """Reads one HTTP/1.x response off a socket, within a deadline (time.monotonic())."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.received = 0

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete response in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Eof(self.received > 0)
        self.received += len(chunk)
        self.buf += chunk

    def line(self) -> bytes:
        while (at := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _MAX_HEADER:
                raise _Invalid("header line too long")
            self._fill()
        out = bytes(self.buf[:at])
        del self.buf[: at + 2]
        return out

    def skip(self, n: int) -> None:
        while len(self.buf) < n:
            n -= len(self.buf)
            self.buf.clear()
            self._fill()
        del self.buf[:n]

    def until_eof(self) -> None:
        try:
            while True:
                self.buf.clear()
                self._fill()
        except _Eof:
            return


def read_response(sock: socket.socket, deadline: float) -> tuple[int, bool]:
    """Read one response to a GET; return its status and whether the server closes the
    connection after it. Raises _Eof, _Invalid, TimeoutError or OSError."""
    reader = _Reader(sock, deadline)
    status_line = reader.line()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _Invalid(f"status line {status_line[:80]!r}")
    version, status = parts[0], int(parts[1])
    headers: dict[bytes, bytes] = {}
    while line := reader.line():
        name, sep, value = line.partition(b":")
        if not sep:
            raise _Invalid(f"header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    close = b"close" in tokens or (version == b"HTTP/1.0" and b"keep-alive" not in tokens)
    if status in (204, 304) or 100 <= status < 200:
        return status, close
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while True:
            size_line = reader.line().split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _Invalid(f"chunk size {size_line[:20]!r}") from None
            if size == 0:
                while reader.line():  # trailers, up to the blank line
                    pass
                return status, close
            reader.skip(size + 2)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise _Invalid(f"Content-Length {length[:20]!r}")
        reader.skip(int(length))
        return status, close
    reader.until_eof()  # the body ends with the connection
    return status, True


def classify(exc: BaseException) -> tuple[str, str]:
    """A failed request's result and detail, from what the socket raised."""
    if isinstance(exc, _Eof):
        return ("truncated" if exc.partial else "eof"), ""
    if isinstance(exc, _Invalid):
        return "invalid", str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "refused", ""
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", ""
    if isinstance(exc, TimeoutError):
        return "timeout", ""
    if isinstance(exc, OSError) and exc.errno is not None:
        return "error", errno.errorcode.get(exc.errno, str(exc.errno))
    return "error", type(exc).__name__


def dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection is unusable: the server closed it (EOF readable) or
    sent something unasked. An idle connection with nothing to read is fine."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=max(0.001, deadline - time.monotonic()))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Client:
    """One client of a :class:`Load`; :meth:`one` sends one request and records it."""

    def __init__(self, name: str, host: str, port: int, path: str, timeout: float) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self.requests: list[Request] = []
        self.idle_lost: list[float] = []  # wall-clock times a pooled connection was found closed
        self._request = self.request_bytes(f"{host}:{port}", path)

    @staticmethod
    def request_bytes(host: str, path: str) -> bytes:
        raise NotImplementedError

    def one(self) -> Request:
        raise NotImplementedError

    def close(self) -> None:
        """Drop what the client holds (a kept-alive connection)."""

    def _record(
        self, start: float, clock: float, result: str, detail: str = "", reused: bool = False
    ) -> Request:
        req = Request(self.name, start, time.monotonic() - clock, result, detail, reused)
        self.requests.append(req)
        return req


def _outcome(status: int) -> tuple[str, str]:
    return (OK, "") if 200 <= status < 300 else ("status", str(status))


class FreshClient(Client):
    """A new connection for every request, closed after the answer."""

    @staticmethod
    def request_bytes(host: str, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    def one(self) -> Request:
        start, clock = time.time(), time.monotonic()
        deadline = clock + self.timeout
        try:
            with _connect(self.host, self.port, deadline) as sock:
                sock.sendall(self._request)
                status, _close = read_response(sock, deadline)
        except (OSError, _Eof, _Invalid) as exc:
            return self._record(start, clock, *classify(exc))
        return self._record(start, clock, *_outcome(status))


class KeepAliveClient(Client):
    """One HTTP/1.1 connection, reused while the server keeps it; checked before each reuse."""

    def __init__(self, name: str, host: str, port: int, path: str, timeout: float) -> None:
        super().__init__(name, host, port, path, timeout)
        self.sock: socket.socket | None = None

    @staticmethod
    def request_bytes(host: str, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def one(self) -> Request:
        reused = False
        if self.sock is not None:
            if dropped(self.sock):
                self.idle_lost.append(time.time())
                self.close()
            else:
                reused = True
        start, clock = time.time(), time.monotonic()
        deadline = clock + self.timeout
        try:
            if self.sock is None:
                self.sock = _connect(self.host, self.port, deadline)
            self.sock.sendall(self._request)
            status, close = read_response(self.sock, deadline)
        except (OSError, _Eof, _Invalid) as exc:
            self.close()
            return self._record(start, clock, *classify(exc), reused=reused)
        if close:
            self.close()
        return self._record(start, clock, *_outcome(status), reused=reused)


class Load:
    """``fresh`` + ``keep_alive`` clients GETting ``url`` in closed loops, until :meth:`close`.

    Each client pauses ``pause`` seconds after each answer (or failure), so a refused
    connection does not spin. With ``netns`` every client thread enters that network namespace
    first.
    """

    def __init__(
        self,
        url: str,
        *,
        fresh: int = 4,
        keep_alive: int = 4,
        pause: float = 0.005,
        timeout: float = 60.0,
        netns: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.clients: list[Client] = [
            FreshClient(f"{FRESH}-{i + 1}", host, port, path, timeout) for i in range(fresh)
        ] + [KeepAliveClient(f"{KEEP_ALIVE}-{i + 1}", host, port, path, timeout) for i in range(keep_alive)]
        self.pause = pause
        self.timeout = timeout
        self.netns = netns
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(c,), name=f"load-{c.name}", daemon=True)
            for c in self.clients
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the clients; a request in flight still finishes (at most its timeout)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def _run(self, client: Client) -> None:
        try:
            if self.netns is not None:
                enter_netns(self.netns)
            while not self._stop.is_set():
                client.one()
                self._stop.wait(self.pause)
        except BaseException as exc:  # a broken client must not pass for a quiet one
            self.errors.append(exc)
        finally:
            client.close()

    def check(self) -> None:
        if self.errors:
            raise RuntimeError(f"a client stopped: {self.errors[0]!r}") from self.errors[0]

    def requests(self) -> list[Request]:
        """Every request so far, by start time."""
        out = [r for c in self.clients for r in list(c.requests)]
        out.sort(key=lambda r: r.start)
        return out

    def idle_lost(self) -> list[float]:
        return sorted(t for c in self.clients for t in list(c.idle_lost))

    def wait_ok(self, since: float, timeout: float = 60.0) -> float:
        """Wait until a request that started after ``since`` (wall clock) was answered 2xx;
        return when that answer came."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            for c in self.clients:
                for r in reversed(list(c.requests)):
                    if r.start < since:
                        break
                    if r.ok:
                        return r.end
            if time.monotonic() > deadline:
                raise TimeoutError(f"no 2xx answer to a request sent after {since:.3f} in {timeout:g} s")
            time.sleep(0.01)
