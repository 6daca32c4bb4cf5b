"""The update log: every step, timed and nested, to ``<root>/logs/update.log``, to stderr and to
the systemd journal (``journalctl -t nesop-update``).

stderr reaches apt's term.log; the file is the operator's; the journal is where a systemd host's
operator looks first (and the one record of a first install refused before the app's root exists).
All are escaped (:class:`~nesop_deb.text.PrintableFormatter`): a line quotes what the app's
account controls (its health answer, its journal, its file names).

On a first install the app's root does not exist when logging starts: the lines wait in memory
and go into the file, in order, as soon as the root is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nesop_deb.errors import NesopError
from nesop_deb.runtime import safefs
from nesop_deb.text import PrintableFormatter

log = logging.getLogger("nesop_deb.runtime")
_depth = 0
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Indent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "  " * _depth + str(record.msg)
        return True


class _LogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """The update log; a write that fails (a full disk) is said once on stderr, not per line."""

    failed = False

    def __init__(self, path: Path) -> None:
        # opened through root's own logs/ directory, never through a link (see safefs.records)
        logs = safefs.records(path.parent.parent, path.parent.name, create=True, mode=0o755)
        assert logs is not None
        with logs:
            fd = logs.open_append(path.name, 0o640)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))
        self.path = path

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            sys.stderr.write(f"warning: cannot write to {self.path}: {exc}\n")

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


class _Pending(logging.Handler):
    """The update log of an app whose root does not exist yet: records wait here until it does
    (checked at each line: one stat), then go to a :class:`_LogFile` in order."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.waiting: list[logging.LogRecord] = []
        self.file: _LogFile | None = None
        self.given_up = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.given_up:
            return
        if self.file is None:
            self.waiting.append(record)
            if not self.path.parent.parent.is_dir():
                return
            try:
                self.file = _LogFile(self.path)
            except (OSError, NesopError) as exc:
                sys.stderr.write(f"warning: cannot write to {self.path}: {exc}\n")
                self.given_up = True
                self.waiting.clear()
                return
            self.file.setFormatter(self.formatter)
            waiting, self.waiting = self.waiting, []
            for r in waiting:
                self.file.handle(r)
            return
        self.file.handle(record)

    def close(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        finally:
            super().close()


JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "nesop-update"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_JOURNAL_CAP = 32 << 10  # bytes of a message: a datagram must fit the socket's buffer


def _field(name: str, value: str) -> bytes:
    """One field of journald's native protocol (a value with a newline is length-prefixed)."""
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def _stderr_is_journal() -> bool:
    """systemd names the stream it connects a unit's stderr to in ``$JOURNAL_STREAM``
    (``device:inode``); it is ours only if fd 2 is still that stream."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(2)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class _Journal(logging.Handler):
    """Each line to the systemd journal with ``SYSLOG_IDENTIFIER=nesop-update``; silent where
    there is no journal (a chroot, a container without systemd) or it cannot keep up."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    @classmethod
    def connect(cls) -> _Journal | None:
        if os.environ.get("DPKG_ROOT", "/") not in ("", "/"):
            return None  # dpkg works on another root: this host's journal is not that system's
        if _stderr_is_journal():
            return None  # run by a unit whose stderr is the journal already: each line once
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            return None
        try:
            sock.connect(JOURNAL_SOCKET)
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)[:_JOURNAL_CAP]
        payload = (
            _field("MESSAGE", message)
            + _field("PRIORITY", str(_PRIORITY.get(record.levelno, 6)))
            + _field("SYSLOG_IDENTIFIER", IDENTIFIER)
        )
        with contextlib.suppress(OSError):  # a journal that cannot keep up loses the line, never holds root
            self.sock.send(payload, socket.MSG_DONTWAIT)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            super().close()


def setup(log_file: Path | None, *, verbose: bool = False) -> None:
    """Send the runtime's log to stderr, the journal and (when given) to the update log file,
    ``<app root>/logs/update.log`` (kept in memory until the app's root exists)."""
    root = logging.getLogger("nesop_deb")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(PrintableFormatter("%(message)s"))
    root.addHandler(stderr)
    journal = _Journal.connect()
    if journal is not None:
        journal.setFormatter(PrintableFormatter("%(message)s"))
        root.addHandler(journal)
    if log_file is not None:
        to_file: logging.Handler = (
            _LogFile(log_file) if log_file.parent.parent.is_dir() else _Pending(log_file)
        )
        to_file.setFormatter(PrintableFormatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
        root.addHandler(to_file)
    if not any(isinstance(f, _Indent) for f in log.filters):
        log.addFilter(_Indent())
    root.propagate = False


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log ``name`` as a block; its end line says how long it took and whether it failed."""
    global _depth
    log.info("-> %s", name)
    start = time.monotonic()
    _depth += 1
    try:
        yield
    except BaseException as exc:
        _depth -= 1
        log.error("<- %s failed after %.3f s: %s", name, time.monotonic() - start, exc)
        raise
    _depth -= 1
    log.info("<- %s (%.3f s)", name, time.monotonic() - start)
