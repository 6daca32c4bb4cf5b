"""The pins of a requirements file, as the server reads them: ``name==version`` per requirement.

The builder refuses anything that is not pinned with hashes, so the server only needs the names
and versions (which wheels it must have); the hashes are checked by the installer itself. Names
and versions compare as the packaging specifications say (``packaging``): ``Foo_Bar`` is
``foo-bar``, and ``1.0`` is ``1.0.0``."""

from __future__ import annotations

import re

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*===?\s*([^\s;\\]+)")

Pin = tuple[str, Version | str]  # (canonical name, version; the text when it is not PEP 440)


def _version(text: str) -> Version | str:
    try:
        return Version(text)
    except InvalidVersion:
        return text.lower()


def pins(requirements: str) -> set[Pin]:
    """(canonical name, version) of every requirement line."""
    found: set[Pin] = set()
    logical = re.sub(r"\\\n", " ", requirements.removeprefix("\ufeff"))
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _PIN.match(line)
        if m is not None:
            found.add((canonicalize_name(m.group(1)), _version(m.group(2))))
    return found


def wheel_pin(file: str) -> Pin:
    """(canonical name, version) a wheel file provides; a name that is no wheel's provides none."""
    try:
        name, version, _build, _tags = parse_wheel_filename(file)
    except (InvalidWheelFilename, InvalidVersion):
        return ("", file)
    return canonicalize_name(name), version
