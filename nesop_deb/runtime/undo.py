"""prerm upgrade OLDER: the newer package undoes every applied version above OLDER, newest first.

Undo is data: each version's backup (its pre-images) and its recorded migrations with their
rollbacks live on the server, so this code need not know what later versions did.
"""

from __future__ import annotations

import time

from nesop_deb import versions
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import (
    backup,
    database,
    deps,
    gating,
    health,
    history,
    lock,
    repo,
    state,
    unitfile,
)
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log


def _irreversible(manifest: Manifest, entry: state.Applied) -> list[str]:
    """The migrations of ``entry`` that have no rollback: undone by restoring its snapshot."""
    by_id = {m.id: m for m in manifest.migrations}
    return [i for i in entry.migrations if not by_id.get(i) or not by_id[i].reversible]


def _read_migrations(ctx: Context, todo: list[state.Applied]) -> dict[str, database.Migrations]:
    """The rollbacks each version will run, parsed while the app still serves (yoyo imported):
    the outage pays only for running them, and one that cannot be parsed fails the rollback
    before the stop."""
    parsed: dict[str, database.Migrations] = {}
    if ctx.app.database is None:
        return parsed
    for entry in todo:
        if entry.migrations and not _irreversible(state.stored_manifest(ctx, entry.version), entry):
            directory = state.recorded_migrations(ctx, entry.version)
            parsed[entry.version] = database.read(directory, entry.migrations)
    return parsed


def _undo_one(ctx: Context, entry: state.Applied, migrations: database.Migrations = None) -> str:
    """Put the app back to what it was before ``entry`` was applied; the service is stopped.

    ``migrations``: the version's migrations as :func:`_read_migrations` parsed them."""
    manifest = state.stored_manifest(ctx, entry.version)
    if entry.backup is None or not backup.exists(ctx, entry.backup):
        raise NesopError(f"the backup taken before {entry.version} ({entry.backup}) is missing")
    bdir = ctx.backups_dir / entry.backup
    how = "files restored"
    db = ctx.database
    if entry.migrations and db is not None:
        irreversible = _irreversible(manifest, entry)
        if irreversible:
            kept = backup.restore_database(ctx, bdir, keep_current=True)
            if kept is None:
                raise NesopError(
                    f"{entry.version}: migrations {irreversible} have no rollback and no snapshot"
                )
            how += f"; database snapshot restored (the replaced database is kept as {kept})"
        else:
            directory = state.recorded_migrations(ctx, entry.version)
            done = database.rollback(db, directory, entry.migrations, migrations)
            how += f"; migrations rolled back: {', '.join(done) or 'none were applied'}"
    backup.restore_files(ctx, bdir)
    relinked = deps.restore_from(ctx, bdir)
    if relinked:
        how += f"; virtualenv link put back ({relinked})"
    # the unit the version replaced (its backup holds it), before the older version starts
    if unitfile.restore(ctx, bdir, disable=manifest.full):
        how += f"; {unitfile.path(ctx)} put back"
    return how


def undo_above(ctx: Context, target: str) -> None:
    """Undo every applied version above ``target`` (a downgrade to it)."""
    runlog.setup(ctx.log_file if ctx.app_root.is_dir() else None)
    with lock.held(ctx.state_dir / "lock", f"roll back to {target}", wait=60):
        journal = state.read_journal(ctx)
        if journal is not None and journal.get("kind") == "undo" and journal.get("target") == target:
            undo_locked(ctx, target, resume_from=str(journal.get("version")))  # a rerun after a crash
        else:
            undo_locked(ctx, target)


def undo_locked(ctx: Context, target: str, *, resume_from: str | None = None) -> None:
    """The undo itself (the caller holds the lock). ``resume_from``: finish an interrupted undo
    that started at that version; every step is idempotent, so it simply runs again."""
    st = state.load(ctx)
    todo = [a for a in reversed(st.applied) if versions.compare(a.version, target) > 0]
    if not todo and resume_from is None:
        return
    known = {a.version for a in st.applied} | {a.previous for a in st.applied if a.previous}
    if target not in known and resume_from is None:
        raise RefusedError(
            f"cannot roll back to {target}: this server never ran it (applied: "
            f"{', '.join(a.version for a in st.applied)})",
        )
    started = time.monotonic()
    source = resume_from or st.current
    journal = {"kind": "undo", "version": source, "target": target, "started": time.time()}
    state.write_journal(ctx, journal)
    undone: list[str] = []
    notes: list[str] = []
    status, reason = "success", None
    try:
        with runlog.step(f"roll back {ctx.app.name} from {source} to {target}"):
            parsed = _read_migrations(ctx, todo)
            with runlog.step("stop"):
                # the gate stays closed until the start: a crash leaves the app gated until
                # `nesop-update recover` finishes the rollback
                gating.stop_app(ctx, f"rollback to {target}")
            for entry in todo:
                with runlog.step(f"undo {entry.version}"):
                    notes.append(f"{entry.version}: {_undo_one(ctx, entry, parsed.get(entry.version))}")
                st.applied.remove(entry)
                state.save(ctx, st)
                undone.append(entry.version)
            with runlog.step("start"):
                gating.start_app(ctx)
            with runlog.step("health"):
                health.wait_healthy(ctx.app.service, ctx.app.health_url, ctx.app.health_timeout)
    except Exception as exc:
        status, reason = "failed", str(exc)
        raise
    finally:
        history.note(
            ctx,
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "action": "rollback",
                "package": ctx.package,
                "version": target,
                "from": source,
                "status": status,
                "undone": undone,
                "notes": notes,
                "reason": reason,
                "duration": round(time.monotonic() - started, 3),
            },
        )
        if status == "success":
            state.clear_journal(ctx)
    repo.hold(ctx, target)
    log.info("%s is back at %s", ctx.app.name, target)
