"""The benchmark's HTTP clients against real sockets: what each answer or failure is recorded as,
and that a kept-alive connection the server closed while idle costs no request."""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench import clients

Behaviour = Callable[[socket.socket], None]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


@contextlib.contextmanager
def raw_server(behaviour: Behaviour) -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback server running ``behaviour`` on each connection it accepts (one at a time)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            # the client may be gone first (it gave up, or closed): what it saw is what counts
            with conn, contextlib.suppress(OSError):
                behaviour(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/api/products", accepted
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(timeout=5)


def answer(*responses: bytes, then_close: threading.Event | None = None) -> Behaviour:
    """Answer each request on the connection with the next response; then close it (and say so)."""

    def behaviour(conn: socket.socket) -> None:
        for response in responses:
            if not _read_request(conn):
                return
            conn.sendall(response)
        if then_close is not None:
            conn.shutdown(socket.SHUT_RDWR)
            then_close.set()

    return behaviour


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def fresh(url: str, timeout: float = 5.0) -> clients.FreshClient:
    parts = url.split("/", 3)
    host, port = parts[2].split(":")
    return clients.FreshClient("fresh-1", host, int(port), "/" + parts[3], timeout)


def keep_alive(url: str, timeout: float = 5.0) -> clients.KeepAliveClient:
    parts = url.split("/", 3)
    host, port = parts[2].split(":")
    return clients.KeepAliveClient("keep-alive-1", host, int(port), "/" + parts[3], timeout)


@pytest.mark.parametrize(
    ("response", "result", "detail"),
    [
        (OK, "ok", ""),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "status", "503"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "ok", ""),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body ends with the connection", "ok", ""),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part", "truncated", ""),
        (b"", "eof", ""),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "invalid", "status line b'SSH-2.0-OpenSSH_9.2'"),
    ],
)
def test_a_fresh_request_is_recorded_by_what_came_back(response: bytes, result: str, detail: str) -> None:
    def behaviour(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(response)

    with raw_server(behaviour) as (url, _):
        req = fresh(url).one()
    assert (req.result, req.detail, req.reused) == (result, detail, False)
    assert req.ok is (result == "ok")
    assert req.seconds >= 0 and req.end >= req.start


def test_a_reset_while_waiting_for_the_answer_is_a_reset() -> None:
    def behaviour(conn: socket.socket) -> None:
        _read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with raw_server(behaviour) as (url, _):
        req = fresh(url).one()
    assert req.result == "reset", req


def test_a_closed_port_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    req = fresh(f"http://127.0.0.1:{port}/").one()
    assert req.result == "refused"
    assert req.failure() == "refused"


def test_no_answer_within_the_timeout_is_a_timeout() -> None:
    done = threading.Event()

    def behaviour(conn: socket.socket) -> None:
        _read_request(conn)
        done.wait(5)

    with raw_server(behaviour) as (url, _):
        req = fresh(url, timeout=0.2).one()
        done.set()
    assert req.result == "timeout"


def test_a_kept_alive_connection_is_reused() -> None:
    with raw_server(answer(OK, OK, OK)) as (url, accepted):
        client = keep_alive(url)
        first, second, third = client.one(), client.one(), client.one()
        client.close()
    assert [r.result for r in (first, second, third)] == ["ok"] * 3
    assert [r.reused for r in (first, second, third)] == [False, True, True]
    assert len(accepted) == 1
    assert client.idle_lost == []


def test_an_idle_connection_the_server_closed_is_lost_not_a_failed_request() -> None:
    closed = threading.Event()
    with raw_server(answer(OK, then_close=closed)) as (url, accepted):
        client = keep_alive(url)
        first = client.one()
        assert closed.wait(5)
        second = client.one()
        client.close()
    assert (first.result, second.result) == ("ok", "ok")
    assert second.reused is False, "the request went out on a new connection"
    assert len(client.idle_lost) == 1
    assert len(accepted) == 2


def test_connection_close_in_the_answer_ends_the_kept_alive_connection() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    with raw_server(answer(closing)) as (url, accepted):
        client = keep_alive(url)
        first = client.one()
        assert client.sock is None
        second = client.one()
        client.close()
    assert (first.result, second.result, second.reused) == ("ok", "ok", False)
    assert client.idle_lost == [], "closed on the server's word, not found closed"
    assert len(accepted) == 2


def test_a_request_sent_on_a_connection_that_then_closes_is_a_failure() -> None:
    # the server takes the second request and closes without a word: the race a reuse check
    # cannot see, counted as a failed request (and the client reconnects for the next one)
    def behaviour(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(OK)
        _read_request(conn)

    with raw_server(behaviour) as (url, _):
        client = keep_alive(url)
        first, second = client.one(), client.one()
        client.close()
    assert (first.result, second.result, second.reused) == ("ok", "eof", True)
    assert second.failure() == "EOF before a response"


def test_dropped_sees_eof_and_unasked_bytes_but_not_an_idle_connection() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert clients.dropped(a) is False
        b.sendall(b"x")
        assert clients.dropped(a) is True
    c, d = socket.socketpair()
    with c:
        d.close()
        assert clients.dropped(c) is True


class _Products(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"products": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _until(condition: Callable[[], bool], load: clients.Load, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        load.check()
        assert time.monotonic() < deadline, "the clients made no progress"
        time.sleep(0.01)


def test_a_load_of_both_kinds_against_an_http_1_1_server() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Products)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/products"
        with clients.Load(url, fresh=2, keep_alive=2, pause=0.001) as load:
            # every client answered at least twice (so each keep-alive one reused its connection)
            _until(lambda: all(len(c.requests) >= 2 for c in load.clients), load)
    finally:
        server.shutdown()
        server.server_close()
    load.check()
    requests = load.requests()
    assert requests == sorted(requests, key=lambda r: r.start)
    assert {r.result for r in requests} == {"ok"}
    assert {r.client for r in requests} == {"fresh-1", "fresh-2", "keep-alive-1", "keep-alive-2"}
    assert not any(r.reused for r in requests if r.client.startswith("fresh"))
    assert all(
        r.reused
        for r in requests
        if r.client.startswith("keep-alive") and r is not _first(requests, r.client)
    )
    assert load.idle_lost() == []


def _first(requests: list[clients.Request], client: str) -> clients.Request:
    return next(r for r in requests if r.client == client)
