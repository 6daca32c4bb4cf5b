"""A tight /health poller on the host: who sees the app down, and for how long.

A thread GETs the health URL every ``interval`` seconds (a new connection each time, a short
timeout) and records when each probe started and whether it got a 2xx. An outage is a run of
consecutive failed probes: from the start of its first failure to the start of the first success
after it, so its resolution is one probe (a few milliseconds).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic() when the probe started
    ok: bool


@dataclass(frozen=True)
class Outage:
    start: float
    end: float
    failed_probes: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def longest_outage(samples: Sequence[Sample]) -> Outage | None:
    """The longest run of failures that a success ended (None: the app never went down)."""
    best: Outage | None = None
    first: Sample | None = None
    count = 0
    for s in samples:
        if not s.ok:
            if first is None:
                first, count = s, 0
            count += 1
        elif first is not None:
            if best is None or s.t - first.t > best.seconds:
                best = Outage(first.t, s.t, count)
            first = None
    return best


CLONE_NEWNET = 0x40000000
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if int(libc.setns(fd, CLONE_NEWNET)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class HealthPoller:
    """Poll ``url`` from a background thread until :meth:`close`.

    With ``netns`` (e.g. ``/proc/<pid>/ns/net`` of a container with a private network) the
    polling thread enters that network namespace first; the rest of the process stays where it
    is. The probes still start from this host process, with no subprocess in between.
    """

    def __init__(
        self, url: str, interval: float = 0.002, timeout: float = 0.25, netns: str | None = None
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._request = f"GET {self.path} HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode()
        self.interval = interval
        self.timeout = timeout
        self.netns = netns
        self._error: BaseException | None = None
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-poller", daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def start(self) -> HealthPoller:
        return self.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def probe(self) -> bool:
        """One GET on a new connection; True for a 2xx. Plain HTTP/1.0 on a socket: the client's
        own overhead stays far below the interval (the response is read to its end, so the
        server never writes to a closed connection)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                # close with a reset once the answer is in: no TIME_WAIT on either side. Hundreds
                # of probes a second would otherwise fill the ephemeral ports with TIME_WAIT
                # entries within a minute, and every connect() would slow down searching for one.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.sendall(self._request)
                response = b""
                while chunk := sock.recv(4096):
                    response += chunk
        except OSError:
            return False
        return response.startswith(b"HTTP/1.") and response[9:10] == b"2"

    def _run(self) -> None:
        if self.netns is not None:
            try:
                enter_netns(self.netns)
            except OSError as exc:
                self._error = exc
                return
        while not self._stop.is_set():
            started = time.monotonic()
            ok = self.probe()
            with self._lock:
                self._samples.append(Sample(started, ok))
            pause = started + self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self._samples if start <= s.t <= end]

    def forget_before(self, t: float) -> None:
        with self._lock:
            self._samples = [s for s in self._samples if s.t >= t]

    def wait_up(self, since: float, timeout: float = 30.0) -> float:
        """Wait until a probe started after ``since`` succeeded; return its start time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"the health poller stopped: {self._error}")
            with self._lock:
                for s in reversed(self._samples):
                    if s.t < since:
                        break
                    if s.ok:
                        return s.t
            time.sleep(self.interval)
        raise TimeoutError(f"http://{self.host}:{self.port}{self.path} did not answer 2xx in {timeout:g} s")
