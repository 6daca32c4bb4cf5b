"""Users and groups of the managed system (read from its /etc, so DPKG_ROOT works)."""

from __future__ import annotations

from pathlib import Path

from nesop_deb import proc
from nesop_deb.runtime.context import Context


def _lookup(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name:
                return int(fields[2])
    except OSError:
        return None
    return None


def uid(ctx: Context, name: str) -> int | None:
    return 0 if name == "root" else _lookup(ctx.host("/etc/passwd"), name)


def gid(ctx: Context, name: str) -> int | None:
    return 0 if name == "root" else _lookup(ctx.host("/etc/group"), name)


def ensure_system_user(ctx: Context, user: str, group: str, home: str) -> bool:
    """Create the app's system group and user if missing; True when something was created."""
    created = False
    root_args = [] if ctx.root == Path("/") else ["--root", str(ctx.root)]
    if gid(ctx, group) is None:
        proc.run(["groupadd", *root_args, "--system", group])
        created = True
    if uid(ctx, user) is None:
        proc.run(
            [
                "useradd", *root_args, "--system", "--gid", group, "--home-dir", home,
                "--no-create-home", "--shell", "/usr/sbin/nologin", user,
            ]
        )  # fmt: skip
        created = True
    return created


def app_owner(ctx: Context) -> tuple[int, int] | None:
    """(uid, gid) of the app's account, which its database belongs to; None if either is missing."""
    u, g = uid(ctx, ctx.app.user), gid(ctx, ctx.app.group)
    return None if u is None or g is None else (u, g)
