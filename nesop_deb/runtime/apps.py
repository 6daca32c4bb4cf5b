"""Which apps this server manages: every installed package with an update manifest, and every app
adopted before its first package (``nesop-update adopt``); or the one a config file names.

Where an app is both, the installed package's settings win: they are what its updates carry.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nesop_deb import config
from nesop_deb import manifest as mf
from nesop_deb.errors import ConfigError, RefusedError, UsageError
from nesop_deb.runtime import accounts, adopt
from nesop_deb.runtime.context import AppSettings, Context
from nesop_deb.runtime.log import log

CONFIG_CAP = 1 << 20  # bytes: a nesop-deb.toml is small; a bigger file is not one


def _root() -> Path:
    return Path(os.environ.get("DPKG_ROOT") or "/")


def installed() -> list[Context]:
    """The apps whose update package is installed (its manifest unpacked in /usr/share)."""
    found = []
    share = _root() / "usr/share"
    for path in sorted(share.glob(f"*/{mf.NAME}")):
        try:
            m = mf.loads(path.read_bytes())
        except (OSError, mf.ManifestError):
            continue
        found.append(Context(m.package, AppSettings.from_manifest_config(m.config), _root()))
    return found


def managed() -> list[Context]:
    found = installed()
    packages = {c.package for c in found}
    return found + [c for c in adopt.adopted_contexts(_root()) if c.package not in packages]


def from_config(path: Path) -> Context:
    """The app an ``nesop-deb.toml`` describes (the builder's config). Root takes the app's root,
    service and database from it, so a file the app's account could change is refused."""
    fd = _open_config(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file", hint="give the app's nesop-deb.toml")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(CONFIG_CAP + 1)
    finally:
        os.close(fd)
    if len(data) > CONFIG_CAP:
        raise ConfigError(f"{path}: larger than {CONFIG_CAP >> 10} KiB, not an nesop-deb.toml")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason})", hint="give the app's nesop-deb.toml"
        ) from None
    cfg = config.loads(text, str(path))
    ctx = Context(cfg.package.name, AppSettings.from_config(cfg), _root())
    _only_root_can_change(path, st, ctx)
    return ctx


def _open_config(path: Path) -> int:
    try:
        # O_NONBLOCK: a FIFO given (or swapped in) as the file must not hang root
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"--config {path}: no such file",
            hint="give the app's nesop-deb.toml (the one its update packages are built from)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None


def _account_can_write(st: os.stat_result, uid: int, gid: int, *, directory: bool) -> bool:
    """Whether the app's account may change this file (or, for a directory, replace its entries)."""
    if st.st_uid == uid:
        return True
    if directory and st.st_mode & stat.S_ISVTX:
        return False  # sticky: only an entry's owner may replace it (the file is checked on its own)
    return bool(st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid == gid))


def _only_root_can_change(path: Path, st: os.stat_result, ctx: Context) -> None:
    owner = accounts.app_owner(ctx)
    if owner is None or owner[0] == 0:
        return  # no account, or the app runs as root: there is no one else to guard against
    uid, gid = owner
    parent = Path(os.path.realpath(path)).parent
    try:
        parent_st = parent.stat()
    except OSError:
        parent_st = None
    if _account_can_write(st, uid, gid, directory=False) or (
        parent_st is not None and _account_can_write(parent_st, uid, gid, directory=True)
    ):
        raise RefusedError(
            f"--config {path}: the app's account ({ctx.app.user}) can change it, and root would take "
            "the app's root, service and database from it",
            hint=f"keep it where only root writes: install -m 644 {path} /etc/nesop-deb/{ctx.app.name}.toml",
        )


def select(name: str | None, config_file: Path | None = None) -> Context:
    """The app ``--config`` describes, or the one named by ``--app`` (app or package name), or the
    only one managed here."""
    if config_file is not None:
        ctx = from_config(config_file)
        if name is not None and name not in (ctx.app.name, ctx.package):
            raise UsageError(
                f"--app {name}: {config_file} describes {ctx.app.name} ({ctx.package})",
                hint="give one of them, or the two for the same app",
            )
        package = next((c for c in installed() if c.package == ctx.package), None)
        if package is None:
            return ctx
        if (package.app.root, package.app.service) != (ctx.app.root, ctx.app.service):
            log.warning(
                "%s is installed: its settings apply (root %s, service %s), not those of %s",
                ctx.package,
                package.app.root,
                package.app.service,
                config_file,
            )
        return package
    apps = managed()
    if name is not None:
        for ctx in apps:
            if name in (ctx.app.name, ctx.package):
                return ctx
        known = ", ".join(c.app.name for c in apps) or "none"
        raise UsageError(f"--app {name}: no such app on this server (managed: {known})")
    if not apps:
        raise UsageError(
            "no app is managed by nesop-deb on this server",
            hint="name the app's config (nesop-update --config FILE …), adopt it (nesop-update adopt "
            "FILE), or install an update package (apt install ./APP-update_VERSION_all.deb)",
        )
    if len(apps) > 1:
        names = ", ".join(c.app.name for c in apps)
        raise UsageError(f"several apps are managed here ({names})", hint="choose one with --app NAME")
    return apps[0]
