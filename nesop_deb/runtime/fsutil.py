"""Durable, atomic file writes by path, for root's own directories only.

The state directory, ``/etc/systemd/system`` and the apt configuration are root's, with root's
parents: a path there is safe to use. Everything in the app's tree (which its account may write
to) goes through :mod:`nesop_deb.runtime.safefs` instead.

Files are replaced one way everywhere: write ``X.nesop-tmp``, fsync, set owner and mode, rename
over ``X``, fsync the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from nesop_deb.runtime.safefs import TMP_SUFFIX  # one name for a file not yet in place


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    target: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1, *, durable: bool = True
) -> None:
    tmp = target.with_name(target.name + TMP_SUFFIX)
    stage(tmp, data, mode, uid, gid, durable=durable)
    os.replace(tmp, target)
    if durable:
        fsync_dir(target.parent)


def stage(tmp: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1, *, durable: bool = True) -> None:
    """Write a temporary file with its final owner and mode, ready to be renamed into place."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write that failed (a full disk) leaves nothing behind
        raise
    finally:
        os.close(fd)


def write_json_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), mode)


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / f).lstat().st_size
    return total
