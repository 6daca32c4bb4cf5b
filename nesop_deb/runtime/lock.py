"""One operation at a time per app: an exclusive ``flock`` on ``/var/lib/<package>/lock``.

The holder writes its pid and command into the lock file, so the one refused can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nesop_deb.errors import RefusedError


def open_file(path: Path, what: str) -> int:
    """Open (create) the lock file ``path``, root's, never through a link: root truncates and
    writes it. ``what`` names the file in the refusal."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise RefusedError(
            f"cannot open {what} {path} ({exc.strerror}); it must be a file of root's",
            hint=f"remove it if it is not one: rm {path}",
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RefusedError(f"{what} {path} is not a regular file", hint=f"remove it: rm {path}")
    return fd


def acquire(fd: int, wait: float, refused: Callable[[str], RefusedError], step: float = 0.1) -> None:
    """Take the exclusive lock on ``fd`` within ``wait`` seconds; else raise ``refused(holder)``
    (the line the holder wrote, or "another process")."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                raise refused(holder) from None
            time.sleep(step)


@contextlib.contextmanager
def held(path: Path, what: str, wait: float = 10.0) -> Iterator[None]:
    """Hold the lock while the block runs; wait up to ``wait`` seconds, then refuse."""
    try:
        fd = open_file(path, "the lock")
    except RefusedError as exc:
        raise RefusedError(f"{what}: {exc.message}", hint=exc.hint) from None
    try:
        acquire(
            fd,
            wait,
            lambda holder: RefusedError(
                f"{what}: another operation holds {path} ({holder})",
                hint="wait for it to finish, then try again",
            ),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what} ({' '.join(sys.argv[:4])})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
