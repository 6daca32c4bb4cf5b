"""Work done as the app's account, in a forked child that talks to root over two pipes.

SQLite opens the database and the files beside it by path, in a directory that account can
write to; done as that account, it reaches only what the account already could. The child is
the account's process, so the account can stop it, or make it wait on a FIFO swapped in for the
database: root therefore never waits on it without a deadline, and notices a stopped child at
once. Messages are length-prefixed frames.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

from nesop_deb.errors import NesopError

TIMEOUT = 1800.0  # seconds root waits for one answer (a migration of a large database included)
_HEADER = struct.Struct(">Q")
_TICK = 0.2
STOP_GRACE = 2.0  # seconds a child may stay stopped (a whole process group paused and resumed)


_UNREAPED: list[int] = []  # children told to end, not waited for (see Child.close)


def _reap(*, block: bool = False) -> None:
    for pid in list(_UNREAPED):
        try:
            done, _status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _UNREAPED.remove(pid)


atexit.register(lambda: _reap(block=True))


class OwnerError(NesopError):
    """The child working as the app's account failed, was stopped, or took too long."""


def drop_to(owner: tuple[int, int], keep: tuple[int, ...]) -> None:
    """In a forked child: close every descriptor root opened (a fork inherits them all: the
    backup directory, the lock, the log) but stdio and ``keep``, then become ``owner``. Changing
    the uid also makes the process undumpable, so that account cannot ptrace it either."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    top = os.sysconf("SC_OPEN_MAX")
    os.closerange(low, top if top > 0 else 65536)
    os.setgroups([])
    os.setgid(owner[1])
    os.setuid(owner[0])


class Channel:
    """One side's ends of the two pipes."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd

    def send(self, data: bytes) -> None:
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def recv(self) -> bytes | None:
        """The next frame, waiting as long as it takes (the child's side); None at the end."""
        head = self._read(_HEADER.size, None)
        return None if head is None else self._read(_HEADER.unpack(head)[0], None) or b""

    def _read(self, size: int, wait: Callable[[], None] | None) -> bytes | None:
        parts: list[bytes] = []
        missing = size
        while missing:
            if wait is not None:
                wait()
            chunk = os.read(self.rfd, min(missing, 1 << 20))
            if not chunk:
                return None
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Child:
    """Root's side: a child working as ``owner``, answering within ``timeout`` per frame."""

    def __init__(self, owner: tuple[int, int], work: Callable[[Channel], None], what: str,
                 timeout: float | None = None) -> None:  # fmt: skip
        self.what, self.timeout = what, TIMEOUT if timeout is None else timeout
        _reap()
        up_r, up_w = os.pipe()  # child -> root
        down_r, down_w = os.pipe()  # root -> child
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 0
            try:
                os.close(up_r)
                os.close(down_w)
                drop_to(owner, (up_w, down_r))
                work(Channel(down_r, up_w))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(up_w)
        os.close(down_r)
        self.channel = Channel(up_r, down_w)

    def send(self, data: bytes) -> None:
        try:
            self.channel.send(data)
        except OSError as exc:  # the child is gone
            raise OwnerError(
                f"{self.what}: the process working as the app's account is gone ({exc})"
            ) from None

    def recv(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        frame = self.channel._read(_HEADER.size, lambda: self._wait(deadline))
        if frame is not None:
            frame = self.channel._read(_HEADER.unpack(frame)[0], lambda: self._wait(deadline))
        if frame is None:
            raise OwnerError(f"{self.what}: the process working as the app's account ended without an answer")
        return frame

    def _wait(self, deadline: float) -> None:
        """Until the pipe has data; a child that stays stopped, or the deadline, ends the wait
        (and the child)."""
        stopped_since: float | None = None
        while not select.select([self.channel.rfd], [], [], _TICK)[0]:
            now = time.monotonic()
            stopped_since = (stopped_since or now) if _stopped(self.pid) else None
            if stopped_since is not None and now - stopped_since > STOP_GRACE:
                self.kill()
                raise OwnerError(
                    f"{self.what}: the process working as the app's account was stopped by a signal"
                    " (only that account or root can do that)"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise OwnerError(
                    f"{self.what}: no answer within {self.timeout:.0f} s; the process was killed"
                )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def close(self, *, wait: bool = True) -> None:
        """End the child: closing its pipe ends it. ``wait``: until it has (one that does not end
        is killed); else it is reaped later, as a child holding a large copy takes tens of
        milliseconds to free it, which an outage should not wait for."""
        self.channel.close()
        if not wait:
            _UNREAPED.append(self.pid)
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                done, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            if time.monotonic() > deadline:
                self.kill()
                deadline = float("inf")
            time.sleep(0.001)


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "T": stopped by a signal, which the account can send; "t" (traced) is a debugger's, and the
    # account cannot trace this child (changing its uid made it undumpable)
    return stat.rsplit(")", 1)[-1].split()[0] == "T"
