"""Read-only checks shared by the preinst preflight and the postinst before it changes anything."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from nesop_deb import __version__, versions
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Action, FileEntry, Manifest
from nesop_deb.runtime import database, deps, safefs, state, unitfile
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import free_bytes
from nesop_deb.runtime.log import log

MARGIN = 16 << 20


@dataclass(frozen=True)
class Drift:
    path: str
    expected: str
    found: str


def runtime_version(manifest: Manifest) -> None:
    if versions.compare(__version__, manifest.builder_version) < 0:
        raise RefusedError(
            f"{manifest.package} {manifest.version} was built by nesop-deb {manifest.builder_version}, "
            f"but this server runs nesop-deb {__version__}",
            hint=f"upgrade nesop-deb to {manifest.builder_version} or later first",
        )


def same_app(ctx: Context, st: state.State, manifest: Manifest) -> None:
    """An update must target the app that is installed: same root, same service."""
    if st.current is None:
        return
    try:
        installed = state.stored_manifest(ctx, st.current).config["app"]
    except state.StateError:
        return
    new = manifest.config["app"]
    for key in ("root", "service"):
        if installed.get(key) != new.get(key):
            raise RefusedError(
                f"{manifest.package} {manifest.version} targets app {key} {new.get(key)!r}, "
                f"but {st.current} is installed with {installed.get(key)!r}",
                hint="build the update from the same nesop-deb.toml as the installed version",
            )


def base_version(st: state.State, manifest: Manifest) -> None:
    current = st.current
    if manifest.full or current == manifest.version:
        return
    if current is None:
        return  # adoption of a hand-deployed server: the drift check decides
    if current not in manifest.bases:
        need = ", ".join(manifest.bases) or "none"
        raise RefusedError(
            f"update {manifest.version} needs base {need} but {current} is installed",
            hint=f"build it with --since v{current}, or install {need} first",
        )


def drift(ctx: Context, manifest: Manifest, st: state.State | None = None) -> list[Drift]:
    """Live files that are neither the update's pre-image nor its result (config files excepted).

    A file a partial update left behind (``state.left_behind`` of the live version) is not drift
    either at the content that update left it at: the next update, built from the release the
    server claims, expects the release's content there."""
    found: list[Drift] = []
    config = set(manifest.config_files)
    if not ctx.app_root.is_dir():
        return found  # a first install: nothing is there to differ
    left_behind = state.left_behind(ctx, (st or state.load(ctx)).current)
    with safefs.Tree.open(ctx.app_root) as app:
        for f in manifest.files:
            found += _drift_of(app, f, config, left_behind)
    return found


def _drift_of(
    app: safefs.Tree, f: FileEntry, config: set[str], left_behind: Mapping[str, str | None]
) -> list[Drift]:
    checks: list[tuple[str, set[str | None]]] = []
    if f.action is Action.ADD:
        checks.append((f.path, {None, f.sha256}))
    elif f.action is Action.MODIFY:
        checks.append((f.path, {f.preimage_sha256, f.sha256}))
    elif f.action is Action.DELETE:
        checks.append((f.path, {f.preimage_sha256, None}))
    elif f.renamed_from is not None:
        checks.append((f.renamed_from, {f.preimage_sha256, None}))
        checks.append((f.path, {None, f.sha256}))
    found: list[Drift] = []
    for path, allowed in checks:
        if path in config:
            continue
        if path in left_behind:
            allowed.add(left_behind[path])
        live = app.digest(path)
        if live not in allowed:
            expected = " or ".join(sorted("absent" if a is None else a[:12] for a in allowed))
            found.append(Drift(path, expected, "absent" if live is None else live[:12]))
    return found


def no_drift(ctx: Context, manifest: Manifest, st: state.State | None = None) -> None:
    found = drift(ctx, manifest, st)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RefusedError(
            f"{ctx.app_path(first.path)} was changed on this server (sha256 {first.found}, "
            f"expected {first.expected}){more}",
            hint="restore the file or rebuild the update from what the server runs; nothing was changed",
        )


def root_records(ctx: Context) -> None:
    """Root's backups and logs must be root's (or not exist yet); a code tree the app's account
    can write to is worth a warning: that account could change the code root's update handles."""
    for name in ("backups", "logs"):
        tree = safefs.records(ctx.app_root, name, create=False)
        if tree is not None:
            tree.close()
    found = writable_code(ctx)
    if found:
        log.warning("%s", writable_code_problem(ctx, found))


def database_files(ctx: Context) -> None:
    """The database and the files SQLite keeps beside it must be plain files: a link there (which
    the app's account can plant in its own directory) would break every connection after the stop."""
    db = ctx.database_path
    if db is None:
        return
    for name in ("", *database.SIDECARS):
        path = db.with_name(db.name + name)
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise safefs.LinkRefused(path)
        if not stat.S_ISREG(st.st_mode):
            raise safefs.LinkRefused(path, "not a regular file")


def writable_code(ctx: Context) -> list[str]:
    """Directories of the app's code (not its [app] writable ones, backups or logs) that the app's
    account can write to: it could plant links there and change what the service runs."""
    from nesop_deb.runtime import accounts

    owner = accounts.app_owner(ctx)
    if owner is None or owner[0] == 0 or not ctx.app_root.is_dir():
        return []
    uid, gid = owner
    found: list[str] = []
    for dirpath, dirs, _files in os.walk(ctx.app_root):
        rel = os.path.relpath(dirpath, ctx.app_root)
        rel = "" if rel == "." else rel
        if rel in ("backups", "logs") or (rel and ctx.app.is_writable(rel)):
            dirs[:] = []
            continue
        try:
            st = os.lstat(dirpath)
        except FileNotFoundError:
            continue  # the app's account removed it since its parent was listed: nothing to check
        if st.st_uid == uid or st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid == gid):
            found.append(rel or ".")
    return found


def writable_code_problem(ctx: Context, found: list[str]) -> str:
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    data = " ".join(f"{ctx.app_root}/{w}" for w in ctx.app.writable)
    fix = f"chown -R root:root {ctx.app_root} && chmod -R go-w {ctx.app_root}"
    if data:
        fix += f" && chown -R {ctx.app.user}:{ctx.app.group} {data}"
    where = str(ctx.app_root) if found[0] == "." else f"{ctx.app_root}/{found[0]}"
    return (
        f"{where}{more}: the app's account ({ctx.app.user}) can write to its code, so it could change"
        f" what root updates and the service runs; fix: {fix}"
    )


def app_accounts(ctx: Context) -> None:
    """The app's user and group must exist (only a --full package creates them)."""
    from nesop_deb.runtime import accounts

    for kind, name, found in (
        ("user", ctx.app.user, accounts.uid(ctx, ctx.app.user)),
        ("group", ctx.app.group, accounts.gid(ctx, ctx.app.group)),
    ):
        if found is None:
            raise RefusedError(
                f"the app's {kind} {name!r} does not exist on this server",
                hint=f"create it (the app runs as {ctx.app.user}:{ctx.app.group}) or use a --full package",
            )


def disk_space(ctx: Context, manifest: Manifest) -> None:
    """The new files (staged, then backed up when replaced), the database snapshot, and the space
    set aside for an undo must fit, with a margin."""
    from nesop_deb.runtime import backup

    need = sum(f.size for f in manifest.files) * 2 + MARGIN
    db = ctx.database_path
    if manifest.migrations and db is not None and db.exists():
        # one snapshot at a time (a copy taken before the stop is removed before copying again);
        # it holds what the WAL holds too, so the WAL's size counts as well
        # (the running app may remove its WAL at any moment: a missing one counts nothing)
        for part in (db, db.with_name(db.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                need += part.lstat().st_size
    touched = [f.path for f in manifest.files] + [f.renamed_from for f in manifest.files if f.renamed_from]
    need += backup.undo_space(ctx, touched, with_db=bool(manifest.migrations))
    free = free_bytes(ctx.app_root)
    if free < need:
        raise RefusedError(
            f"{ctx.app_root}: {free >> 20} MiB free, the update needs {need >> 20} MiB",
            hint="free some space (old backups: nesop-update list-backups), then try again",
        )


def migration_checksums(ctx: Context, st: state.State, manifest: Manifest) -> None:
    """A migration already applied under the same id must be the same migration."""
    known: dict[str, str] = {}
    for applied in st.applied:
        try:
            for m in state.stored_manifest(ctx, applied.version).migrations:
                known[m.id] = m.sha256
        except state.StateError:
            continue
    for m in manifest.migrations:
        if m.id in known and known[m.id] != m.sha256:
            raise RefusedError(
                f"migration {m.id} differs from the one already applied on this server",
                hint="never edit a released migration: add a new one",
            )


def preflight(ctx: Context, manifest: Manifest, *, check_drift: bool = True) -> state.State:
    """Every read-only check; raises RefusedError on the first that fails."""
    runtime_version(manifest)
    st = state.load(ctx)
    same_app(ctx, st, manifest)
    base_version(st, manifest)
    if st.current != manifest.version:
        if not manifest.full and not ctx.app_root.is_dir():
            raise RefusedError(
                f"{ctx.app_root} does not exist, and {manifest.version} is not a full install",
                hint="install a package built with --full first",
            )
        if not manifest.full:
            app_accounts(ctx)
        if ctx.app_root.is_dir():
            root_records(ctx)
        if check_drift:
            no_drift(ctx, manifest, st)
            unitfile.check(ctx, manifest, st)
        if manifest.migrations:
            database_files(ctx)
        if ctx.app_root.is_dir():
            disk_space(ctx, manifest)
        migration_checksums(ctx, st, manifest)
        dependencies(ctx, manifest)
    return st


def dependencies(ctx: Context, manifest: Manifest) -> None:
    """An update that switches the virtualenv: the right server, every wheel at hand, a link
    that can be switched."""
    if manifest.dependencies is None:
        return
    deps.check_target(manifest)
    deps.check_available(ctx, manifest)
    live = state.load(ctx).current
    if live is not None:
        with contextlib.suppress(state.StateError):
            before = state.stored_manifest(ctx, live).config.get("dependencies", {}).get("venv")
            if before is not None and before != ctx.app.venv:
                raise RefusedError(
                    f"{manifest.package} {manifest.version} moves the virtualenv link from {before!r} to"
                    f" {ctx.app.venv!r}: a rollback could not find the old one",
                    hint=f'keep [dependencies] venv = "{before}"',
                )
    if ctx.app.venv is not None and ctx.app_root.is_dir():
        deps.check_link(ctx)
