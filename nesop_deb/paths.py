"""Safe relative paths and the glob patterns of ``[files].exclude``.

A path an update ships or deletes is always relative, normalised, and stays below the app root:
the builder refuses anything else, and the runtime checks again before it writes.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath


class UnsafePath(ValueError):
    """A path that is absolute, empty, or leaves its root."""


def safe_relative(path: str) -> str:
    """Normalise a manifest or repository path; raise :class:`UnsafePath` if it could escape."""
    if not path or "\0" in path:
        raise UnsafePath(f"{path!r} is empty or contains a NUL byte")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise UnsafePath(f"{path!r} is absolute")
    parts = [part for part in p.parts if part != "."]
    if not parts or any(part == ".." for part in parts):
        raise UnsafePath(f"{path!r} leaves its root")
    return "/".join(parts)


def link_stays_inside(link_path: str, target: str) -> bool:
    """Whether a symlink at ``link_path`` (relative to a root) pointing at ``target`` stays inside."""
    if target.startswith("/"):
        return False
    depth = len(PurePosixPath(link_path).parts) - 1
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part != ".":
            depth += 1
    return True


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Translate a gitignore-like glob: ``**`` spans directories, ``*`` and ``?`` do not."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    # a pattern naming a directory matches everything below it too
    return re.compile("".join(out) + "(?:/.*)?")


def matches(path: str, pattern: str) -> bool:
    return _compile(pattern.rstrip("/")).fullmatch(path) is not None


def excluded(path: str, patterns: tuple[str, ...]) -> bool:
    return any(matches(path, p) for p in patterns)
