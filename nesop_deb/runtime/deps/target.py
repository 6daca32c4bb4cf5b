"""Whether this server is the target a package's wheels were fetched for."""

from __future__ import annotations

import sys

from nesop_deb import proc
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest


def server_python() -> str:
    """The server's python3, major.minor: the runtime runs on it (its virtualenv is built on
    /usr/bin/python3), and so do the app's virtualenvs."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def server_architecture() -> str:
    return proc.run(["dpkg", "--print-architecture"]).out.strip()


def check_target(manifest: Manifest) -> None:
    """A package with compiled wheels runs on its Python and architecture only: refuse it
    anywhere else before anything changes (apt refuses it already by its Depends; this is for
    ``dpkg --force-depends`` and a server whose python3 moved on)."""
    deps = manifest.dependencies
    if deps is None or deps.architecture == "all":
        return
    python, arch = server_python(), server_architecture()
    if (python, arch) != (deps.python, deps.architecture):
        raise RefusedError(
            f"{manifest.package} {manifest.version} carries wheels for Python {deps.python} on "
            f"{deps.architecture}, but this server runs Python {python} on {arch}",
            hint=f"build it for this server: nesop-deb build --python {python} --arch {arch}",
        )
