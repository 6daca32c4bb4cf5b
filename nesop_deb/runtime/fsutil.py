"""File operations the transaction relies on: durable, atomic, and confined to a root.

Files are replaced one way everywhere: write ``X.nesop-tmp``, fsync, set owner and mode, rename
over ``X``, fsync the directory. Writing through a symlink that leads out of the app is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from nesop_deb.errors import RefusedError

TMP_SUFFIX = ".nesop-tmp"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def live_digest(path: Path) -> str | None:
    """sha256 of a regular file, of a symlink's target text, or None if nothing is there."""
    if path.is_symlink():
        return hashlib.sha256(os.readlink(path).encode("utf-8", "surrogateescape")).hexdigest()
    if not path.exists():
        return None
    if not path.is_file():
        return "not-a-regular-file"
    return sha256_file(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def confined(root: Path, rel: str) -> Path:
    """``root/rel``, refusing when any existing parent below root is a symlink or not a directory."""
    target = root / rel
    current = root
    for part in Path(rel).parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise RefusedError(
                f"{target}: the path goes through {current}, which is a symlink or not a directory",
                hint="an update only writes real files below the app root; fix the live tree first",
            )
    return target


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


def stage_symlink(tmp: Path, target_text: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.symlink_to(target_text)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        fsync_dir(path.parent)


def copy_preserving(src: Path, dst: Path) -> None:
    """Copy a file or symlink with mode, owner and times (a backup's copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        dst.symlink_to(os.readlink(src))
        return
    shutil.copy2(src, dst, follow_symlinks=False)
    st = src.stat()
    os.chown(dst, st.st_uid, st.st_gid)


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
