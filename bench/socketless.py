"""The example store's socket-activated releases without their socket unit, for a comparison.

In a copy of the release repository, each of the refs the requests benchmark installs is
committed again without socket activation: ``[app] socket_file`` and the socket unit it names
are gone, and so are the service's ``Requires=``/``After=`` on that socket (with the comment lines
right above each). Nothing else changes; the tags and branches are moved onto the new commits, so
the same build commands make the packages of either variant.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Sequence
from pathlib import Path

from bench.server import BenchError
from tests.e2e import store

_SOCKET_FILE = re.compile(r"^\s*socket_file\s*=")
_DEPENDENCY = re.compile(r"^\s*(Requires|Wants|BindsTo|After|Before|PartOf)\s*=(?P<units>.*)$")


def _drop(keep: list[str]) -> None:
    """A line is dropped: so are the comment lines right above it (what explained it)."""
    while keep and keep[-1].lstrip().startswith("#"):
        keep.pop()


def config_without_socket(text: str) -> str:
    """nesop-deb.toml without its ``socket_file`` setting."""
    keep: list[str] = []
    for line in text.splitlines(keepends=True):
        if _SOCKET_FILE.match(line):
            _drop(keep)
            continue
        keep.append(line)
    return "".join(keep)


def unit_without_socket(text: str, socket_unit: str) -> str:
    """A service unit without its dependencies on ``socket_unit`` (a line that names other units
    too keeps those)."""
    keep: list[str] = []
    for line in text.splitlines(keepends=True):
        m = _DEPENDENCY.match(line.rstrip("\n"))
        if m and socket_unit in m["units"].split():
            others = [u for u in m["units"].split() if u != socket_unit]
            if not others:
                _drop(keep)
                continue
            line = f"{m[1]}={' '.join(others)}\n"
        keep.append(line)
    return "".join(keep)


def strip_tree(tree: Path) -> None:
    """Take socket activation out of an app tree (a release's checkout)."""
    config_path = tree / "nesop-deb.toml"
    text = config_path.read_text()
    app = tomllib.loads(text).get("app", {})
    socket_file, unit_file = app.get("socket_file"), app.get("unit_file")
    if not socket_file or not unit_file:
        raise BenchError(f"{config_path}: no [app] socket_file and unit_file to take out")
    socket_unit = Path(str(app.get("service", Path(unit_file).name))).stem + ".socket"
    config_path.write_text(config_without_socket(text))
    (tree / socket_file).unlink()
    unit = tree / unit_file
    unit.write_text(unit_without_socket(unit.read_text(), socket_unit))


def _git(repo: Path, *args: str) -> str:
    return store._git(repo, *args).decode().strip()


def _commit(repo: Path, source: str, parent: str) -> str:
    """A commit on ``parent`` with ``source``'s tree, socket activation taken out."""
    work = repo.parent / f"{repo.name}-worktree"
    _git(repo, "worktree", "add", "--detach", "-f", str(work), parent)
    try:
        _git(work, "read-tree", "-u", "--reset", source)
        strip_tree(work)
        message = _git(repo, "log", "-1", "--format=%B", source)
        _git(work, "add", "--all")
        _git(
            work, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message, "-m", "(no socket unit)"
        )
        return _git(work, "rev-parse", "HEAD")
    finally:
        _git(repo, "worktree", "remove", "--force", str(work))


def copy(repo: store.ExampleRepo, where: Path, refs: Sequence[tuple[str, str | None]]) -> store.ExampleRepo:
    """A copy of ``repo`` in ``where`` in which each ref of ``refs`` (ref, the ref it follows, or
    None for the first) is its commit without socket activation, made on top of its own base's."""
    path = where / repo.path.name
    shutil.copytree(repo.path, path, symlinks=True)
    out = where / "debs"
    out.mkdir(parents=True)
    originals = {ref: _git(path, "rev-parse", f"{ref}^{{commit}}") for ref, _ in refs}
    made: dict[str, str] = {}
    for ref, base in refs:
        parent = made[base] if base is not None else _git(path, "rev-parse", f"{originals[ref]}^")
        made[ref] = _commit(path, originals[ref], parent)
    for ref, _ in refs:
        if re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", ref):
            _git(path, "tag", "--force", "--annotate", ref, "-m", f"NESOP Store {ref[1:]}", made[ref])
        else:
            _git(path, "branch", "--force", ref, made[ref])
    return store.ExampleRepo(path, out)
