"""The pins of a requirements file, as the server reads them: ``name==version`` per requirement.

The builder refuses anything that is not pinned with hashes, so the server only needs the names
and versions (which wheels it must have); the hashes are checked by the installer itself."""

from __future__ import annotations

import re

_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*===?\s*([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503: runs of -, _ and . are one -, lower case (a wheel's file name uses _)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: str) -> set[tuple[str, str]]:
    """(normalized name, version) of every requirement line."""
    found: set[tuple[str, str]] = set()
    logical = re.sub(r"\\\n", " ", requirements)
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _PIN.match(line)
        if m is not None:
            found.add((normalize(m.group(1)), m.group(2).lower()))
    return found


def wheel_pin(file: str) -> tuple[str, str]:
    """(normalized name, version) a wheel file provides."""
    name, version = file.split("-")[:2]
    return normalize(name), version.lower()
