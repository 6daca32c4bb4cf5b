"""The virtualenvs: one per (Python, requirements text), built offline, checked, then marked.

A virtualenv cannot move once built (its scripts name its interpreter by absolute path), so it is
built where it stays, ``/opt/venvs/<package>/<id>``, and counts as built only once its marker is
written, last. One without the marker is the remains of an interrupted build: removed and built
again. The installer is pip (the toolchain's own): ``--no-index`` and ``--find-links`` to the
wheel store and the package's wheels only, ``--require-hashes``, ``--only-binary :all:``, so it
can neither reach the network nor build an sdist (docs/architecture.md, "dependencies").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import CommandError, NesopError
from nesop_deb.manifest import Dependencies
from nesop_deb.runtime import safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.deps import store
from nesop_deb.runtime.deps.target import server_python
from nesop_deb.runtime.log import log

MARKER = "nesop-venv.json"
PYTHON = "/usr/bin/python3"
IMPORT_TIMEOUT = 600.0  # seconds the import check of a new virtualenv may take (it runs as the app)
ID = re.compile(r"[0-9a-f]{16}")  # only these names in /opt/venvs/<package> are ours
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
IMPORT_CHECK_TIMEOUT = 300.0
# the import check runs the app's dependencies' code: as the app's account, never as root
_IMPORT_CHECK = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except Exception as exc:\n"
    "        sys.exit(f'import {name}: {type(exc).__name__}: {exc}')\n"
)


class VenvError(NesopError):
    """The new virtualenv could not be built or its packages not imported (nothing switched)."""


def env_id(python: str, requirements: str) -> str:
    return hashlib.sha256(f"{python}\n{requirements}".encode()).hexdigest()[:16]


def env_path(ctx: Context, vid: str) -> Path:
    return ctx.venvs_dir / vid


def open_venvs(ctx: Context) -> safefs.Tree:
    """``/opt/venvs/<package>``: root's, readable by all (the app runs from it); every directory
    on the way must be root's and writable by no one else (:func:`safefs.root_owned`)."""
    return safefs.root_owned(ctx.root, ctx.venvs_dir.relative_to(ctx.root).as_posix(), mode=0o755)


def _ours(venvs: safefs.Tree) -> list[str]:
    """The environment directories in ``venvs``: named by an id, real directories."""
    return [n for n in venvs.listdir() if ID.fullmatch(n) and venvs.is_dir(n)]


def is_built(ctx: Context, vid: str) -> bool:
    with open_venvs(ctx) as venvs:
        return venvs.is_dir(vid) and venvs.lstat(f"{vid}/{MARKER}") is not None


def built(ctx: Context) -> dict[str, dict[str, object]]:
    """Every complete environment: id -> its marker (what it was built from)."""
    if not ctx.venvs_dir.is_dir():
        return {}
    found: dict[str, dict[str, object]] = {}
    with open_venvs(ctx) as venvs:
        for name in _ours(venvs):
            if venvs.lstat(f"{name}/{MARKER}") is None:
                continue
            try:
                found[name] = json.loads(venvs.read_bytes(f"{name}/{MARKER}"))
            except (OSError, ValueError):
                continue
    return found


def present(ctx: Context) -> set[str]:
    """Every environment directory, built or not."""
    if not ctx.venvs_dir.is_dir():
        return set()
    with open_venvs(ctx) as venvs:
        return set(_ours(venvs))


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """What root writes here must be readable by the app, whatever root's own umask is."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def prepare(ctx: Context, source: Path, deps: Dependencies, owner: tuple[int, int] | None) -> str:
    """Make the environment ``deps`` asks for (unless one is built already) and check that every
    package in it imports; return its id. Nothing live changes: the app keeps its link."""
    python = server_python()
    vid = env_id(python, deps.requirements)
    store.add(ctx, source, deps)
    if is_built(ctx, vid):
        log.info("virtualenv %s (%s) is built already: reused", vid, env_path(ctx, vid))
        return vid
    with _umask(0o022):
        _build(ctx, vid, python, deps, owner)
    return vid


def _build(ctx: Context, vid: str, python: str, deps: Dependencies, owner: tuple[int, int] | None) -> None:
    started = time.monotonic()
    with open_venvs(ctx) as venvs:
        venvs.rmtree(vid)  # an interrupted build
    path = env_path(ctx, vid)
    try:
        proc.run(
            [PYTHON, "-I", "-m", "venv", "--without-pip", path],
            cwd=Path("/"),
            env=CLEAN_ENV,
            hint="is python3 installed?",
        )
        proc.run(
            [
                sys.executable,
                "-I",
                "-m",
                "pip",
                "--python",
                path / "bin/python",
                "--disable-pip-version-check",
                "--no-input",
                "--isolated",
                "install",
                "--no-index",
                "--find-links",
                ctx.wheels_dir,
                "--only-binary",
                ":all:",
                "--require-hashes",
                "--no-cache-dir",
                "--requirement",
                "/dev/stdin",  # the manifest's text: no copy on disk to write, clean up, or swap
            ],
            # no configuration file either: --isolated still reads /etc/pip.conf, where an index
            # or a constraint would otherwise reach the build
            cwd=Path("/"),
            env={**CLEAN_ENV, "PIP_CONFIG_FILE": os.devnull},
            stdin=deps.requirements.encode(),
        )
    except CommandError as exc:
        raise VenvError(
            f"cannot build the virtualenv for {deps.requirements_file}: {_last_line(exc)}"
        ) from exc
    modules = top_level_modules(path)
    check_imports(path, modules, owner)
    with open_venvs(ctx) as venvs:
        venvs.syncfs()  # pip fsyncs nothing: the environment is on disk before its marker says so
        marker = {"python": python, "requirements": deps.requirements, "built": time.time()}
        venvs.write_new(f"{vid}/{MARKER}", json.dumps(marker, indent=2).encode(), 0o644)
    log.info(
        "virtualenv %s built in %.2f s (%d module(s) import: %s)",
        path,
        time.monotonic() - started,
        len(modules),
        ", ".join(modules),
    )


def _last_line(exc: CommandError) -> str:
    """What the command said went wrong: pip's first ``ERROR:`` line, else its last line."""
    lines = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[0].removeprefix("ERROR: ")
    return lines[-1] if lines else f"exit code {exc.returncode}"


def top_level_modules(path: Path) -> list[str]:
    """The importable top-level names the installed distributions provide (from each one's
    ``top_level.txt``, or its RECORD): private ones (``_x``) are left out."""
    names: set[str] = set()
    for site in path.glob("lib/python3*/site-packages"):
        for info in site.glob("*.dist-info"):
            top = info / "top_level.txt"
            if top.is_file():
                names.update(n.strip() for n in top.read_text().splitlines() if n.strip())
                continue
            record = info / "RECORD"
            if not record.is_file():
                continue
            for line in record.read_text().splitlines():
                first = line.split(",", 1)[0].split("/", 1)
                if len(first) == 2 and not first[0].endswith((".dist-info", ".data")):
                    names.add(first[0])
                elif len(first) == 1 and first[0].endswith(".py"):
                    names.add(first[0].removesuffix(".py"))
    return sorted(n for n in names if n.isidentifier() and not n.startswith("_") and n != "__pycache__")


def check_imports(path: Path, modules: list[str], owner: tuple[int, int] | None) -> None:
    if not modules:
        return
    # -I: no user site, no PYTHON* variables; -B: nothing written into root's environment
    argv: list[str | os.PathLike[str]] = [path / "bin/python", "-I", "-B", "-c", _IMPORT_CHECK, *modules]
    if owner is not None and owner != (0, 0):
        uid, gid = owner
        argv = proc.as_account(uid, gid, argv)
    try:
        proc.run(
            argv,
            timeout=IMPORT_TIMEOUT,
            cwd=Path("/"),
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except CommandError as exc:
        raise VenvError(f"the new virtualenv {path} does not import: {_last_line(exc)}") from exc


def discard(ctx: Context, vid: str, keep: set[str]) -> bool:
    """Remove environment ``vid`` unless ``keep`` names it; True when removed."""
    if vid in keep or not ID.fullmatch(vid) or not ctx.venvs_dir.is_dir():
        return False
    with open_venvs(ctx) as venvs:
        if not venvs.is_dir(vid):
            return False
        venvs.rmtree(vid)
    return True
