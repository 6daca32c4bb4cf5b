"""A directory held by file descriptor, and every operation below it without following a link."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from nesop_deb.errors import RefusedError
from nesop_deb.paths import UnsafePath, safe_relative

TMP_SUFFIX = ".nesop-tmp"


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.renameat2.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
    except (OSError, AttributeError):  # not glibc: os.sync() instead
        return None
    return libc


_libc = _load_libc()

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted where a file was expected must not hang root's open
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CHUNK = 1 << 20
_RENAME_EXCHANGE = 2  # linux/fs.h


class LinkRefused(RefusedError):
    """A path goes through a symlink, or something other than what was expected, that the
    runtime did not make."""

    def __init__(self, path: Path, what: str = "a symlink") -> None:
        super().__init__(
            f"{path} is {what}: the update runs as root and follows no link it did not make",
            hint=f"remove {path} (the app's account must not place links there) and run it again",
        )
        self.path = path


def _rel(rel: str) -> list[str]:
    try:
        return safe_relative(rel).split("/")
    except UnsafePath as exc:
        raise RefusedError(f"{exc}: the runtime only works below the app root") from None


def _refuse_link(path: Path, exc: OSError, dfd: int | None = None) -> None:
    """Turn what ``O_NOFOLLOW`` and ``O_DIRECTORY`` say about a planted link into one line
    (``O_DIRECTORY`` reports a link as ENOTDIR: ``dfd``, the entry's directory, tells which)."""
    if exc.errno == errno.ELOOP:
        raise LinkRefused(path) from None
    if exc.errno == errno.ENOTDIR:
        link = False
        with contextlib.suppress(OSError):
            st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False) if dfd is not None else path.lstat()
            link = stat.S_ISLNK(st.st_mode)
        raise LinkRefused(path, "a symlink" if link else "not a directory") from None


class Tree:
    """A directory opened once; paths given to its methods are relative to it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = False, mode: int = 0o755) -> Tree:
        """Open ``path``, which must be a real directory (its parents are root's: ``/opt``).

        ``create`` makes it (and missing parents) owned by root with ``mode``."""
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, mode)
        try:
            return cls(os.open(path, _DIR), path)
        except OSError as exc:
            _refuse_link(path, exc)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- walking ------------------------------------------------------------------------------

    def _open_dirs(
        self, parts: list[str], *, create: bool, mode: int, uid: int, gid: int, made: list[str] | None = None
    ) -> int:
        """A new fd for the directory ``parts`` below this one, made where ``create`` says (the
        ones made are appended to ``made``, relative, parents first)."""
        fd = os.dup(self.fd)
        path = self.path
        try:
            for i, part in enumerate(parts):
                path = path / part
                if create and self._mkdir_at(fd, part, path, mode, uid, gid) and made is not None:
                    made.append("/".join(parts[: i + 1]))
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    _refuse_link(path, exc, fd)
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _mkdir_at(dfd: int, name: str, path: Path, mode: int, uid: int, gid: int) -> bool:
        """Make one directory; owner and mode are set through its own fd. False if it existed.

        Between the mkdir and the open the app's account may swap another directory in under
        the name: only one that is, like ours, root's, 0700 and empty gets the owner and mode."""
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            return False
        try:
            fd = os.open(name, _DIR | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            _refuse_link(path, exc, dfd)
            raise
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700 or os.listdir(fd):
                raise LinkRefused(path, "replaced while it was being made")
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return True

    @contextlib.contextmanager
    def _parent(
        self, rel: str, *, create: bool = False, mode: int = 0o755, uid: int = -1, gid: int = -1
    ) -> Iterator[tuple[int, str, Path]]:
        parts = _rel(rel)
        fd = self._open_dirs(parts[:-1], create=create, mode=mode, uid=uid, gid=gid)
        try:
            yield fd, parts[-1], self.path.joinpath(*parts)
        finally:
            os.close(fd)

    def subdir(
        self, rel: str, *, create: bool = False, mode: int = 0o755, uid: int = -1, gid: int = -1
    ) -> Tree:
        """The directory ``rel`` below this one, opened without following a link on the way."""
        parts = _rel(rel)
        return Tree(
            self._open_dirs(parts, create=create, mode=mode, uid=uid, gid=gid), self.path.joinpath(*parts)
        )

    def mkdirs(self, rel: str, *, mode: int = 0o755, uid: int = -1, gid: int = -1) -> list[str]:
        """Make ``rel`` and its missing parents; return the ones made (relative, parents first)."""
        made: list[str] = []
        os.close(self._open_dirs(_rel(rel), create=True, mode=mode, uid=uid, gid=gid, made=made))
        return made

    # -- reading ------------------------------------------------------------------------------

    def lstat(self, rel: str = "") -> os.stat_result | None:
        """The entry itself (a link is not followed); None when it, or a parent, is missing."""
        if not rel:
            return os.fstat(self.fd)
        try:
            with self._parent(rel) as (dfd, name, _path):
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def is_dir(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_link(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def listdir(self, rel: str = "") -> list[str]:
        if not rel:
            return sorted(os.listdir(self.fd))
        with self.subdir(rel) as sub:
            return sorted(os.listdir(sub.fd))

    def readlink(self, rel: str) -> str:
        with self._parent(rel) as (dfd, name, _path):
            return os.readlink(name, dir_fd=dfd)

    @contextlib.contextmanager
    def open_file(self, rel: str) -> Iterator[BinaryIO]:
        """A regular file, for reading; a link or anything else there is refused."""
        with self._parent(rel) as (dfd, name, path):
            try:
                fd = os.open(name, _READ, dir_fd=dfd)
            except OSError as exc:
                _refuse_link(path, exc)
                raise
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise LinkRefused(path, "not a regular file")
                os.set_blocking(fd, True)
                yield fh

    def read_bytes(self, rel: str) -> bytes:
        with self.open_file(rel) as fh:
            return fh.read()

    def digest(self, rel: str) -> str | None:
        """sha256 of a regular file, of a symlink's target text, or None if nothing is there."""
        st = self.lstat(rel)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            return hashlib.sha256(self.readlink(rel).encode("utf-8", "surrogateescape")).hexdigest()
        if not stat.S_ISREG(st.st_mode):
            return "not-a-regular-file"
        h = hashlib.sha256()
        with self.open_file(rel) as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    # -- writing ------------------------------------------------------------------------------

    def write_new(
        self,
        rel: str,
        data: bytes | BinaryIO,
        mode: int,
        uid: int = -1,
        gid: int = -1,
        *,
        durable: bool = True,
    ) -> None:
        """Create ``rel`` afresh (``O_EXCL``: whatever was there, a planted link included, is
        removed first, never followed) with ``data``, then its owner and mode, on its own fd."""
        with self._parent(rel) as (dfd, name, path):
            _unlink_entry(dfd, name, path)
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
            )
            try:
                with os.fdopen(fd, "wb", closefd=False) as fh:
                    if isinstance(data, bytes):
                        fh.write(data)
                    else:
                        shutil.copyfileobj(data, fh, _CHUNK)
                    fh.flush()
                    if durable:
                        os.fsync(fd)
                if uid != -1 or gid != -1:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            except BaseException:
                with contextlib.suppress(OSError):  # a full disk leaves nothing behind
                    os.unlink(name, dir_fd=dfd)
                raise
            finally:
                os.close(fd)

    def copy_from(
        self,
        src: Tree,
        src_rel: str,
        rel: str,
        mode: int,
        uid: int = -1,
        gid: int = -1,
        *,
        durable: bool = True,
    ) -> os.stat_result:
        """Copy ``src/src_rel`` (a regular file, opened without following a link) to ``rel``;
        return the status of the file actually copied, taken from its descriptor: a name the
        app's account swaps between a look and the copy cannot lend the copy another's owner."""
        with src.open_file(src_rel) as fh:
            st = os.fstat(fh.fileno())
            self.write_new(rel, fh, mode, uid, gid, durable=durable)
        return st

    def symlink_new(self, rel: str, target: str) -> None:
        """Make a symlink the runtime means to make (a shipped one), replacing what was there.
        It stays root's: a link's owner grants nothing, and changing it by name afterwards could
        land on whatever the app's account swapped in under that name."""
        with self._parent(rel) as (dfd, name, path):
            _unlink_entry(dfd, name, path)
            os.symlink(target, name, dir_fd=dfd)

    def replace(self, src_rel: str, dst_rel: str, *, durable: bool = True) -> None:
        """Rename an entry over another (atomic; neither is followed if it is a link)."""
        with self._parent(src_rel) as (sfd, sname, _s), self._parent(dst_rel) as (dfd, dname, _d):
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            if durable:
                os.fsync(dfd)

    def exchange(self, a_rel: str, b_rel: str) -> None:
        """Swap two entries in one step (``renameat2(RENAME_EXCHANGE)``): a link and a directory
        trade places with no moment where either name is missing. Neither is followed."""
        if _libc is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available")
        with self._parent(a_rel) as (afd, aname, _a), self._parent(b_rel) as (bfd, bname, _b):
            if _libc.renameat2(afd, os.fsencode(aname), bfd, os.fsencode(bname), _RENAME_EXCHANGE) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.path / b_rel))
            os.fsync(afd)
            if bfd != afd:
                os.fsync(bfd)

    def unlink(self, rel: str, *, durable: bool = True) -> bool:
        """Remove a file or link (never what it points at); False if nothing was there."""
        try:
            with self._parent(rel) as (dfd, name, path):
                if not _unlink_entry(dfd, name, path):
                    return False
                if durable:
                    os.fsync(dfd)
                return True
        except FileNotFoundError:
            return False

    def rmdir(self, rel: str) -> bool:
        """Remove an empty directory; False if it is not there, not empty, or not a directory."""
        try:
            with self._parent(rel) as (dfd, name, _path):
                os.rmdir(name, dir_fd=dfd)
                return True
        except OSError:
            return False

    def rmtree(self, rel: str) -> None:
        """Remove a directory and everything in it, following no link and opening nothing that is
        not a directory (a FIFO swapped in cannot make root wait)."""
        with self._parent(rel) as (dfd, name, path):
            st = _lstat_at(dfd, name)
            if st is None:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise LinkRefused(path, "not a directory")
            _rmtree_at(dfd, name)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def syncfs(self) -> None:
        """Flush everything written to this directory's file system: one call for many files
        (a backup of a thousand files), where fsyncing each would cost a thousand."""
        if _libc is None or _libc.syncfs(self.fd) != 0:
            os.sync()

    def open_append(self, rel: str, mode: int = 0o640) -> int:
        """An fd appending to ``rel`` (made with ``mode`` if missing); a link is refused."""
        with self._parent(rel) as (dfd, name, path):
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    mode,
                    dir_fd=dfd,
                )
            except OSError as exc:
                _refuse_link(path, exc)
                raise
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise LinkRefused(path, "not a regular file")
            return fd

    def reserve(self, rel: str, size: int) -> None:
        """Hold ``size`` bytes in a new root-only file ``rel`` (space an undo will need)."""
        with self._parent(rel) as (dfd, name, path):
            _unlink_entry(dfd, name, path)
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
            )
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dfd)
                raise
            os.close(fd)

    def free_bytes(self) -> int:
        st = os.fstatvfs(self.fd)
        return st.f_bavail * st.f_frsize


def parent_of(rel: str) -> str:
    """The directory of an app-relative path; "" for the root itself."""
    return os.path.dirname(rel)


def _rmtree_at(dfd: int, name: str) -> None:
    try:
        fd = os.open(name, _DIR | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=dfd)  # swapped for a file or a link since: it goes as it is
        return
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _rmtree_at(fd, entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink_entry(dfd: int, name: str, path: Path) -> bool:
    """Remove a file or link in ``dfd`` (unlinkat never follows); a directory is refused."""
    st = _lstat_at(dfd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise LinkRefused(path, "a directory")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)
    return True


def is_private(st: os.stat_result) -> bool:
    """Owned by the runtime's own user (root) and writable by no one else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def records(app_root: Path, name: str, *, create: bool, mode: int = 0o700) -> Tree | None:
    """``<app_root>/<name>``, where root keeps records (backups, logs), opened only if root's.

    Made root-owned with ``mode`` when missing and ``create``; None when missing otherwise. One
    the app's account could write to, or a link, is refused: its content cannot be trusted, and
    root writing there would write where the app's account chose.
    """
    if not app_root.is_dir() and not create:
        return None
    with Tree.open(app_root, create=create) as root:
        if not create and root.lstat(name) is None:
            return None
        if create:
            Tree._mkdir_at(root.fd, name, root.path / name, mode, -1, -1)
        tree = root.subdir(name)
    st = os.fstat(tree.fd)
    if is_private(st) and stat.S_IMODE(st.st_mode) & ~mode:
        os.fchmod(tree.fd, stat.S_IMODE(st.st_mode) & mode)  # backups hold the database: root's eyes only
    elif not is_private(st):
        tree.close()
        raise RefusedError(
            f"{tree.path} belongs to uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}: root keeps"
            " its backups and logs only where no other account can write",
            hint=f"chown -R root:root {tree.path} && chmod go-w {tree.path} (after checking its content)",
        )
    return tree


def root_owned(top: Path, rel: str, *, mode: int = 0o755) -> Tree:
    """``top/rel``, every directory from ``top`` down root's and writable by no one else, made
    (root's, ``mode``) where missing. ``top`` is trusted (``/``, or ``$DPKG_ROOT``).

    Where root builds by path (a virtualenv: pip and python write and run files by name), no
    other account may own or write any directory on the way: one that could rename an entry
    could swap in its own files between root's writes, and root would run them."""
    fd = os.open(top, _DIR)
    path = top
    try:
        for part in _rel(rel):
            path = path / part
            Tree._mkdir_at(fd, part, path, mode, -1, -1)
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                _refuse_link(path, exc, fd)
                raise
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if not is_private(st):
                raise RefusedError(
                    f"{path} belongs to uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}: root builds"
                    " there only where no other account can write",
                    hint=f"chown root:root {path} && chmod go-w {path} (after checking its content)",
                )
    except BaseException:
        os.close(fd)
        raise
    return Tree(fd, path)
