"""``<app root>/<venv>``: the link to the active virtualenv, switched by one rename.

What the link was before an update is recorded in the update's backup (:func:`record`), so an
undo, a recovery after a crash and a rollback all put it back from there (:func:`put_back`).
A real directory there (a virtualenv made by hand before the app came under nesop-deb) is
adopted on the first switch: exchanged with the new link in one ``renameat2(RENAME_EXCHANGE)``
and kept beside it as ``<venv>.adopted``, the target a rollback puts back.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.runtime import safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log

ADOPTED_SUFFIX = ".adopted"
NEW_SUFFIX = ".nesop-new"

Kind = Literal["link", "dir", "absent"]


@dataclass(frozen=True)
class Live:
    kind: Kind
    target: str | None = None  # a link's target, as read

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target}


def _rel(ctx: Context) -> str:
    if ctx.app.venv is None:
        raise NesopError(f"{ctx.app.name} has no [dependencies] venv")
    return ctx.app.venv


def read(ctx: Context) -> Live:
    """What ``<venv>`` is now; a file or other odd entry is refused."""
    rel = _rel(ctx)
    with safefs.Tree.open(ctx.app_root) as app:
        st = app.lstat(rel)
        if st is None:
            return Live("absent")
        if stat.S_ISLNK(st.st_mode):
            return Live("link", app.readlink(rel))
        if stat.S_ISDIR(st.st_mode):
            return Live("dir")
    raise RefusedError(
        f"{ctx.app_path(rel)} is neither a virtualenv directory nor a link to one",
        hint=f"remove it; the update makes {rel} a link to the app's virtualenv",
    )


def check_link(ctx: Context) -> None:
    """The preflight: ``<venv>`` can be switched (and a real directory adopted), and the names
    the switch uses beside it hold nothing but what an interrupted switch of ours left."""
    live = read(ctx)
    rel = _rel(ctx)
    new, adopted = rel + NEW_SUFFIX, rel + ADOPTED_SUFFIX
    with safefs.Tree.open(ctx.app_root) as app:
        if live.kind == "dir" and app.lstat(adopted) is not None and not app.is_link(adopted):
            raise RefusedError(
                f"{app.path / rel} is a directory, and {app.path / adopted} (where it would be kept)"
                " exists already",
                hint="remove the one that is not the app's virtualenv",
            )
        ours = app.is_link(new) or (app.is_dir(new) and app.lstat(adopted) is None)
        if app.lstat(new) is not None and not ours:
            raise RefusedError(
                f"{app.path / new} is in the way of the virtualenv switch",
                hint="remove it (the update makes it, as a link, for an instant)",
            )


def record(ctx: Context) -> dict[str, Any] | None:
    """What a backup keeps of the link; None when it is something no switch could put back."""
    try:
        return read(ctx).to_record()
    except RefusedError as exc:
        log.warning("%s: not recorded in the backup", exc.message)
        return None


def switch(ctx: Context, target: str) -> None:
    """Point ``<venv>`` at ``target`` in one rename (adopting a real directory first)."""
    rel = _rel(ctx)
    new = rel + NEW_SUFFIX
    with safefs.Tree.open(ctx.app_root) as app:
        if app.is_link(rel + ADOPTED_SUFFIX):
            app.unlink(rel + ADOPTED_SUFFIX)  # our link, left by an interrupted put_back
        if app.is_dir(new) and app.lstat(rel + ADOPTED_SUFFIX) is None:
            # an adopted directory an interrupted switch left under the temporary name
            app.replace(new, rel + ADOPTED_SUFFIX)
        app.symlink_new(new, target)
        if app.is_dir(rel):
            app.exchange(new, rel)  # rel is the link now; new holds the directory
            app.replace(new, rel + ADOPTED_SUFFIX)
            log.info("%s was a directory: kept as %s%s", app.path / rel, rel, ADOPTED_SUFFIX)
        else:
            app.replace(new, rel)


def put_back(ctx: Context, recorded: dict[str, Any]) -> str | None:
    """Make ``<venv>`` what ``recorded`` says it was (idempotent); what was done, or None."""
    rel = _rel(ctx)
    new, adopted = rel + NEW_SUFFIX, rel + ADOPTED_SUFFIX
    kind, target = recorded.get("kind"), recorded.get("target")
    with safefs.Tree.open(ctx.app_root) as app:
        present, is_link = app.lstat(rel) is not None, app.is_link(rel)
        if kind == "link" and isinstance(target, str):
            if is_link and app.readlink(rel) == target:
                return None
            if present and not is_link:
                raise NesopError(f"{app.path / rel} is not a link: cannot point it back at {target}")
            app.symlink_new(new, target)
            app.replace(new, rel)
            return f"{rel} -> {target}"
        if kind == "absent":
            if is_link:
                app.unlink(rel)
                return f"{rel} removed"
            return None
        if kind == "dir":
            if app.is_dir(rel):
                if app.is_link(adopted):
                    app.unlink(adopted)  # the link an interrupted put_back left there
                return None
            kept = adopted if app.is_dir(adopted) else new if app.is_dir(new) else None
            if kept is None:
                raise NesopError(f"the virtualenv directory {app.path / adopted} is gone: cannot put it back")
            if is_link:
                app.exchange(kept, rel)
                app.unlink(kept)
            else:
                app.replace(kept, rel)
            return f"{rel} is the directory it was"
        raise NesopError(f"unknown virtualenv record {recorded!r}")


def restore_from(ctx: Context, backup_dir: Path) -> str | None:
    """Put the link back as the backup in ``backup_dir`` recorded it (when it recorded it)."""
    from nesop_deb.runtime import backup

    recorded = backup.read_manifest(ctx, backup_dir).get("venv")
    if not isinstance(recorded, dict) or ctx.app.venv is None:
        return None
    done = put_back(ctx, recorded)
    if done:
        log.info("virtualenv link put back: %s", done)
    return done
