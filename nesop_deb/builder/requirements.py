"""A pinned requirements file (``[dependencies] requirements``): every package ``name==version``
with its ``--hash=sha256:`` digests, nothing else.

The server builds the app's virtualenv offline, from the wheels update packages shipped, so the
set must be complete and exact: a range (``>=``), a missing version or hash, an editable or a URL
requirement, an include (``-r``/``-c``) or an index option could not be fetched once for the
servers and installed there the same. Environment markers (``; python_version < "3.12"``) are
refused too: the set is fetched for one target (the servers' Python and architecture), where a
marker would be evaluated on the build machine and again on the server, and could differ.

:func:`parse` reads the text the way pip does (``\\`` continuations, ``#`` comments) and refuses,
in one line, every line it cannot take; :func:`new_pins` says which pins an update must ship
wheels for, given the base release's set. Both are pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from nesop_deb.errors import BuildError
from nesop_deb.text import printable

# name[extras]==version, as a pinned line starts (PEP 508 names; PEP 440 versions, local part too)
_PIN = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?P<extras>\[[A-Za-z0-9._,\s-]*\])?"
    r"\s*==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9._+!-]*)"
)
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_COMMENT = re.compile(r"(^|\s+)#.*$")
GENERATE = (
    "pin every package with == and its hashes: `pip-compile --generate-hashes` (pip-tools) or"
    " `uv pip compile --generate-hashes` writes such a file, or add each wheel's `pip hash`"
)
SHOWN = 5  # problems named in the one-line refusal


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it: lower case, runs of ``-_.`` one ``-``."""
    return str(canonicalize_name(name))


def same_version(a: str, b: str) -> bool:
    """Equal as PEP 440 compares them (``1.0`` is ``1.0.0``); as text when one is not a version."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a.lower() == b.lower()


@dataclass(frozen=True)
class Pin:
    """One pinned requirement."""

    name: str  # normalized (PEP 503)
    version: str
    hashes: frozenset[str]  # sha256 hex digests, lower case
    requirement: str  # as written, without hashes: "MarkupSafe==3.0.2"
    line: int  # where it starts in the file (1-based)

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Requirements:
    file: str  # the file's name in messages
    pins: tuple[Pin, ...]

    def get(self, name: str) -> Pin | None:
        wanted = normalize(name)
        return next((p for p in self.pins if p.name == wanted), None)

    def pip_text(self) -> str:
        """The set as pip reads it, one line per pin, nothing else (what the builder fetches)."""
        return "".join(
            f"{p.requirement}{''.join(f' --hash=sha256:{h}' for h in sorted(p.hashes))}\n" for p in self.pins
        )


def _logical_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """``(first line, last line, text)`` of each logical line, continuations joined and comments
    dropped, as pip's requirement file reader does."""
    pending: list[str] = []
    start = 0
    number = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.endswith("\\") and not _COMMENT.match(raw):
            if not pending:
                start = number
            pending.append(raw.rstrip("\\"))
            continue
        if pending:  # the continued line ends here (a comment line ends it too, as for pip)
            pending.append(" " + raw if _COMMENT.match(raw) else raw)
            line, first = "".join(pending), start
            pending = []
        else:
            line, first = raw, number
        line = _COMMENT.sub("", line).strip()
        if line:
            yield first, number, line
    if pending:  # a file ending in a backslash
        line = _COMMENT.sub("", "".join(pending)).strip()
        if line:
            yield start, number, line


def _shown(line: str, limit: int = 60) -> str:
    line = " ".join(line.split())
    return printable(line if len(line) <= limit else line[: limit - 1] + "…")


def _option_problem(token: str) -> str:
    option = token.split("=", 1)[0]
    if option in ("-e", "--editable"):
        return "an editable install, not a pinned release"
    if option in ("-r", "--requirement", "-c", "--constraint"):
        return "an include: put the pins of that file in this one"
    if option in (
        "-i",
        "--index-url",
        "--extra-index-url",
        "--no-index",
        "-f",
        "--find-links",
        "--trusted-host",
    ):
        return (
            "an index option: the builder fetches with pip's own configuration (pip.conf);"
            " pip-compile --no-emit-index-url --no-emit-find-links leaves them out"
        )
    return f"the option {option}, which a pinned set does not take"


def _requirement_problem(requirement: str) -> str:
    """Why a requirement (the part before its options) is not ``name==version``."""
    if ";" in requirement:
        return "an environment marker: the set is fetched for one target, resolve it for that one"
    if "@" in requirement or "://" in requirement or requirement.startswith((".", "/", "~")):
        return "a URL or a path, not a release from the index"
    if _NAME.fullmatch(requirement) or re.fullmatch(rf"{_NAME.pattern}\s*\[[^\]]*\]", requirement):
        return "no version: pin it with =="
    if "===" in requirement:
        return "=== (arbitrary equality): pin it with =="
    if "*" in requirement:
        return "a wildcard version: pin one version with =="
    if "," in requirement or re.search(r"[<>~!]=?|(?<![=!<>~])=(?!=)", requirement):
        return "a range, not one version: pin it with =="
    return "not a requirement name==version"


def _parse_line(line: str) -> tuple[str, str, str, frozenset[str]] | str:
    """``(name, version, requirement, hashes)`` of a pinned line, or why it is not one."""
    tokens = line.split()
    if tokens[0].startswith("-"):
        return _option_problem(tokens[0])
    first_option = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    requirement = " ".join(tokens[:first_option])
    options = tokens[first_option:]
    m = _PIN.fullmatch(requirement)
    if m is None or m.group("version").endswith((".", "-")):
        return _requirement_problem(requirement)
    hashes: set[str] = set()
    i = 0
    while i < len(options):
        option, _, value = options[i].partition("=")
        if option != "--hash":
            return _option_problem(options[i])
        if not value and i + 1 < len(options):  # --hash sha256:...
            i += 1
            value = options[i]
        digest = _HASH.fullmatch(value)
        if digest is None:
            return f"--hash={value or '?'} is not sha256:<64 hex digits>"
        hashes.add(digest.group(1).lower())
        i += 1
    if not hashes:
        return "no --hash=sha256:… (every pin needs the hashes of its files)"
    requirement = re.sub(r"\s+", "", requirement)
    return normalize(m.group("name")), m.group("version"), requirement, frozenset(hashes)


def parse(text: str, file: str) -> Requirements:
    """The pins of a requirements file; a :class:`BuildError` naming every line it cannot take."""
    pins: list[Pin] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for first, last, line in _logical_lines(text):
        if line == "--require-hashes":  # harmless: the set requires hashes anyway
            continue
        parsed = _parse_line(line)
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        if isinstance(parsed, str):
            problems.append(f"{where} '{_shown(line)}': {parsed}")
            continue
        name, version, requirement, hashes = parsed
        if name in seen:
            problems.append(f"{where} '{_shown(requirement)}': {name} is pinned already on line {seen[name]}")
            continue
        seen[name] = first
        pins.append(Pin(name, version, hashes, requirement, first))
    if problems:
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise BuildError(
            f"{file}: {len(problems)} line(s) the builder cannot take: {'; '.join(problems[:SHOWN])}{more}",
            hint=GENERATE,
        )
    if not pins:
        # a virtualenv without a package would replace the app's: its start would fail in the outage
        raise BuildError(
            f"{file} pins no package",
            hint="pin the app's packages there, or remove [dependencies] if it has none",
        )
    return Requirements(file, tuple(pins))


def new_pins(head: Requirements, base: Requirements | None) -> tuple[Pin, ...]:
    """The pins of ``head`` a server at ``base`` has no wheel for: all of them without a base;
    else those the base did not pin at the same version, or pinned with a hash ``head`` no longer
    accepts (the base's wheel could then fail ``head``'s hash check)."""
    if base is None:
        return head.pins
    out = []
    for pin in head.pins:
        before = base.get(pin.name)
        if before is None or not same_version(before.version, pin.version) or not before.hashes <= pin.hashes:
            out.append(pin)
    return tuple(out)


__all__ = ["GENERATE", "Pin", "Requirements", "new_pins", "normalize", "parse", "same_version"]
