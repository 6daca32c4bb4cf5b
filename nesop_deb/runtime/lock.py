"""One operation at a time per app: an exclusive ``flock`` on ``/var/lib/<package>/lock``.

The holder writes its pid and command into the lock file, so the one refused can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nesop_deb.errors import RefusedError


@contextlib.contextmanager
def held(path: Path, what: str, wait: float = 10.0) -> Iterator[None]:
    """Hold the lock while the block runs; wait up to ``wait`` seconds, then refuse."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                    raise RefusedError(
                        f"{what}: another operation holds {path} ({holder})",
                        hint="wait for it to finish, then try again",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what} ({' '.join(sys.argv[:4])})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
