"""Backups under ``<root>/backups/<name>/`` (root:root 0700), contract docs/architecture.md §17.

A backup holds exactly what an operation touches: those files with owner and mode, the list of
touched paths that did not exist, and a snapshot of the database; ``backup_manifest.json`` lists
them with their sha256. Restoring one puts every file back and removes the ones that were absent.
A backup taken before an update that installs a new systemd unit also holds the unit it replaces
(:data:`UNIT_FILE`, or the record that there was none): :mod:`nesop_deb.runtime.unitfile` puts
it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb.config import is_socket_name, is_unit_name
from nesop_deb.errors import NesopError, RefusedError, UsageError
from nesop_deb.paths import UnsafePath, link_stays_inside, safe_relative
from nesop_deb.runtime import accounts, database, safefs, state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log
from nesop_deb.runtime.safefs import TMP_SUFFIX, Tree

MANIFEST = "backup_manifest.json"
DB_FILE = "database.sqlite3"  # a SQLite database's snapshot; each engine names its own
EARLY = ".before-stop"  # added to it: a copy taken while the app ran, not yet known to be exact
UNIT_FILE = "systemd-unit"  # the installed unit an update replaced, as it was
SOCKET_FILE = "systemd-socket"  # likewise the app's socket unit ([app] socket_file)
# the record in backup_manifest.json -> the file holding its content
UNIT_RECORDS = {"unit": UNIT_FILE, "socket": SOCKET_FILE}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:~-]{0,200}")


class BackupError(NesopError):
    """A backup could not be written or read."""


@dataclass(frozen=True)
class UnitCopy:
    """The app's installed systemd unit as a backup holds it."""

    name: str  # its file name in /etc/systemd/system
    content: bytes | None  # None: there was no unit there
    mode: int = 0o644


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
    with open_backups(ctx, create=True) as backups:
        n = 1
        while backups.exists(name):
            n += 1
            name = f"{base}-{n}"
    return name


def open_backups(ctx: Context, *, create: bool = False) -> Tree:
    """``<root>/backups``, root's own (see :func:`safefs.records`); made when ``create``."""
    tree = safefs.records(ctx.app_root, "backups", create=create)
    if tree is None:
        raise BackupError(f"{ctx.backups_dir} does not exist: no backup was taken on this server")
    return tree


def exists(ctx: Context, name: str) -> bool:
    tree = safefs.records(ctx.app_root, "backups", create=False)
    if tree is None:
        return False
    with tree:
        return tree.is_dir(check_name(name))


def check_name(name: str) -> str:
    """A backup's name is one plain directory name below ``backups/``."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a backup name", hint="use a name `nesop-update list-backups` shows"
        )
    return name


def create_files(
    ctx: Context,
    name: str,
    paths: Iterable[str],
    meta: dict[str, Any],
    *,
    unit: UnitCopy | None = None,
    socket: UnitCopy | None = None,
) -> Path:
    """Back up ``paths`` (app-relative), and ``unit`` (the service's) and ``socket`` (the
    socket unit) when given. Returns the backup directory; the DB is added separately."""
    check_name(name)
    tmp = f".{name}.partial"
    with open_backups(ctx, create=True) as backups, safefs.Tree.open(ctx.app_root) as app:
        if backups.exists(name):
            raise BackupError(f"backup {backups.path / name} already exists")
        backups.rmtree(tmp)
        try:
            backups.mkdirs(f"{tmp}/files", mode=0o700)
            _write(ctx, app, backups, tmp, name, paths, meta, {"unit": unit, "socket": socket})
        except BaseException:
            with contextlib.suppress(OSError):
                backups.rmtree(tmp)  # a half-written backup only takes space
            raise
        backups.replace(tmp, name)
        return backups.path / name


def _write(
    ctx: Context,
    app: Tree,
    backups: Tree,
    tmp: str,
    name: str,
    paths: Iterable[str],
    meta: dict[str, Any],
    units: dict[str, UnitCopy | None],
) -> None:
    files: list[dict[str, Any]] = []
    absent: list[str] = []
    for rel in sorted(set(paths)):
        st = app.lstat(rel)
        if st is None:
            absent.append(rel)
            continue
        link_target = None
        copy = f"{tmp}/files/{rel}"
        backups.mkdirs(str(Path(copy).parent), mode=0o700)
        if stat.S_ISLNK(st.st_mode):
            link_target = app.readlink(rel)
            backups.symlink_new(copy, link_target)
        elif stat.S_ISREG(st.st_mode):
            # the copy is root's: the manifest says whose the live file was (as the descriptor
            # copied says, not the name looked at before); made durable with the others by one
            # syncfs below, not one fsync each
            st = backups.copy_from(app, rel, copy, 0o600, durable=False)
        else:
            raise safefs.LinkRefused(app.path / rel, "not a regular file or symlink")
        files.append(
            {
                "path": rel,
                "sha256": backups.digest(copy),
                "mode": st.st_mode & 0o7777,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "link_target": link_target,
            }
        )
    data = {"name": name, "created": stamp(), "files": files, "absent": absent, "database": None, **meta}
    for key, unit in units.items():
        if unit is None:
            continue
        digest = None
        if unit.content is not None:
            backups.write_new(f"{tmp}/{UNIT_RECORDS[key]}", unit.content, 0o600, durable=False)
            digest = hashlib.sha256(unit.content).hexdigest()
        data[key] = {"name": unit.name, "sha256": digest, "mode": unit.mode}
    backups.syncfs()  # every copy is on disk before the manifest that vouches for it
    _write_manifest(ctx, backups, tmp, name, data)


def _write_manifest(ctx: Context, backups: Tree, directory: str, name: str, data: dict[str, Any]) -> None:
    """Write a backup's manifest and seal it: its sha256 goes to root's state, and a restore
    reads back only a manifest with that hash."""
    text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    state.seal_backup(ctx, name, hashlib.sha256(text).hexdigest())
    backups.write_new(f"{directory}/{MANIFEST}.tmp", text, 0o600)
    backups.replace(f"{directory}/{MANIFEST}.tmp", f"{directory}/{MANIFEST}")


def undo_space(ctx: Context, paths: Iterable[str], *, with_db: bool) -> int:
    """Bytes an undo writes on the app's file system: a copy of each touched file that exists,
    and with migrations the database twice (the replaced one is kept beside the snapshot)."""
    need = 1 << 20
    with safefs.Tree.open(ctx.app_root) as app:
        for rel in set(paths):
            with contextlib.suppress(OSError, RefusedError):
                st = app.lstat(rel)
                need += st.st_size if st is not None else 0
    db = ctx.database_path
    if with_db and db is not None:
        for part in (db, db.with_name(db.name + "-wal")):  # a snapshot holds what the WAL holds
            with contextlib.suppress(OSError):
                need += 2 * part.lstat().st_size
    return need


def reserve(ctx: Context, name: str, size: int) -> None:
    """Hold ``size`` bytes in ``backups/<name>`` (root only), so the undo finds them free on a
    full disk."""
    with open_backups(ctx, create=True) as backups:
        try:
            backups.reserve(name, size)
        except OSError as exc:
            raise BackupError(
                f"{ctx.app_root}: cannot set aside {size >> 20} MiB for a possible undo ({exc.strerror})"
            ) from None


def release(ctx: Context, name: str) -> None:
    """Remove a reserve or a stale file from ``backups/`` (nothing there is fine)."""
    tree = safefs.records(ctx.app_root, "backups", create=False)
    if tree is not None:
        with tree:
            tree.unlink(name)


def add_database(ctx: Context, backup_dir: Path) -> str | None:
    """Snapshot the app's database into an existing backup and record it; its sha256, if any."""
    db = ctx.database
    if db is None or not db.exists():
        return None
    with open_backups(ctx) as backups, backups.subdir(check_name(backup_dir.name)) as bdir:
        digest = db.snapshot(bdir, db.snapshot_file)
    _record_database(ctx, backup_dir, digest)
    return digest


def copy_database_early(ctx: Context, backup_dir: Path) -> database.Held | None:
    """Copy the database into the backup while the app still runs, keeping the way to check it.

    The copy goes under a name no restore reads (:data:`EARLY` added) and is not recorded: it becomes
    the backup's snapshot only through :func:`keep_early_database`, once the app is stopped and
    nothing was committed since.
    """
    db = ctx.database
    if db is None or not db.exists():
        return None
    with open_backups(ctx) as backups, backups.subdir(check_name(backup_dir.name)) as bdir:
        early = db.snapshot_held(bdir, db.snapshot_file + EARLY)
    try:
        # recorded (and sealed) now, under the name it will have: keeping it after the stop is
        # then one rename; until that rename, the manifest names a file that is not there, and no
        # restore can use the unchecked copy
        _record_database(ctx, backup_dir, early.sha256)
    except BaseException:
        early.close()
        raise
    return early


def keep_early_database(ctx: Context, backup_dir: Path, early: database.Held) -> None:
    """Make an early copy the backup's snapshot (the database is known unchanged since): the
    manifest already names it (see :func:`copy_database_early`), so this is one rename."""
    name = snapshot_file(ctx)
    with open_backups(ctx) as backups:
        backups.replace(f"{check_name(backup_dir.name)}/{name}{EARLY}", f"{backup_dir.name}/{name}")


def forget_database(ctx: Context, backup_dir: Path) -> None:
    """Record that the backup holds no database snapshot, when its manifest names one that is
    not there (an early copy that never became the snapshot)."""
    if has_database(ctx, backup_dir):
        return
    data = read_manifest(ctx, backup_dir)
    if data.get("database") is not None:
        data["database"] = None
        with open_backups(ctx) as backups:
            _write_manifest(ctx, backups, backup_dir.name, backup_dir.name, data)


def drop_early_database(ctx: Context, backup_dir: Path) -> None:
    """Remove an early copy that did not become the snapshot (idempotent). It records nothing, so
    a copy that cannot go now (a read-only or broken backups dir) only costs space until retention
    prunes its backup."""
    try:
        tree = safefs.records(ctx.app_root, "backups", create=False)
        if tree is not None:
            with tree:
                tree.unlink(f"{check_name(backup_dir.name)}/{snapshot_file(ctx)}{EARLY}")
    except (OSError, NesopError) as exc:
        log.warning("cannot remove the early copy in %s: %s", backup_dir, exc)


def database_size(ctx: Context, backup_dir: Path) -> int:
    with open_backups(ctx) as backups:
        st = backups.lstat(f"{check_name(backup_dir.name)}/{snapshot_file(ctx)}")
        return 0 if st is None else st.st_size


def has_database(ctx: Context, backup_dir: Path) -> bool:
    try:
        return database_size(ctx, backup_dir) > 0
    except BackupError:
        return False


def snapshot_file(ctx: Context) -> str:
    """The name of the database snapshot in a backup of this app."""
    db = ctx.database
    return DB_FILE if db is None else db.snapshot_file


def _record_database(ctx: Context, backup_dir: Path, digest: str) -> None:
    db = ctx.database
    assert db is not None
    path = ctx.database_path
    source = str(path.relative_to(ctx.root)) if path is not None else db.source
    data = read_manifest(ctx, backup_dir)
    data["database"] = {"file": db.snapshot_file, "sha256": digest, "source": source}
    with open_backups(ctx) as backups:
        _write_manifest(ctx, backups, backup_dir.name, backup_dir.name, data)


def read_manifest(ctx: Context, backup_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """A backup's manifest; with ``verify``, only the one root sealed when it took the backup,
    and only with paths and modes a package could carry."""
    name = check_name(backup_dir.name)
    try:
        with open_backups(ctx) as backups:
            text = backups.read_bytes(f"{name}/{MANIFEST}")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup_dir}: not a readable backup ({exc})") from None
    if not isinstance(data, dict):
        raise BackupError(f"{backup_dir}: not a readable backup")
    if verify:
        seal = state.backup_seal(ctx, name)
        if seal is None or seal != hashlib.sha256(text).hexdigest():
            why = "none was recorded" if seal is None else "it was changed since"
            raise RefusedError(
                f"backup {name}: its manifest is not the one recorded when it was taken ({why}):"
                " refusing to restore it",
                hint="restore a backup this server took, see `nesop-update list-backups`",
            )
        _validate(name, data)
    return data


def _validate(name: str, data: dict[str, Any]) -> None:
    """The same rules as a package's manifest: relative paths that stay below the app root,
    no setuid, setgid or world-writable modes, links that stay inside."""

    def bad(what: str) -> BackupError:
        return BackupError(f"backup {name}: {what}; refusing to restore it")

    try:
        for f in data["files"]:
            rel = f["path"]
            if safe_relative(rel) != rel:
                raise bad(f"path {rel!r} is not normalised")
            mode, uid, gid = f["mode"], f["uid"], f["gid"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (mode, uid, gid)):
                raise bad(f"{rel}: owner or mode is not a number")
            link = f["link_target"]
            if mode & ~0o7777 or (link is None and mode & 0o6000):
                raise bad(f"{rel}: mode {mode:o} is setuid or setgid")
            if link is not None and (not isinstance(link, str) or not link_stays_inside(rel, link)):
                raise bad(f"{rel}: symlink target {link!r} leaves the app root")
        for rel in list(data["absent"]) + list(data.get("created_dirs") or []):
            if safe_relative(str(rel)) != rel:
                raise bad(f"path {rel!r} is not normalised")
        venv = data.get("venv")
        if venv is not None:
            kind, target = venv["kind"], venv["target"]
            if kind not in ("link", "dir", "absent") or (kind == "link") != isinstance(target, str):
                raise bad(f"virtualenv record {venv!r} is malformed")
        for unit in (data.get(key) for key in UNIT_RECORDS):
            if unit is None:
                continue
            uname, digest, mode = unit["name"], unit["sha256"], unit["mode"]
            if not isinstance(uname, str) or not (is_unit_name(uname) or is_socket_name(uname)):
                raise bad(f"unit {uname!r} is not a unit name")
            if digest is not None and not isinstance(digest, str):
                raise bad(f"unit {uname}: sha256 is not a string")
            if not isinstance(mode, int) or isinstance(mode, bool) or mode < 0 or mode & ~0o755:
                raise bad(f"unit {uname}: mode {mode!r} is not a unit file's")
    except UnsafePath as exc:
        raise bad(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise bad(f"malformed manifest ({exc!r})") from None


def restore_files(ctx: Context, backup_dir: Path) -> None:
    """Put every backed-up file back as it was and remove those that did not exist (idempotent)."""
    data = read_manifest(ctx, backup_dir)
    name = backup_dir.name
    errors: list[str] = []
    with open_backups(ctx) as backups, backups.subdir(name) as bdir, safefs.Tree.open(ctx.app_root) as app:
        # every copy is written beside its file first and flushed once, then all are renamed; a
        # file the app's account sabotaged (a link planted, a directory swapped in) is reported
        # and the others are restored all the same: a mixed tree is worse than one bad file
        staged = []
        for f in data["files"]:
            with _collect(errors, f["path"]):
                if _stage_one(ctx, app, bdir, f):
                    staged.append(f)
        if staged:
            app.syncfs()
        for f in staged:
            with _collect(errors, f["path"]):
                rel = f["path"]
                if app.is_dir(rel):
                    app.rmtree(rel)
                app.replace(rel + TMP_SUFFIX, rel, durable=False)
        for parent in sorted({safefs.parent_of(f["path"]) for f in staged}):
            with _collect(errors, parent or "."):
                if parent:
                    with app.subdir(parent) as d:
                        d.fsync()
                else:
                    app.fsync()
        # A backup taken before an update names the directories the update made; only those go, so
        # an empty directory the app had before (an uploads dir) survives. Older backups: prune.
        created = data.get("created_dirs")
        for rel in data["absent"]:
            with _collect(errors, rel):
                st = app.lstat(rel)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    app.unlink(rel)
                    if created is None:
                        _prune_empty_dirs(app, str(Path(rel).parent))
        for rel in sorted(created or [], key=lambda r: str(r).count("/"), reverse=True):
            app.rmdir(str(rel))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BackupError(
            f"backup {name}: could not restore {errors[0]}{more}; every other file was restored"
        )


@contextlib.contextmanager
def _collect(errors: list[str], rel: str) -> Iterator[None]:
    try:
        yield
    except (NesopError, OSError) as exc:
        errors.append(f"{rel}: {exc}")


def _make_parents(ctx: Context, app: Tree, rel: str) -> None:
    """The missing directories above ``rel``, each owned as an update would make it: the app's
    account's in its writable directories (0750 at their top), root's everywhere else."""
    parts = rel.split("/")[:-1]
    owner = None
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if app.lstat(prefix) is not None:
            continue
        if ctx.app.is_writable(prefix):
            owner = owner or accounts.app_owner(ctx) or (-1, -1)
            top = prefix in ctx.app.writable
            app.mkdirs(prefix, mode=0o750 if top else 0o755, uid=owner[0], gid=owner[1])
        else:
            app.mkdirs(prefix)


def _stage_one(ctx: Context, app: Tree, bdir: Tree, f: dict[str, Any]) -> bool:
    """Write a backed-up file beside its live path (``X.nesop-tmp``); False if the live file is
    already exactly it (a rerun)."""
    rel = f["path"]
    st = app.lstat(rel)
    if st is not None and f["link_target"] is None and stat.S_ISREG(st.st_mode):
        same = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (f["mode"], f["uid"], f["gid"])
        if same and app.digest(rel) == f["sha256"]:
            return False
    _make_parents(ctx, app, rel)
    tmp = rel + TMP_SUFFIX
    if f["link_target"] is None:
        if bdir.digest(f"files/{rel}") != f["sha256"]:
            raise BackupError(f"backup {bdir.path.name}: files/{rel} does not match its manifest")
        app.copy_from(bdir, f"files/{rel}", tmp, f["mode"], f["uid"], f["gid"], durable=False)
    else:
        app.symlink_new(tmp, f["link_target"])
    return True


def _prune_empty_dirs(app: Tree, rel: str) -> None:
    while rel not in ("", ".") and app.rmdir(rel):
        rel = str(Path(rel).parent)


def read_unit(ctx: Context, backup_dir: Path, key: str = "unit") -> UnitCopy | None:
    """The installed unit the backup holds (checked against its manifest), the service's or
    (``key="socket"``) the socket unit; None when the backup holds none (the operation that took
    it installed no such unit)."""
    data = read_manifest(ctx, backup_dir)
    record = data.get(key)
    if record is None:
        return None
    content = None
    if record["sha256"] is not None:
        with open_backups(ctx) as backups:
            # read once, then check what was read: no second open to swap a file between
            content = backups.read_bytes(f"{check_name(backup_dir.name)}/{UNIT_RECORDS[key]}")
        if hashlib.sha256(content).hexdigest() != record["sha256"]:
            raise BackupError(f"backup {backup_dir.name}: {UNIT_RECORDS[key]} does not match its manifest")
    return UnitCopy(record["name"], content, record["mode"])


def restore_database(ctx: Context, backup_dir: Path, keep_current: bool) -> Path | None:
    """Put the backup's database snapshot back; the current database is kept beside the backup."""
    data = read_manifest(ctx, backup_dir)
    db = ctx.database
    if data.get("database") is None or db is None:
        return None
    name = data["database"].get("file", DB_FILE)
    if name != db.snapshot_file:
        raise BackupError(
            f"backup {backup_dir.name}: its database snapshot ({name}) is not of the app's"
            f" {db.kind} database",
            hint="restore it by hand with the engine's own tools",
        )
    kept = f"replaced_{stamp()}{Path(name).suffix}" if keep_current else None
    with open_backups(ctx) as backups, backups.subdir(backup_dir.name) as bdir:
        if bdir.digest(name) != data["database"]["sha256"]:
            raise BackupError(f"backup {backup_dir.name}: {name} does not match its manifest")
        db.restore(bdir, name, kept)
    return None if kept is None else backup_dir / kept


def list_backups(ctx: Context) -> list[BackupInfo]:
    backups = safefs.records(ctx.app_root, "backups", create=False)
    if backups is None:
        return []
    found = []
    with backups:
        for name in backups.listdir():
            if name.startswith(".") or not _NAME.fullmatch(name) or not backups.is_dir(name):
                continue
            if not backups.exists(f"{name}/{MANIFEST}"):
                continue
            try:
                found.append(
                    BackupInfo(
                        name, backups.path / name, read_manifest(ctx, backups.path / name, verify=False)
                    )
                )
            except (BackupError, RefusedError):
                continue
    return sorted(found, key=lambda b: (b.created, b.name))


def find(ctx: Context, name: str) -> BackupInfo:
    check_name(name)
    for b in list_backups(ctx):
        if b.name == name:
            return b
    raise UsageError(f"no backup named {name!r} in {ctx.backups_dir}", hint="see `nesop-update list-backups`")
