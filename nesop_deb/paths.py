"""Safe relative paths and the glob patterns of ``[files].exclude``.

A path an update ships or deletes is always relative, normalised, and stays below the app root:
the builder refuses anything else, and the runtime checks again before it writes.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable
from pathlib import PurePosixPath


class UnsafePath(ValueError):
    """A path that is absolute, empty, leaves its root, or holds a control character."""


# C0 controls, DEL and C1 controls. A name holding one is never needed by an app, and would
# reach root's logs, dpkg's line-based file lists and an operator's terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character(text: str) -> str | None:
    """The first control character in ``text``, if it holds one."""
    m = _CONTROL.search(text)
    return m.group() if m else None


# top-level directories an app never lives in: the runtime writes and chowns below its root
_SYSTEM = frozenset({"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run",
                     "sbin", "sys", "tmp", "usr"})  # fmt: skip
_SYSTEM_VAR = ("/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd", "/var/cache", "/var/log")


def app_root_problem(root: str) -> str | None:
    """Why ``root`` cannot be an app's root (None if it can): absolute, normalised, at least two
    levels deep, and not a system directory."""
    if control_character(root):
        return "contains a control character"
    p = PurePosixPath(root)
    if not root.startswith("/") or str(p) != root or ".." in p.parts or len(p.parts) < 3:
        return "must be an absolute, normalised directory at least two levels deep, like /opt/<app>"
    if p.parts[1] in _SYSTEM or any(root == d or root.startswith(d + "/") for d in _SYSTEM_VAR):
        return "is a system directory"
    return None


def safe_relative(path: str) -> str:
    """Normalise a manifest or repository path; raise :class:`UnsafePath` if it could escape."""
    if not path or "\0" in path:
        raise UnsafePath(f"{path!r} is empty or contains a NUL byte")
    bad = control_character(path)
    if bad is not None:
        raise UnsafePath(f"{path!r} contains the control character {bad!r}")
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


MAX_LINK_HOPS = 40  # the kernel's own limit on links followed in one lookup


def link_chain_stays_inside(link_path: str, target: str, lookup: Callable[[str], str | None]) -> bool:
    """Whether the symlink at ``link_path`` (relative to a root) pointing at ``target`` stays
    inside the root when resolved the way the kernel would, through the other links on the way.

    ``lookup(path)`` gives the target of the link at a root-relative path, or None where there is
    none. Each link alone may stay inside while a chain leaves: ``a -> ..`` and ``b -> a/..``.
    """
    stack = list(PurePosixPath(link_path).parts[:-1])
    parts = deque(PurePosixPath(target).parts)
    hops = 0
    while parts:
        part = parts.popleft()
        if part == "/":
            return False
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(part)
        link = lookup("/".join(stack))
        if link is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return False  # a loop: it resolves nowhere
            stack.pop()
            parts.extendleft(reversed(PurePosixPath(link).parts))
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
