"""Backup retention: keep ``[backups].keep`` backups, never the ones rollback still needs.

Protected, whatever their age: the backups taken before the live version and before the one
under it (what `apt install <package>=<previous>` and a second rollback step need), and the
newest manual backup. The oldest of the rest go first.
"""

from __future__ import annotations

from nesop_deb.runtime import backup, safefs, state
from nesop_deb.runtime.context import Context


def protected(ctx: Context) -> set[str]:
    st = state.load(ctx)
    keep = {a.backup for a in st.applied[-2:] if a.backup}
    manual = [b for b in backup.list_backups(ctx) if b.data.get("kind") == "manual"]
    if manual:
        keep.add(manual[-1].name)
    return keep


def prune(ctx: Context) -> list[str]:
    """Delete the oldest unprotected backups beyond ``keep``; return their names. Space an undo
    reserved and could not give back (no transaction is in flight now) goes too."""
    if state.read_journal(ctx) is None:
        tree = safefs.records(ctx.app_root, "backups", create=False)
        if tree is not None:
            with tree:
                for stale in tree.listdir():
                    if stale.startswith(".reserve-"):
                        tree.unlink(stale)
    backups = backup.list_backups(ctx)
    excess = len(backups) - ctx.app.keep_backups
    if excess <= 0:
        return []
    safe = protected(ctx)
    removed = []
    for b in backups:
        if excess <= 0:
            break
        if b.name in safe:
            continue
        with backup.open_backups(ctx) as tree:
            tree.rmtree(b.name)
        state.drop_seal(ctx, b.name)
        removed.append(b.name)
        excess -= 1
    return removed
