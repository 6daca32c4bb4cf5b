"""Rolling back the Debian way: ``apt-get install --allow-downgrades PACKAGE=VERSION``."""

from __future__ import annotations

from nesop_deb import proc
from nesop_deb.errors import NesopError
from nesop_deb.runtime.context import Context


def downgrade(ctx: Context, version: str) -> None:
    """Install an older version with apt; its prerm/postinst chain undoes the newer ones."""
    result = proc.run(
        ["apt-get", "install", "-y", "--allow-downgrades", f"{ctx.package}={version}"],
        check=False,
        extra_env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        tail = (result.err or result.out).strip().splitlines()[-1:] or ["no output"]
        raise NesopError(
            f"apt-get install {ctx.package}={version} failed: {tail[0]}",
            hint=f"is {version} in an apt source? (apt-cache policy {ctx.package})",
        )
