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
from nesop_deb.runtime import adopt, safefs
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
    service and database from it, so it must be a file only root can change, on a path only root
    can change: that is decided from the file and its directories alone, before it is read."""
    real = Path(os.path.realpath(path))
    _only_root_can_change(path, real)
    fd = _open_config(path, real)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"--config {path}: not a regular file", hint="give the app's nesop-deb.toml")
        if not safefs.is_private(st):
            raise _changeable(path)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(CONFIG_CAP + 1)
    finally:
        os.close(fd)
    if len(data) > CONFIG_CAP:
        raise ConfigError(f"--config {path}: larger than {CONFIG_CAP >> 10} KiB, not an nesop-deb.toml")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not UTF-8 text ({exc.reason})", hint="give the app's nesop-deb.toml"
        ) from None
    cfg = config.loads(text, str(path))
    return Context(cfg.package.name, AppSettings.from_config(cfg), _root())


def _open_config(path: Path, real: Path) -> int:
    try:
        # the resolved path, never through a link; O_NONBLOCK: a FIFO must not hang root
        return os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(
            f"--config {path}: no such file",
            hint="give the app's nesop-deb.toml (the one its update packages are built from)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None


def _changeable(path: Path) -> RefusedError:
    return RefusedError(
        f"--config {path}: someone other than root can change it, and root would take the app's "
        "root, service and database from it",
        hint=f"keep it where only root writes: install -m 644 -o root {path} /etc/nesop-deb/",
    )


def _only_root_can_change(path: Path, real: Path) -> None:
    """Every directory above ``real`` is root's and writable by no one else (or sticky, where no
    one may replace an entry of another's)."""
    for directory in real.parents:
        try:
            st = directory.lstat()
        except OSError:
            continue  # the open that follows says what is missing
        if not safefs.is_private(st) and not (st.st_uid == 0 and st.st_mode & stat.S_ISVTX):
            raise _changeable(path)


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
