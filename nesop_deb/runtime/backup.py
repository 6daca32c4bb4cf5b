"""Backups under ``<root>/backups/<name>/`` (root:root 0700), contract DESIGN.md §4.

A backup holds exactly what an operation touches: those files with owner and mode, the list of
touched paths that did not exist, and a snapshot of the database; ``backup_manifest.json`` lists
them with their sha256. Restoring one puts every file back and removes the ones that were absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError, UsageError
from nesop_deb.runtime import database
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import confined, copy_preserving, fsync_dir, live_digest, write_json_atomic
from nesop_deb.runtime.log import log

MANIFEST = "backup_manifest.json"
DB_FILE = "database.sqlite3"
DB_EARLY = DB_FILE + ".before-stop"  # a copy taken while the app ran, not yet known to be exact


class BackupError(NesopError):
    """A backup could not be written or read."""


@dataclass(frozen=True)
class BackupInfo:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def created(self) -> str:
        return str(self.data.get("created", ""))

    @property
    def version(self) -> str | None:
        v = self.data.get("version")
        return str(v) if v is not None else None


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def new_name(kind: str, version: str | None) -> str:
    return f"{kind}_{version}_{stamp()}" if version else f"{kind}_{stamp()}"


def unused_name(ctx: Context, kind: str, version: str | None) -> str:
    """:func:`new_name`, made unique: a retry within the same second must not collide."""
    base = name = new_name(kind, version)
    n = 1
    while (ctx.backups_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def create_files(ctx: Context, name: str, paths: Iterable[str], meta: dict[str, Any]) -> Path:
    """Back up ``paths`` (app-relative). Returns the backup directory; the DB is added separately."""
    ctx.backups_dir.mkdir(parents=True, exist_ok=True)
    ctx.backups_dir.chmod(0o700)
    target = ctx.backups_dir / name
    if target.exists():
        raise BackupError(f"backup {target} already exists")
    tmp = ctx.backups_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(ctx, tmp, name, paths, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written backup only takes space
        raise
    tmp.rename(target)
    target.chmod(0o700)
    fsync_dir(ctx.backups_dir)
    return target


def _write(ctx: Context, tmp: Path, name: str, paths: Iterable[str], meta: dict[str, Any]) -> None:
    (tmp / "files").mkdir(parents=True)
    files: list[dict[str, Any]] = []
    absent: list[str] = []
    for rel in sorted(set(paths)):
        live = confined(ctx.app_root, rel)
        if not live.exists() and not live.is_symlink():
            absent.append(rel)
            continue
        st = live.lstat()
        copy_preserving(live, tmp / "files" / rel)
        files.append(
            {
                "path": rel,
                "sha256": live_digest(live),
                "mode": st.st_mode & 0o7777,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "link_target": os.readlink(live) if live.is_symlink() else None,
            }
        )
    data = {"name": name, "created": stamp(), "files": files, "absent": absent, "database": None, **meta}
    write_json_atomic(tmp / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")


def undo_space(ctx: Context, paths: Iterable[str], *, with_db: bool) -> int:
    """Bytes an undo writes on the app's file system: a copy of each touched file that exists,
    and with migrations the database twice (the replaced one is kept beside the snapshot)."""
    need = 1 << 20
    for rel in set(paths):
        with contextlib.suppress(OSError):
            need += (ctx.app_root / rel).lstat().st_size
    db = ctx.database_path
    if with_db and db is not None:
        for part in (db, db.with_name(db.name + "-wal")):  # a snapshot holds what the WAL holds
            with contextlib.suppress(OSError):
                need += 2 * part.stat().st_size
    return need


def reserve(ctx: Context, path: Path, size: int) -> None:
    """Hold ``size`` bytes in ``path`` (root only), so the undo finds them free on a full disk."""
    ctx.backups_dir.mkdir(parents=True, exist_ok=True)
    ctx.backups_dir.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise BackupError(
            f"{ctx.app_root}: cannot set aside {size >> 20} MiB for a possible undo ({exc.strerror})"
        ) from None
    os.close(fd)


def add_database(ctx: Context, backup_dir: Path) -> str | None:
    """Snapshot the app's database into an existing backup and record it; its sha256, if any."""
    db = ctx.database_path
    if db is None or not db.exists():
        return None
    digest = database.snapshot(db, backup_dir / DB_FILE)
    _record_database(ctx, backup_dir, digest)
    return digest


def copy_database_early(ctx: Context, backup_dir: Path) -> database.HeldSnapshot | None:
    """Copy the database into the backup while the app still runs, keeping the way to check it.

    The copy goes under a name no restore reads (:data:`DB_EARLY`) and is not recorded: it becomes
    the backup's snapshot only through :func:`keep_early_database`, once the app is stopped and
    nothing was committed since.
    """
    db = ctx.database_path
    if db is None or not db.exists():
        return None
    return database.snapshot_held(db, backup_dir / DB_EARLY)


def keep_early_database(ctx: Context, backup_dir: Path, early: database.HeldSnapshot) -> None:
    """Make an early copy the backup's snapshot (the database is known unchanged since)."""
    early.path.replace(backup_dir / DB_FILE)
    fsync_dir(backup_dir)
    _record_database(ctx, backup_dir, early.sha256)


def drop_early_database(backup_dir: Path) -> None:
    """Remove an early copy that did not become the snapshot (idempotent). It records nothing, so
    a copy that cannot go now (a read-only or broken backups dir) only costs space until retention
    prunes its backup."""
    try:
        (backup_dir / DB_EARLY).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", backup_dir / DB_EARLY, exc)


def _record_database(ctx: Context, backup_dir: Path, digest: str) -> None:
    db = ctx.database_path
    assert db is not None
    data = read_manifest(backup_dir)
    data["database"] = {"file": DB_FILE, "sha256": digest, "source": str(db.relative_to(ctx.root))}
    write_json_atomic(backup_dir / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_manifest(backup_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((backup_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup_dir}: not a readable backup ({exc})") from None
    if not isinstance(data, dict):
        raise BackupError(f"{backup_dir}: not a readable backup")
    return data


def restore_files(ctx: Context, backup_dir: Path) -> None:
    """Put every backed-up file back as it was and remove those that did not exist (idempotent)."""
    data = read_manifest(backup_dir)
    for f in data["files"]:
        rel = f["path"]
        live = confined(ctx.app_root, rel)
        if live_digest(live) == f["sha256"] and not live.is_symlink() and f["link_target"] is None:
            st = live.lstat()
            if (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (f["mode"], f["uid"], f["gid"]):
                continue
        live.parent.mkdir(parents=True, exist_ok=True)
        tmp = live.with_name(live.name + ".nesop-tmp")
        copy_preserving(backup_dir / "files" / rel, tmp)
        if f["link_target"] is None:
            os.chown(tmp, f["uid"], f["gid"])
            tmp.chmod(f["mode"])
        if live.is_dir() and not live.is_symlink():
            shutil.rmtree(live)
        tmp.replace(live)
        fsync_dir(live.parent)
    # A backup taken before an update names the directories the update made; only those go, so an
    # empty directory the app had before (an uploads dir) survives. Older backups: prune upwards.
    created = data.get("created_dirs")
    for rel in data["absent"]:
        live = confined(ctx.app_root, rel)
        if live.is_symlink() or live.is_file():
            live.unlink()
            fsync_dir(live.parent)
            if created is None:
                _prune_empty_dirs(ctx.app_root, live.parent)
    for rel in sorted(created or [], key=lambda r: str(r).count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (ctx.app_root / str(rel)).rmdir()


def _prune_empty_dirs(root: Path, directory: Path) -> None:
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def restore_database(ctx: Context, backup_dir: Path, keep_current: bool) -> Path | None:
    """Put the backup's database snapshot back; the current database is kept beside the backup."""
    data = read_manifest(backup_dir)
    db = ctx.database_path
    if data.get("database") is None or db is None:
        return None
    kept = backup_dir / f"replaced_{stamp()}.sqlite3" if keep_current else None
    database.restore(backup_dir / DB_FILE, db, kept)
    return kept


def list_backups(ctx: Context) -> list[BackupInfo]:
    if not ctx.backups_dir.is_dir():
        return []
    found = []
    for d in sorted(ctx.backups_dir.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).exists():
            try:
                found.append(BackupInfo(d.name, d, read_manifest(d)))
            except BackupError:
                continue
    return sorted(found, key=lambda b: (b.created, b.name))


def find(ctx: Context, name: str) -> BackupInfo:
    for b in list_backups(ctx):
        if b.name == name:
            return b
    raise UsageError(f"no backup named {name!r} in {ctx.backups_dir}", hint="see `nesop-update list-backups`")
