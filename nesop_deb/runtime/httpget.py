"""One HTTP GET of a URL the app answers, bounded in time and memory (root asks; the app may be hostile).

requests' own timeout bounds each wait for a byte, not the answer: an app that sends one byte a
second, in its headers or its body, would hold root forever, and an endless body would fill
root's memory. Here one deadline covers the connect, the TLS handshake, the headers and the
body; at most :data:`BODY_CAP` bytes of the body are read, as sent (not decompressed); and
nothing of root's environment is sent (no ``~/.netrc`` credentials, no proxy).
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from nesop_deb.errors import NesopError

BODY_CAP = 64 << 10  # bytes of a body read: plenty for the line shown; an endless one stops here


class NoAnswer(NesopError):
    """The URL gave no complete answer (refused, reset, or not within the deadline)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: str  # the first BODY_CAP bytes, decoded as UTF-8 (undecodable bytes replaced)


def get(url: str, timeout: float) -> Answer:
    """GET ``url`` (no redirect followed); raise :class:`NoAnswer` unless it answers in ``timeout`` s."""
    deadline = _Deadline(timeout)
    try:
        with deadline:
            answer = _get(url, timeout)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise NoAnswer(_late(timeout) if deadline.expired else f"no answer ({type(exc).__name__})") from exc
    if deadline.expired:  # a body without a length ends where the shutdown cut it: not an answer
        raise NoAnswer(_late(timeout))
    return answer


def _late(timeout: float) -> str:
    return f"no complete answer within {timeout:g} s"


def _get(url: str, timeout: float) -> Answer:
    with requests.Session() as session:
        session.trust_env = False  # root's ~/.netrc and proxy settings are none of the app's business
        for scheme in ("http://", "https://"):
            session.mount(scheme, _Adapter())
        # identity: a small compressed body must not inflate in root's memory (it is read raw anyway)
        headers = {"Accept-Encoding": "identity"}
        with session.get(url, timeout=timeout, allow_redirects=False, stream=True, headers=headers) as r:
            body: bytes = r.raw.read(BODY_CAP, decode_content=False)
            return Answer(r.status_code, body.decode("utf-8", errors="replace"))


class _Deadline:
    """One GET's time limit: when it passes, a timer shuts down the GET's sockets, and whichever
    read is blocked (TLS handshake, headers, body) returns at once."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token[_Deadline | None] | None = None

    def watch(self, sock: socket.socket) -> None:
        # a duplicate: TLS detaches the original socket object, and a shutdown acts on the
        # connection itself, whichever descriptor of it is used
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _shutdown(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)

    def __enter__(self) -> _Deadline:
        self._token = _current.set(self)
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        if self._token is not None:
            _current.reset(self._token)
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing is blocked on it
        sock.shutdown(socket.SHUT_RDWR)


# The deadline of the GET running in this thread: the connections below hand it their sockets
# (a pool builds its connections itself, so the deadline cannot be passed to them as an argument).
_current: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("nesop_httpget", default=None)


def _watched(sock: socket.socket) -> socket.socket:
    deadline = _current.get()
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter, with connections whose sockets the running GET's deadline can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
