"""postinst configure: apply an update as one transaction, or restore everything and fail.

verify → record undo data → stage new files (and parse the migrations) → back up (and copy the
DB) → stop → snapshot DB → apply files → migrate → install the unit → start → health gate → commit
(the unit step only when the update writes ``[app] unit_file``, see :mod:`unitfile`). Everything
before ``stop`` happens while the old app still serves, so the outage is the restart plus the
renames and running the migrations; the snapshot adds to it only when the database was written
to between its early copy and the stop.

The stage step also reserves, on the app's file system, the space an undo needs (a copy of every
touched file and of the database): a disk that fills up during the update cannot stop the undo.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nesop_deb import manifest as mf
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Action, FileEntry, Manifest
from nesop_deb.runtime import (
    accounts,
    backup,
    database,
    deps,
    gating,
    health,
    history,
    pages,
    safefs,
    service,
    state,
    transaction,
    unitfile,
)
from nesop_deb.runtime.context import AppSettings, Context
from nesop_deb.runtime.fsutil import sha256_file
from nesop_deb.runtime.log import log
from nesop_deb.runtime.safefs import TMP_SUFFIX

NEW_SUFFIX = ".nesop-new"


def load_installed_manifest(ctx_package: str, root: Path) -> Manifest:
    path = root / "usr/share" / ctx_package / mf.NAME
    try:
        return mf.loads(path.read_bytes())
    except FileNotFoundError:
        raise NesopError(f"{path} is missing: the package is not unpacked") from None


def context_for(manifest: Manifest) -> Context:
    return Context.for_package(manifest.package, AppSettings.from_manifest_config(manifest.config))


@dataclass
class Job:
    """What one apply transaction works on; steps share it."""

    ctx: Context
    manifest: Manifest
    source: Path  # where the payload and migrations are (the unpacked package)
    previous: str | None
    backup_name: str
    uid: int = -1
    gid: int = -1
    service_existed: bool = True
    was_active: bool = True
    kept_config: list[str] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)
    # how the undo put the database back (the history says): rollback migrations or the snapshot
    database_undo: str | None = None
    created_dirs: list[str] = field(default_factory=list)  # app-relative, made for new files
    status_before_stop: service.ServiceStatus | None = None
    venv_id: str | None = None  # the virtualenv the update switches to (built before the stop)
    unit_written: bool = False  # the unit step installed a new unit (systemd was reloaded)
    started: float = field(default_factory=time.monotonic)
    # the database copy taken before the stop, with its open connection; never journaled, so a
    # job rebuilt after a crash has none and copies the database again
    early_db: database.Held | None = field(default=None, repr=False)
    # the migrations, parsed before the stop (yoyo imported); likewise never journaled
    migrations: database.Migrations = field(default=None, repr=False)
    persist: Callable[[], None] = field(default=lambda: None, repr=False)  # writes the journal

    @property
    def backup_dir(self) -> Path:
        return self.ctx.backups_dir / self.backup_name

    def owner_of(self, rel: str) -> tuple[int, int]:
        """Who a file or directory the update writes belongs to: the app's account in the
        directories [app] writable names, root everywhere else (the app only reads its code)."""
        return (self.uid, self.gid) if self.ctx.app.is_writable(rel) else (0, 0)

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who the migrations run as: the app's account (see :func:`database.as_owner`)."""
        if self.uid == -1:
            uid, gid = accounts.uid(self.ctx, self.ctx.app.user), accounts.gid(self.ctx, self.ctx.app.group)
            return None if uid is None or gid is None else (uid, gid)
        return self.uid, self.gid

    @property
    def database(self) -> database.Database | None:
        """The app's database, worked on as :attr:`owner`."""
        db = self.ctx.database
        if db is not None and db.owner is not None:
            db.owner = self.owner
        return db

    @property
    def unit(self) -> str:
        return self.ctx.app.service

    @property
    def reserve(self) -> str:
        return reserve_name(self.backup_name)

    @property
    def snapshots_database(self) -> bool:
        """Only an update with migrations can change the database, so only it takes a snapshot."""
        return bool(self.manifest.migrations) and self.ctx.app.database is not None

    @property
    def recorded_migrations(self) -> Path:
        """The recorded copy of the version's migrations (the undo data, see :class:`Record`)."""
        return state.recorded_migrations(self.ctx, self.manifest.version)

    def payload(self, rel: str) -> Path:
        return self.source / "payload" / rel

    def target(self, f: FileEntry) -> str:
        """Where a shipped file goes (app-relative): its path, or beside a locally edited config file."""
        return f.path + NEW_SUFFIX if f.path in self.kept_config else f.path

    def app(self) -> safefs.Tree:
        """The app tree, opened for one step: every write there goes through it."""
        return safefs.Tree.open(self.ctx.app_root)

    def touched(self) -> list[str]:
        paths: set[str] = set()
        for f in self.manifest.files:
            paths.add(f.path)
            if f.renamed_from:
                paths.add(f.renamed_from)
            if f.path in self.kept_config:
                paths.add(f.path + NEW_SUFFIX)
        return sorted(paths)


def _tmp(rel: str) -> str:
    return rel + TMP_SUFFIX


def reserve_name(backup_name: str) -> str:
    """The file in ``backups/`` holding the space an undo needs."""
    return f".reserve-{backup_name}"


def release_reserve(ctx: Context, backup_name: str) -> None:
    """Give back the space held for the undo (before undoing, or once committed). It is only
    space: when it cannot go now, retention removes it after the next update."""
    try:
        backup.release(ctx, reserve_name(backup_name))
    except (OSError, NesopError) as exc:
        log.warning("cannot remove %s: %s", ctx.backups_dir / reserve_name(backup_name), exc)


class Record:
    """Keep the version's manifest and migrations in the state dir: the undo data."""

    name = "record"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        state.record_version(self.job.ctx, self.job.manifest, self.job.source / "migrations")
        state.record_left_behind(self.job.ctx, self.job.manifest, self.job.previous)

    def undo(self) -> None:
        st = state.load(self.job.ctx)
        if st.entry(self.job.manifest.version) is None:
            shutil.rmtree(state.version_dir(self.job.ctx, self.job.manifest.version), ignore_errors=True)


class Prepare:
    """Before the stop: the app's user, and every new file written beside its target."""

    name = "stage"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job, ctx = self.job, self.job.ctx
        if job.manifest.full:
            accounts.ensure_system_user(ctx, ctx.app.user, ctx.app.group, ctx.app.root)
        uid, gid = accounts.uid(ctx, ctx.app.user), accounts.gid(ctx, ctx.app.group)
        if uid is None or gid is None:
            raise RefusedError(
                f"user {ctx.app.user!r} or group {ctx.app.group!r} does not exist on this server",
                hint="create them, or install a --full package first",
            )
        job.uid, job.gid = uid, gid
        if not ctx.app_root.exists():
            # root's, readable by the app: its account gets only the directories [app] writable names
            ctx.app_root.mkdir(parents=True, mode=0o755)
        with_db = bool(job.manifest.migrations)
        backup.reserve(ctx, job.reserve, backup.undo_space(ctx, job.touched(), with_db=with_db))
        # a config file a partial update left at its earlier content was not edited here
        left = state.left_behind(ctx, job.previous)
        with job.app() as app:
            for path in job.manifest.config_files:
                entry = next((f for f in job.manifest.files if f.path == path and f.ships_payload), None)
                if entry is None:
                    continue
                live = app.digest(path)
                ours = {entry.preimage_sha256, entry.sha256} | ({left[path]} if path in left else set())
                if live is not None and live not in ours:
                    job.kept_config.append(path)
                    log.warning(
                        "%s was edited on this server: kept; the new version goes to %s%s",
                        path,
                        path,
                        NEW_SUFFIX,
                    )
            missing = self._missing_dirs(app)
            job.created_dirs.extend(missing)
            # the journal names the kept config files and the new directories before anything is
            # written, so an undo after a crash in this step knows every path it has to remove
            job.persist()
            for d in missing:
                writable = ctx.app.is_writable(d)
                app.mkdirs(
                    d, mode=0o750 if writable else 0o755, uid=job.owner_of(d)[0], gid=job.owner_of(d)[1]
                )
            for f in job.manifest.files:
                if not f.ships_payload:
                    continue
                target = job.target(f)
                if f.link_target is not None:
                    app.symlink_new(_tmp(target), f.link_target)
                else:
                    fuid, fgid = job.owner_of(target)
                    app.write_new(_tmp(target), job.payload(f.path).read_bytes(), f.mode or 0o644, fuid, fgid)
        self._read_migrations()
        self._unit_file_deleted()

    def _unit_file_deleted(self) -> None:
        """An update that deletes the unit file from the app tree leaves the installed unit: the
        service it runs is the app's, and removing it is the operator's call."""
        job = self.job
        names = {unitfile.unit_file_of(job.manifest), job.ctx.app.unit_file}
        if job.previous is not None:
            with contextlib.suppress(state.StateError):
                names.add(unitfile.unit_file_of(state.stored_manifest(job.ctx, job.previous)))
        f = unitfile.deleted(job.manifest, {n for n in names if n is not None})
        if f is not None:
            log.warning(
                "%s deletes %s, the unit file: %s stays installed as it is",
                job.manifest.version,
                f.path,
                unitfile.path(job.ctx),
            )

    def _read_migrations(self) -> None:
        """Parsed now, while the app serves: after the stop only the migrations themselves run,
        and one that cannot be parsed fails the update before it."""
        job = self.job
        if job.manifest.migrations and job.ctx.app.database is not None:
            job.migrations = database.read(job.recorded_migrations, [m.id for m in job.manifest.migrations])

    def _missing_dirs(self, app: safefs.Tree) -> list[str]:
        """The directories the new files and the app's writable directories need that do not
        exist yet (app-relative), parents first."""
        missing: set[str] = set()
        wanted = [safefs.parent_of(self.job.target(f)) for f in self.job.manifest.files if f.ships_payload]
        for directory in [*wanted, *self.job.ctx.app.writable]:
            while directory and app.lstat(directory) is None:
                missing.add(directory)
                directory = safefs.parent_of(directory)
        return sorted(missing, key=lambda d: (d.count("/"), d))

    def undo(self) -> None:
        release_reserve(self.job.ctx, self.job.backup_name)
        with self.job.app() as app:
            for f in self.job.manifest.files:
                if f.ships_payload:
                    app.unlink(_tmp(self.job.target(f)))
            # the directories made for new files go too, deepest first (ApplyFiles.undo emptied them)
            for rel in sorted(set(self.job.created_dirs), key=lambda r: r.count("/"), reverse=True):
                app.rmdir(rel)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class Backup:
    """The touched files; for an update with migrations also a first copy of the database.

    The copy is taken here, while the old app still serves, so that the outage pays for it only
    when the app wrote to the database before it stopped (see :class:`SnapshotDatabase`).
    """

    name = "backup"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        with backup.open_backups(job.ctx, create=True) as backups:
            if backups.exists(job.backup_name):
                return  # a rerun of a recovered transaction
        meta: dict[str, Any] = {
            "kind": "pre_update",
            "version": job.previous,
            "for_version": job.manifest.version,
            "created_dirs": sorted(set(job.created_dirs)),
        }
        if job.ctx.app.venv is not None:
            # what the app's venv link is now: an undo, a recovery and a rollback put it back
            # (also when this update keeps it: a rollback across it must find the one it had)
            recorded = deps.record(job.ctx)
            if recorded is not None:
                meta["venv"] = recorded
        # the installed unit, when this update replaces it: an undo, a recovery after a crash and
        # a rollback put it back from here
        unit, socket = (
            unitfile.copy_for_backup(job.ctx, kind) if unitfile.entry(job.manifest, kind) else None
            for kind in (unitfile.SERVICE, unitfile.SOCKET)
        )
        backup.create_files(job.ctx, job.backup_name, job.touched(), meta, unit=unit, socket=socket)
        if job.snapshots_database:
            started = time.monotonic()
            try:
                job.early_db = backup.copy_database_early(job.ctx, job.backup_dir)
            except database.ERRORS as exc:
                log.warning("could not copy the database before the stop (%s): it is copied after it", exc)
                return
            if job.early_db is not None:
                log.info(
                    "database copied before the stop (%s in %.3f s)",
                    _mib(job.early_db.size),
                    time.monotonic() - started,
                )

    def undo(self) -> None:
        """The backup stays: it is the record of what was there (retention prunes it).

        Only a database copy that never became its snapshot goes: it records nothing.
        """
        if self.job.early_db is not None:
            self.job.early_db.close()
            self.job.early_db = None
        backup.drop_early_database(self.job.ctx, self.job.backup_dir)
        try:
            if backup.exists(self.job.ctx, self.job.backup_name):
                backup.forget_database(self.job.ctx, self.job.backup_dir)
        except (OSError, NesopError) as exc:
            # only a record: a restore of this backup then says its database file is missing
            log.warning("cannot record that %s holds no database: %s", self.job.backup_name, exc)


def switches_venv(job: Job) -> bool:
    return job.manifest.dependencies is not None and job.ctx.app.venv is not None


class BuildVenv:
    """Before the stop: the virtualenv the new version needs, built offline beside the live one
    (or found built already) and its imports checked; nothing live changes."""

    name = "venv-build"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        assert job.manifest.dependencies is not None
        job.venv_id = deps.prepare(job.ctx, job.source, job.manifest.dependencies, job.owner)

    def undo(self) -> None:
        """The link is back (SwitchVenv.undo ran first): what no backup reaches goes, the new
        environment included; one that was there before is kept while a backup names it.
        Only space: when it cannot go now, the next commit prunes it."""
        try:
            deps.prune(self.job.ctx)
        except (NesopError, OSError) as exc:
            log.warning("cannot prune the virtualenvs now (%s): the next update does", exc)


class SwitchVenv:
    """Inside the outage: the app's venv link points at the new environment (one rename)."""

    name = "venv-switch"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        assert job.venv_id is not None
        deps.switch(job.ctx, str(deps.env_path(job.ctx, job.venv_id)))

    def undo(self) -> None:
        # from the backup, not from memory: after a crash the journal names this step
        job = self.job
        if backup.exists(job.ctx, job.backup_name):
            deps.restore_from(job.ctx, job.backup_dir)


class Stop:
    """Close the gate, then stop the app: from here until :class:`Start` opens the gate, nothing
    starts the app (not its socket, not an operator), whose tree is being changed."""

    name = "stop"
    starts_app = True  # its undo starts the old app: only after every other undo succeeded

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        st = service.status(job.unit)
        job.service_existed = st.exists
        job.was_active = st.active
        # read now, while the app still runs: a stop does not change the restart count, and
        # every systemctl call between stop and start would lengthen the outage
        job.status_before_stop = st
        gating.ensure_dropin(job.ctx, st)
        gating.hold(job.ctx, f"update to {job.manifest.version}")
        if st.exists:
            service.stop(job.unit)

    def undo(self) -> None:
        # last of the undo: files, virtualenv, database and units are back
        gating.release(self.job.ctx)
        if service.status(self.job.unit).exists:
            gating.start_app(self.job.ctx)


class SnapshotDatabase:
    """After the stop: the database as it is now, in the backup, for Migrate.undo and rollbacks.

    The copy :class:`Backup` took is kept when the database provably did not change since (each
    engine's :meth:`~nesop_deb.runtime.database.Held.unchanged`: for SQLite the same file and
    ``PRAGMA data_version`` on the copy's still-open connection, for PostgreSQL the server's
    transaction ids; both move with every commit, the app's last writes while stopping
    included). Otherwise, or when there is nothing to ask (a job rebuilt after a crash), the
    database is copied again now, while the app is stopped.
    """

    name = "snapshot-db"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        early, job.early_db = job.early_db, None
        if early is not None and early.unchanged():
            backup.keep_early_database(job.ctx, job.backup_dir, early)
            log.info("database unchanged since the copy taken before the stop (%s): kept", _mib(early.size))
            return
        # the stale copy goes first: the backup never holds two copies (the preflight counts one)
        backup.drop_early_database(job.ctx, job.backup_dir)
        started = time.monotonic()
        if backup.add_database(job.ctx, job.backup_dir) is None:
            backup.forget_database(job.ctx, job.backup_dir)
            return  # no database (yet): nothing an undo could restore
        size = backup.database_size(job.ctx, job.backup_dir)
        took = f"{_mib(size)} in {time.monotonic() - started:.3f} s"
        if early is None:
            log.info("database copied after the stop (%s): no copy taken before it could be checked", took)
        else:
            log.info("database changed after the copy taken before the stop: copied again (%s)", took)

    def undo(self) -> None:
        """Nothing to undo: the snapshot is read by Migrate.undo."""


class ApplyFiles:
    name = "apply-files"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        parents: set[str] = set()
        with job.app() as app:
            for f in job.manifest.files:
                if f.action is Action.DELETE or f.action is Action.RENAME:
                    old = f.path if f.action is Action.DELETE else str(f.renamed_from)
                    edited = app.digest(old) not in (f.preimage_sha256, None)
                    if f.path in job.manifest.config_files and f.action is Action.DELETE and edited:
                        job.kept_config.append(f.path)
                        log.warning(
                            "%s was edited on this server: kept although the update deletes it", f.path
                        )
                        continue
                    if not app.is_dir(old) and app.unlink(old, durable=False):
                        parents.add(safefs.parent_of(old))
                if f.ships_payload:
                    target = job.target(f)
                    staged = _tmp(target)
                    if app.lstat(staged) is None:
                        if app.digest(target) == f.sha256:
                            continue  # already in place (a rerun)
                        raise NesopError(
                            f"{app.path / staged} vanished before it could be renamed into place"
                        )
                    if app.is_dir(target):
                        raise RefusedError(
                            f"{app.path / target} is a directory on this server; the update ships a file"
                        )
                    app.replace(staged, target, durable=False)
                    parents.add(safefs.parent_of(target))
            for p in parents:
                if p:
                    with app.subdir(p) as d:
                        d.fsync()
                else:
                    app.fsync()

    def undo(self) -> None:
        with self.job.app() as app:
            for f in self.job.manifest.files:
                if f.ships_payload:
                    app.unlink(_tmp(self.job.target(f)))
        backup.restore_files(self.job.ctx, self.job.backup_dir)


class Migrate:
    name = "migrate"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        db = job.database
        assert db is not None
        ids = [m.id for m in job.manifest.migrations]
        # as the app's account: every file SQLite makes is the app's, and no link is followed as root
        job.migrated = database.apply(db, job.recorded_migrations, ids, job.migrations)

    def undo(self) -> None:
        job = self.job
        db = job.database
        if db is None:
            return
        snapshot = backup.has_database(job.ctx, job.backup_dir)
        ids = [m.id for m in job.manifest.migrations]
        if not db.exists():
            return
        try:
            applied = set(database.applied_ids(db)) & set(ids)
        except database.MigrationError as exc:
            if not snapshot:
                raise
            # the database cannot even be read (a link planted beside it, a damaged file): the
            # snapshot was taken with the app stopped, so restoring it loses nothing
            log.warning("%s; restoring the database snapshot", exc)
            self._restore()
            return
        irreversible = [m.id for m in job.manifest.migrations if m.id in applied and not m.reversible]
        # nothing recorded: the snapshot (when there is one) also takes back the tracking tables
        # yoyo created in a database it never managed, and any half-run non-transactional step
        if applied and not irreversible:
            try:
                done = database.rollback(db, job.recorded_migrations, ids, job.migrations)
                job.database_undo = f"migrations rolled back: {', '.join(done) or 'none'}"
                return
            except database.MigrationError as exc:
                if not snapshot:
                    raise
                log.warning("%s; restoring the database snapshot instead", exc)
        if snapshot:
            # the app was stopped since the snapshot: nothing written after it can be lost
            self._restore()
        elif applied:
            raise NesopError(f"cannot undo migrations {sorted(applied)}: no rollback and no snapshot")

    def _restore(self) -> None:
        job = self.job
        kept = backup.restore_database(job.ctx, job.backup_dir, keep_current=True)
        log.info("database restored from %s (the replaced one is kept as %s)", job.backup_dir, kept)
        job.database_undo = f"snapshot restored (the replaced database is kept as {kept})"


class InstallUnit:
    """The new ``[app] unit_file`` (and ``socket_file``) as the installed units, while the app is
    stopped; systemd is reloaded before the start. The units they replace are in the backup (see
    :class:`Backup`)."""

    name = "unit"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job = self.job
        # the service first: a new socket starts listening only once the unit it starts is there
        for kind in (unitfile.SERVICE, unitfile.SOCKET):
            f = unitfile.entry(job.manifest, kind)
            if f is None:
                continue
            # the copy dpkg unpacked, not the app tree's (which the app's account could change)
            content = job.payload(f.path).read_bytes()
            if hashlib.sha256(content).hexdigest() != f.sha256:
                raise NesopError(f"payload {f.path}: changed since it was verified; the package is damaged")
            if unitfile.install(job.ctx, content, enable=job.manifest.full, kind=kind):
                job.unit_written = True

    def undo(self) -> None:
        # from the backup, not from memory: after a crash the journal names this step, and the
        # backup holds the unit as it was (or that there was none)
        unitfile.restore(self.job.ctx, self.job.backup_dir, disable=self.job.manifest.full)


class Start:
    """Open the gate and start the new app (a start its socket queued meanwhile goes on now)."""

    name = "start"

    def __init__(self, job: Job) -> None:
        self.job = job
        self.restarts_before: int | None = None

    def apply(self) -> None:
        job = self.job
        before = job.status_before_stop
        if before is not None and not job.unit_written:
            self.restarts_before = before.restarts
            gating.start_app(job.ctx, reset_failed=before.active_state == "failed")
        else:
            # a unit installed or replaced (systemd reloaded): what systemd says of it now
            self.restarts_before = service.status(job.unit).restarts
            gating.start_app(job.ctx)

    def undo(self) -> None:
        # the gate first: a connection must not start the new app again while it is undone
        try:
            gating.hold(self.job.ctx, f"undo of {self.job.manifest.version}")
        finally:
            if service.status(self.job.unit).exists:
                service.stop(self.job.unit)


class HealthGate:
    name = "health"

    def __init__(self, job: Job, start: Start) -> None:
        self.job = job
        self.start = start

    def apply(self) -> None:
        app = self.job.ctx.app
        health.wait_healthy(
            app.service,
            app.health_url,
            app.health_timeout,
            restarts_before=self.start.restarts_before,
        )
        if app.health_url is not None and app.health_pages:
            # the pages a user loads, and what they load: a page whose script was not shipped fails
            report = pages.check(app.health_url, app.health_pages)
            if not report.ok:
                more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
                raise health.HealthError(
                    "; ".join(report.problems[:3]) + more, hint="the pages are in [health] pages"
                )
            log.info("%d page(s) and %d asset(s) answered 2xx", report.pages, report.assets)

    def undo(self) -> None:
        """Nothing: Start.undo stops the new app."""


class Commit:
    """Record the version as applied and say so in the history; undone if either fails."""

    name = "commit"

    def __init__(self, job: Job) -> None:
        self.job = job

    def apply(self) -> None:
        job, ctx = self.job, self.job.ctx
        st = state.load(ctx)
        if st.current != job.manifest.version:
            st.applied.append(
                state.Applied(
                    version=job.manifest.version,
                    previous=job.previous,
                    backup=job.backup_name,
                    time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    migrations=list(job.migrated),
                    kept_config=sorted(set(job.kept_config)),
                )
            )
            state.save(ctx, st)
        history.append(ctx, history_entry(job, "success", job.started))

    def undo(self) -> None:
        st = state.load(self.job.ctx)
        entry = st.entry(self.job.manifest.version)
        if entry is not None and entry is st.applied[-1] and entry.backup == self.job.backup_name:
            st.applied.remove(entry)
            state.save(self.job.ctx, st)


def build_steps(job: Job) -> list[transaction.Step]:
    steps: list[transaction.Step] = [Record(job), Prepare(job), Backup(job)]
    if switches_venv(job):
        steps.append(BuildVenv(job))
    steps.append(Stop(job))
    if job.snapshots_database:
        steps.append(SnapshotDatabase(job))
    steps.append(ApplyFiles(job))
    if switches_venv(job):
        steps.append(SwitchVenv(job))
    if job.manifest.migrations:
        steps.append(Migrate(job))
    if unitfile.writes_units(job.manifest):
        steps.append(InstallUnit(job))
    start = Start(job)
    steps += [start, HealthGate(job, start), Commit(job)]
    return steps


def verify_payload(job: Job) -> None:
    """Every shipped file must be exactly what the manifest says: a damaged package stops here
    (and, where the manifest's signature was checked, an altered one)."""
    for f in job.manifest.files:
        if not f.ships_payload:
            continue
        p = job.payload(f.path)
        if f.link_target is not None:
            if not p.is_symlink() or os.readlink(p) != f.link_target:
                raise RefusedError(
                    f"payload {f.path}: not the symlink the manifest names; the package is damaged"
                )
            continue
        if p.is_symlink() or not p.is_file() or sha256_file(p) != f.sha256:
            raise RefusedError(
                f"payload {f.path}: sha256 does not match the manifest; the package is damaged",
                hint="download or build the package again; nothing was changed",
            )
    if job.manifest.dependencies is not None:
        deps.verify_shipped(job.source, job.manifest.dependencies)
    for m in job.manifest.migrations:
        for name, sha in ((m.file, m.sha256), (m.rollback_file, m.rollback_sha256)):
            if name is None:
                continue
            p = job.source / "migrations" / name
            if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
                raise RefusedError(
                    f"migration {name}: sha256 does not match the manifest; the package is damaged"
                )


def history_entry(job: Job, status: str, started: float, **extra: Any) -> dict[str, Any]:
    by_action: dict[str, list[str]] = {a.value: [] for a in Action}
    for f in job.manifest.files:
        by_action[f.action.value].append(f.path)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": "apply",
        "package": job.manifest.package,
        "version": job.manifest.version,
        "from": job.previous,
        "status": status,
        "files": by_action,
        "migrations": [m.id for m in job.manifest.migrations],
        "backup": job.backup_name,
        "kept_config": sorted(set(job.kept_config)),
        "duration": round(time.monotonic() - started, 3),
        **({"database_undo": job.database_undo} if job.database_undo else {}),
        **extra,
    }
