"""Which apps this server manages: every installed package with an update manifest."""

from __future__ import annotations

import os
from pathlib import Path

from nesop_deb import manifest as mf
from nesop_deb.errors import UsageError
from nesop_deb.runtime.context import AppSettings, Context


def _root() -> Path:
    return Path(os.environ.get("DPKG_ROOT") or "/")


def managed() -> list[Context]:
    found = []
    share = _root() / "usr/share"
    for path in sorted(share.glob(f"*/{mf.NAME}")):
        try:
            m = mf.loads(path.read_bytes())
        except (OSError, mf.ManifestError):
            continue
        found.append(Context(m.package, AppSettings.from_manifest_config(m.config), _root()))
    return found


def select(name: str | None) -> Context:
    """The app named by ``--app`` (app or package name), or the only one managed here."""
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
            hint="install an update package first (apt install ./APP-update_VERSION_all.deb)",
        )
    if len(apps) > 1:
        names = ", ".join(c.app.name for c in apps)
        raise UsageError(f"several apps are managed here ({names})", hint="choose one with --app NAME")
    return apps[0]
