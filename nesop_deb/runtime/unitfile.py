"""The app's installed systemd unit, ``/etc/systemd/system/<service>``.

An update whose manifest writes ``[app] unit_file`` (adds, modifies or renames it; a ``--full``
package adds every file) installs that file's new content as the unit, from the payload dpkg
unpacked (root's; never the app tree's copy, which the app's account could change), while the app
is stopped, and reloads systemd before the start. The unit it replaces goes into the update's
backup (root's, :func:`copy_for_backup`), so that an undo, the recovery after a crash and a
rollback put it back from there (:func:`restore`): none of them needs anything a crash loses.

A unit that is neither the one the base release shipped nor the new one was changed on this
server: it is never overwritten, the preflight refuses (:func:`check`) and local settings belong
in a drop-in. An update that deletes the unit file leaves the installed unit as it is.

``[app] socket_file`` is the app's socket unit, installed as ``<service stem>.socket`` the same
way (:data:`SOCKET`; its backup record is ``socket``). A socket newly installed is enabled and
started at once, while the app is stopped (the port an app bound itself is free then), so that
connections queue from then on; a socket replaced is restarted; the undo disables and stops one
it installed, or puts back and restarts the one it replaced, before the old app starts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nesop_deb import systemdunit
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Action, FileEntry, Manifest
from nesop_deb.runtime import backup, service, state
from nesop_deb.runtime.context import AppSettings, Context
from nesop_deb.runtime.fsutil import fsync_dir, write_atomic
from nesop_deb.runtime.log import log

UNIT_DIR = "/etc/systemd/system"
SERVICE = "unit"  # the app's service unit ([app] unit_file); also its backup record's name
SOCKET = "socket"  # the app's socket unit ([app] socket_file)
KINDS = (SERVICE, SOCKET)
_SETTING = {SERVICE: "unit_file", SOCKET: "socket_file"}


def name_of(ctx: Context, kind: str = SERVICE) -> str:
    """The installed name of the app's unit of ``kind``."""
    return ctx.app.service if kind == SERVICE else ctx.app.socket


@dataclass(frozen=True)
class Installed:
    content: bytes
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def path(ctx: Context, name: str | None = None) -> Path:
    """Where the unit ``name`` (the app's service by default) is installed."""
    return ctx.host(f"{UNIT_DIR}/{name or ctx.app.service}")


def read(ctx: Context, name: str | None = None) -> Installed | None:
    """The installed unit (None: no file there). A link there (a masked unit, or one
    ``systemctl link`` made) or anything but a regular file is refused: the runtime replaces and
    puts back only a unit file it can copy."""
    p = path(ctx, name)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise RefusedError(
            f"{p} is a symlink (a masked unit, or one made by `systemctl link`): it is not replaced",
            hint=f"unmask it, or replace the link with a copy of the unit; local settings belong in a"
            f" drop-in (`systemctl edit {p.name}`)",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedError(f"{p} is not a regular file", hint="put the unit file there")
        return Installed(fh.read(), stat.S_IMODE(st.st_mode) & 0o755)


def unit_file_of(manifest: Manifest, kind: str = SERVICE) -> str | None:
    """``[app] unit_file`` (or ``socket_file``) as the manifest's own settings name it (not the
    caller's: a recovery rebuilds a transaction's steps from its manifest alone)."""
    settings = AppSettings.from_manifest_config(manifest.config)
    return settings.unit_file if kind == SERVICE else settings.socket_file


def writes_units(manifest: Manifest) -> bool:
    """Whether the update installs a new service or socket unit (the ``unit`` step runs)."""
    return any(entry(manifest, kind) is not None for kind in KINDS)


def entry(manifest: Manifest, kind: str = SERVICE) -> FileEntry | None:
    """The manifest's entry that writes ``[app] unit_file`` (or ``socket_file``), if it writes it."""
    rel = unit_file_of(manifest, kind)
    if rel is None:
        return None
    return next((f for f in manifest.files if f.path == rel and f.ships_payload), None)


def deleted(manifest: Manifest, names: set[str]) -> FileEntry | None:
    """The manifest's entry deleting one of ``names`` (unit files a release named), if any."""
    return next((f for f in manifest.files if f.action is Action.DELETE and f.path in names), None)


def check(ctx: Context, manifest: Manifest, st: state.State) -> None:
    """Preflight: an update that installs a new unit must find the installed one as a release
    left it (the base release's, a partial update's, the new one) or none at all; one changed
    on this server is not overwritten."""
    for kind in KINDS:
        _check(ctx, manifest, st, kind)


def _check(ctx: Context, manifest: Manifest, st: state.State, kind: str) -> None:
    f = entry(manifest, kind)
    if f is None:
        return
    name = name_of(ctx, kind)
    p = path(ctx, name)
    setting = _SETTING[kind]
    if f.link_target is not None:
        raise RefusedError(
            f"[app] {setting} {f.path} is a symlink in {manifest.version}: {p} cannot be installed from it",
            hint="commit the unit file itself there and build again; nothing was changed",
        )
    installed = read(ctx, name)
    if installed is None:
        return  # the update brings it
    left = state.left_behind(ctx, st.current)
    allowed = {f.sha256, f.preimage_sha256} | {left[r] for r in (f.path, f.renamed_from) if r in left}
    if installed.sha256 in allowed:
        return
    base = f.renamed_from or f.path
    if f.preimage_sha256 is not None:
        live = st.current or "the live release"
        what = f"neither the unit {live} ships ({base}) nor that of {manifest.version}"
        # not a copy from the app tree: the app's account can change that file before root copies it
        source = (
            f"git show v{st.current}:{base} on the dev machine" if st.current else f"{base} of that release"
        )
        fix = (
            f"put back the unit {live} ships ({source}), checking that its sha256 is"
            f" {f.preimage_sha256}, then systemctl daemon-reload"
        )
    else:
        what = f"not the unit {manifest.version} ships, and the live release ships none at {f.path}"
        fix = f"remove {p} (systemctl daemon-reload), as {manifest.version} installs its own"
    raise RefusedError(
        f"{p} was changed on this server (sha256 {installed.sha256[:12]}): it is {what}, and the"
        f" update would replace it",
        hint=f"move local settings to a drop-in (`systemctl edit {name}`), then {fix}; nothing was changed",
    )


def copy_for_backup(ctx: Context, kind: str = SERVICE) -> backup.UnitCopy:
    """The installed unit of ``kind`` as the backup keeps it (or that there is none)."""
    name = name_of(ctx, kind)
    installed = read(ctx, name)
    if installed is None:
        return backup.UnitCopy(name, None)
    return backup.UnitCopy(name, installed.content, installed.mode)


def install(ctx: Context, content: bytes, *, enable: bool, kind: str = SERVICE) -> bool:
    """Make ``content`` the installed unit of ``kind`` and reload systemd; ``enable``: enable a
    service that was not installed (a first install; a new socket is always enabled and started).
    False when it already was exactly that."""
    name = name_of(ctx, kind)
    before = read(ctx, name)
    if before is not None and before.content == content:
        return False
    p = path(ctx, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, content, 0o644)
    service.daemon_reload()
    if kind == SOCKET:
        # the app is stopped: the port it may have bound itself is free, and from now on the
        # socket holds the connections for the app that starts next
        if before is None:
            service.enable(name)
            service.start_unit(name)
        elif _listening_changed(before.content, content):
            # a restart closes the listener: the connections queued now are reset
            service.restart(name)
    elif enable and before is None:
        service.enable(name)
    log.info("%s %s and reloaded systemd", "installed" if before is None else "replaced", p)
    return True


def _listening_changed(old: bytes, new: bytes) -> bool:
    """Whether the socket's ``[Socket]`` settings differ: only then must it be restarted (which
    resets the connections it holds); a comment or ``[Install]`` changes nothing it does."""

    def settings(content: bytes) -> list[tuple[str, str]]:
        return systemdunit.section(content.decode("utf-8", "replace"), "Socket")

    return settings(old) != settings(new)


def restore(ctx: Context, backup_dir: Path, *, disable: bool = False) -> bool:
    """Put back every unit the backup holds (the service's, the socket's) and reload systemd;
    remove an installed one if the backup says there was none (``disable``: disable the service
    first, as a first install enabled it; a socket is always disabled and stopped). Idempotent;
    False when the backup holds no unit or every one already is in place."""
    if not backup.exists(ctx, backup_dir.name):  # it was taken before the unit could change
        raise backup.BackupError(f"backup {backup_dir.name} is missing: {path(ctx)} could not be put back")
    changed = False
    # the service first: a socket stopped while the new service (which may Require= it) is still
    # loaded would take the service's pending start with it
    for kind in (SERVICE, SOCKET):
        old = backup.read_unit(ctx, backup_dir, kind)
        if old is not None:
            changed = (
                _restore_one(ctx, backup_dir, old, disable=disable or kind == SOCKET, kind=kind) or changed
            )
    return changed


def _restore_one(ctx: Context, backup_dir: Path, old: backup.UnitCopy, *, disable: bool, kind: str) -> bool:
    p = path(ctx, old.name)
    now = read(ctx, old.name)
    if old.content is None:
        if now is None:
            return False
        if disable:
            # while its file is there: it says what to disable; a socket stops listening too
            service.disable(old.name, now=kind == SOCKET)
        p.unlink()
        fsync_dir(p.parent)
        service.daemon_reload()
        log.info("removed %s, which the update had installed, and reloaded systemd", p)
        return True
    if now is not None and (now.content, now.mode) == (old.content, old.mode):
        return False
    write_atomic(p, old.content, old.mode)
    service.daemon_reload()
    if kind == SOCKET and (now is None or _listening_changed(now.content, old.content)):
        service.restart(old.name)
    log.info("put back %s from %s and reloaded systemd", p, backup_dir.name)
    return True


def drift(ctx: Context, expected: str | None, version: str | None, kind: str = SERVICE) -> str | None:
    """What is wrong with the installed unit of ``kind`` when the release's file has the sha256
    ``expected`` (None: nothing to compare with); a unit that is not installed at
    ``/etc/systemd/system`` says nothing (the service may come from elsewhere)."""
    rel = ctx.app.unit_file if kind == SERVICE else ctx.app.socket_file
    if rel is None or expected is None:
        return None
    name = name_of(ctx, kind)
    try:
        installed = read(ctx, name)
    except NesopError as exc:
        return exc.message
    if installed is None or installed.sha256 == expected:
        return None
    return (
        f"{path(ctx, name)} differs from {rel} of {version or 'the app tree'}"
        f" (sha256 {installed.sha256[:12]}, expected {expected[:12]}): local settings belong in a"
        f" drop-in (`systemctl edit {name}`), the unit itself is the release's"
    )
