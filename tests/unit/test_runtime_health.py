"""The health gate against a real HTTP server and systemd behind the subprocess seam: it asks
systemd rarely while the app is not answering yet, at once when it answers, and still catches a
unit that failed or restarted."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.runtime import health
from tests.unit.runtime_fixtures import UNIT, Server, fake_server


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def _shows(server: Server) -> int:
    return sum(1 for c in server.systemd.calls if c[:2] == ["systemctl", "show"])


def test_the_app_starting_is_probed_over_http_and_systemd_is_asked_rarely(server: Server) -> None:
    ready_at = time.monotonic() + 0.6
    probes: list[float] = []

    def decide() -> int:
        probes.append(time.monotonic())
        return 200 if time.monotonic() >= ready_at else 503

    url = server.serve_health(decide)

    took = health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)

    assert 0.55 < took < 2
    shows = _shows(server)
    assert len(probes) > shows, (len(probes), shows)
    assert shows <= took / health.STATUS_EVERY + 3  # the one when it answered, and the baseline's


def test_a_unit_that_fails_while_the_app_never_answers_is_caught_within_a_status_period(
    server: Server,
) -> None:
    url = server.serve_health(lambda: 503)
    unit = server.systemd.units[UNIT]
    unit.active, unit.sub = "failed", "failed"
    started = time.monotonic()

    with pytest.raises(health.HealthError, match="failed to start"):
        health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)

    assert time.monotonic() - started < 1


def test_an_answer_from_a_unit_that_restarted_is_not_healthy(server: Server) -> None:
    url = server.serve_health(lambda: 200)
    server.systemd.units[UNIT].restarts = 1

    with pytest.raises(health.HealthError, match="restarted 1x"):
        health.wait_healthy(UNIT, url, timeout=10, restarts_before=0)


# --- a hostile app: what root's probe must survive ------------------------------------------------


class RawServer:
    """A loopback TCP server: ``talk`` handles each connection, in its own thread, until it
    returns, the probe hangs up, or the test ends."""

    def __init__(self, talk: Callable[[socket.socket, threading.Event], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self.talk = talk
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"http://{host}:{port}/health"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request)
            with contextlib.suppress(OSError):  # the probe hung up: what it should do
                self.talk(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(talk: Callable[[socket.socket, threading.Event], None]) -> RawServer:
        servers.append(RawServer(talk))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


ENDLESS = 256 << 20  # as good as endless for a 64 KiB cap; a probe that reads it all holds 256 MiB


def endless_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(ENDLESS // len(chunk)):
        if stop.is_set():
            return
        conn.sendall(chunk)


def trickle(head: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """Send ``head``, then one byte every 20 ms for as long as the probe listens."""

    def talk(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        while not stop.wait(0.02):
            conn.sendall(b"x")

    return talk


@pytest.mark.timeout(30)
def test_an_endless_body_is_read_only_up_to_a_cap(raw_server: Any) -> None:
    server = raw_server(endless_body)
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = health.probe(server.url, timeout=5)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result == health.Probe(False, "HTTP 503: " + "x" * 200)
    assert took < 5
    assert peak < 4 << 20, f"the probe held {peak >> 20} MiB"


TRICKLED = {
    "status line": b"HTTP/1.1 200",
    "headers": b"HTTP/1.1 200 OK\r\nX-Slow: ",
    "body with a length": b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",
    "body without a length": b"HTTP/1.0 503 Service Unavailable\r\n\r\n",  # ends when the connection does
    "chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nF4240\r\n",
    "TLS handshake": b"\x16\x03\x03",  # a server hello that never completes
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("head", TRICKLED.values(), ids=TRICKLED.keys())
def test_an_answer_trickled_byte_by_byte_is_cut_at_the_deadline(raw_server: Any, head: bytes) -> None:
    server = raw_server(trickle(head))
    url = server.url.replace("http:", "https:") if head.startswith(b"\x16") else server.url
    started = time.monotonic()

    result = health.probe(url, timeout=0.5)

    assert time.monotonic() - started < 1.5
    assert result == health.Probe(False, "no complete answer within 0.5 s")


def _ok(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("leak", ["netrc", "proxy"])
def test_root_s_credentials_and_proxy_are_not_the_app_s(
    raw_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leak: str
) -> None:
    server = raw_server(_ok)
    proxy = raw_server(_ok)  # a proxy would see the probe (and could answer for the app)
    for var in ("no_proxy", "NO_PROXY", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    if leak == "netrc":
        (tmp_path / ".netrc").write_text("machine 127.0.0.1 login root password s3cret\n")
        (tmp_path / ".netrc").chmod(0o600)
        monkeypatch.setenv("HOME", str(tmp_path))
    else:
        monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/health"))

    assert health.probe(server.url) == health.Probe(True, "HTTP 200")
    [request] = server.requests
    assert request.startswith(b"GET /health HTTP/1.1\r\n")
    assert b"authorization" not in request.lower()
    assert proxy.requests == []
