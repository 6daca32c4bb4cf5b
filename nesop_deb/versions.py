"""Debian versions of update packages and the ``vX.Y.Z`` release tags they come from."""

from __future__ import annotations

import re
from collections.abc import Iterable

from debian.debian_support import Version

from nesop_deb.errors import UsageError

# Debian Policy §5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit. A stricter
# form than dpkg accepts: what dpkg only warns about is refused here, before a package exists.
# Use fullmatch(): with match(), "$" also accepts a trailing newline ("1.0\n").
_VERSION = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?$")
TAG_PREFIX = "v"


def is_valid(text: str) -> bool:
    """Whether ``text`` is a version this builder writes (and so a runtime may trust)."""
    return _VERSION.fullmatch(text) is not None


def parse(text: str, *, what: str = "version") -> Version:
    """A valid Debian version, or a :class:`UsageError` naming the input."""
    if not is_valid(text):
        raise UsageError(
            f"{what} {text!r} is not a valid Debian version",
            hint="use digits and dots like 1.0.5 (optionally epoch: and -revision)",
        )
    return Version(text)


def from_tag(tag: str) -> Version | None:
    """The version a release tag names (``v1.0.5`` → 1.0.5), or None for any other tag."""
    if not tag.startswith(TAG_PREFIX):
        return None
    text = tag[len(TAG_PREFIX) :]
    return Version(text) if _VERSION.fullmatch(text) else None


def highest_below(version: Version, tags: Iterable[str]) -> tuple[str, Version] | None:
    """The release tag with the highest version strictly below ``version``."""
    best: tuple[str, Version] | None = None
    for tag in tags:
        v = from_tag(tag)
        if v is not None and v < version and (best is None or v > best[1]):
            best = (tag, v)
    return best


def compare(a: str, b: str) -> int:
    """dpkg's ordering of two version strings: <0, 0 or >0."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)
