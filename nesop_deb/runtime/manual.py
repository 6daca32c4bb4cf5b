"""Operator actions outside dpkg: a manual backup, and restoring a named backup.

Restoring goes through the same transaction as an update (journal, reverse undo, health gate):
a safety backup of what the restore will touch is taken first, so a failed restore comes back.
"""

from __future__ import annotations

import time
from pathlib import Path

from nesop_deb.errors import RefusedError
from nesop_deb.paths import link_stays_inside
from nesop_deb.runtime import (
    backup,
    deps,
    gating,
    health,
    history,
    inventory,
    lock,
    safefs,
    state,
    transaction,
    unitfile,
)
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log

SKIP_DIRS = ("backups", "logs")


def app_files(ctx: Context) -> list[str]:
    """Every file and link of the app tree except its backups and logs (what a manual backup
    holds), walked without following a link (:mod:`inventory`); the database goes in as a
    consistent snapshot instead, and a link out of the tree is left as it is."""
    db = ctx.database_path
    inside = db is not None and ctx.app_root in db.parents
    db_dir, _, db_name = (
        db.relative_to(ctx.app_root).as_posix().rpartition("/") if db and inside else ("", "", "")
    )

    # the virtualenv is not the app's files: the backup records where its link points instead
    venv = () if ctx.app.venv is None else (ctx.app.venv, ctx.app.venv + deps.ADOPTED_SUFFIX)

    def skip(rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        return rel in SKIP_DIRS or rel in venv or (inside and parent == db_dir and name.startswith(db_name))

    with safefs.Tree.open(ctx.app_root) as app:
        found = inventory.scan(app, skip, digest=lambda _rel: False)
        if found.refused:
            raise RefusedError(
                f"{ctx.app_root}/{found.refused[0]}",
                hint="fix that entry and back up again; nothing was written",
            )
        files = []
        for rel, entry in sorted(found.entries.items()):
            if entry.kind == inventory.LINK and not link_stays_inside(rel, target := app.readlink(rel)):
                # what it points at is not the app's: a backup never restores a link out of the tree
                log.warning("%s -> %s leaves the app's tree: not backed up", rel, target)
            elif entry.kind in (inventory.FILE, inventory.LINK):
                files.append(rel)
    return files


def manual_backup(ctx: Context, name: str | None) -> Path:
    runlog.setup(ctx.log_file)
    st = state.load(ctx)
    with lock.held(ctx.state_dir / "lock", "manual backup"):
        bname = name or backup.unused_name(ctx, "manual", st.current)
        with runlog.step(f"backup {ctx.app.name} as {bname}"):
            meta: dict[str, object] = {"kind": "manual", "version": st.current}
            if ctx.app.venv is not None:
                meta["venv"] = deps.record(ctx)  # None: recorded as nothing to put back
            d = backup.create_files(ctx, bname, app_files(ctx), meta)
            backup.add_database(ctx, d)
        return d


class _SafetyBackup:
    name = "safety-backup"

    def __init__(self, ctx: Context, target: Path, safety: str) -> None:
        self.ctx, self.target, self.safety = ctx, target, safety

    def apply(self) -> None:
        data = backup.read_manifest(self.ctx, self.target)
        touched = [f["path"] for f in data["files"]] + list(data["absent"])
        # a backup holding the unit an update replaced puts it back: keep the one installed now
        unit = unitfile.copy_for_backup(self.ctx) if data.get("unit") is not None else None
        socket = (
            unitfile.copy_for_backup(self.ctx, unitfile.SOCKET) if data.get("socket") is not None else None
        )
        meta: dict[str, object] = {"kind": "pre_rollback", "version": None}
        if self.ctx.app.venv is not None:
            meta["venv"] = deps.record(self.ctx)
        backup.create_files(self.ctx, self.safety, touched, meta, unit=unit, socket=socket)
        backup.add_database(self.ctx, self.ctx.backups_dir / self.safety)

    def undo(self) -> None:
        """The safety backup stays."""


class _Stop:
    name = "stop"
    starts_app = True  # its undo starts the app: only after every other undo succeeded

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def apply(self) -> None:
        gating.stop_app(self.ctx, "restore of a backup")

    def undo(self) -> None:
        gating.start_app(self.ctx)


class _Restore:
    name = "restore"

    def __init__(self, ctx: Context, target: Path, safety: str) -> None:
        self.ctx, self.target, self.safety = ctx, target, safety

    def apply(self) -> None:
        backup.restore_files(self.ctx, self.target)
        kept = backup.restore_database(self.ctx, self.target, keep_current=True)
        if kept is not None:
            log.info("database restored; the replaced one is kept as %s", kept)
        unitfile.restore(self.ctx, self.target)
        deps.restore_from(self.ctx, self.target)

    def undo(self) -> None:
        safety = self.ctx.backups_dir / self.safety
        backup.restore_files(self.ctx, safety)
        backup.restore_database(self.ctx, safety, keep_current=False)
        unitfile.restore(self.ctx, safety)
        deps.restore_from(self.ctx, safety)


class _Start:
    name = "start"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def apply(self) -> None:
        gating.start_app(self.ctx)
        health.wait_healthy(self.ctx.app.service, self.ctx.app.health_url, self.ctx.app.health_timeout)

    def undo(self) -> None:
        gating.stop_app(self.ctx, "undo of the restore of a backup")


def restore_backup(ctx: Context, name: str) -> None:
    runlog.setup(ctx.log_file)
    target = backup.find(ctx, name)
    started = time.monotonic()
    with lock.held(ctx.state_dir / "lock", f"rollback {name}"):
        st = state.load(ctx)
        safety = backup.unused_name(ctx, "pre_rollback", st.current)
        journal: dict[str, object] = {
            "kind": "restore",
            "version": st.current,
            "backup": name,
            "safety": safety,
        }
        steps: list[transaction.Step] = [
            _SafetyBackup(ctx, target.path, safety),
            _Stop(ctx),
            _Restore(ctx, target.path, safety),
            _Start(ctx),
        ]
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": "rollback",
            "package": ctx.package,
            "backup": name,
            "version": target.version,
            "from": st.current,
            "safety_backup": safety,
        }
        try:
            with runlog.step(f"roll {ctx.app.name} back to backup {name}"):
                transaction.run(ctx, journal, steps)
        except transaction.TransactionFailed as exc:
            history.append(
                ctx,
                {**entry, "status": "failed", "failed_step": exc.step, "reason": str(exc.cause),
                 "duration": round(time.monotonic() - started, 3)},
            )  # fmt: skip
            if not exc.undo_errors:
                state.clear_journal(ctx)
            raise
        # a pre_update backup is what the app was before its version: those versions are undone
        for_version = target.data.get("for_version")
        if for_version is not None and st.entry(str(for_version)) is not None:
            idx = next(i for i, a in enumerate(st.applied) if a.version == for_version)
            st.applied = st.applied[:idx]
            state.save(ctx, st)
        history.append(ctx, {**entry, "status": "success", "duration": round(time.monotonic() - started, 3)})
        state.clear_journal(ctx)


def recover(ctx: Context) -> str:
    from nesop_deb.runtime import operations

    runlog.setup(ctx.log_file)
    with lock.held(ctx.state_dir / "lock", "recover"):
        done = operations.recover(ctx)
        operations.ensure_running(ctx)
        return done or "nothing to recover"
