"""Fetch the wheels of a pinned set for the servers, not for the machine that builds.

``pip download`` runs with the target's Python version, CPython ABIs and manylinux platforms,
binary only (an sdist would need building, and the servers build nothing), in hash-checking mode:
every file pip takes must match a pinned hash, and a dependency the file does not pin makes pip
refuse, so a fetch that succeeds also proves the set complete. Whatever pip says when it cannot
is turned into one line naming the requirement and what to do.

Platforms: ``manylinux_2_5`` up to ``manylinux_2_36`` (and the legacy ``manylinux1``/``2010``/
``2014`` names). A manylinux_2_N wheel needs glibc 2.N or newer; Debian 12 has 2.36 and Debian 13
2.41, so every wheel up to 2.36 runs on both, and a newer one is never taken.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nesop_deb import proc
from nesop_deb.builder.requirements import Pin, Requirements, new_pins, same_version
from nesop_deb.config import ARCHITECTURES
from nesop_deb.errors import BuildError, CommandError
from nesop_deb.manifest import WHEEL_NAME, Dependencies, WheelEntry
from nesop_deb.text import printable

GLIBC_MAX = 36  # manylinux_2_36: Debian 12's glibc (Debian 13 has 2.41)
GLIBC_MIN = 5  # manylinux1
# the names manylinux_2_17, _2_12 and _2_5 had before PEP 600 (the last two for x86 only)
_LEGACY = {
    (17, "x86_64"): "manylinux2014",
    (17, "aarch64"): "manylinux2014",
    (12, "x86_64"): "manylinux2010",
    (5, "x86_64"): "manylinux1",
}


_PYTHON_VERSION = re.compile(r"3\.[0-9]{1,2}")


def is_python_version(value: str) -> bool:
    """Whether ``value`` names a python3 the way [dependencies] python does (major.minor)."""
    return _PYTHON_VERSION.fullmatch(value) is not None


@dataclass(frozen=True)
class Target:
    """The servers' interpreter: CPython ``python`` (major.minor) on Debian ``architecture``."""

    python: str
    architecture: str

    @property
    def machine(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def __str__(self) -> str:
        return f"Python {self.python} on {self.architecture}"

    def platforms(self) -> list[str]:
        """The wheel platform tags the servers take, newest glibc first (pip prefers earlier)."""
        tags = []
        for minor in range(GLIBC_MAX, GLIBC_MIN - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.machine}")
            legacy = _LEGACY.get((minor, self.machine))
            if legacy is not None:
                tags.append(f"{legacy}_{self.machine}")
        return tags


@dataclass(frozen=True)
class Wheel:
    file: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pure(self) -> bool:
        """Pure Python (``*-none-any``): the same file for every Python 3 and architecture."""
        m = WHEEL_NAME.fullmatch(self.file)
        return m is not None and m.group("abi") == "none" and m.group("platform") == "any"


def pip_command() -> list[str]:
    """How to run pip: with the builder's own interpreter (the toolchain package keeps pip in its
    virtualenv), else with the system's ``python3`` (a builder installed without pip). Which one
    does not matter: the target is given on pip's command line, never taken from the interpreter."""
    for python in dict.fromkeys((sys.executable, shutil.which("python3"))):
        if python and proc.run([python, "-m", "pip", "--version"], check=False).returncode == 0:
            return [python, "-m", "pip"]
    raise BuildError(
        f"[dependencies]: fetching the wheels needs pip, and neither {sys.executable} nor python3 has it",
        hint="install it (apt-get install python3-pip)",
    )


def download_args(target: Target, requirements: Path, dest: Path) -> list[str]:
    args = [
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--only-binary=:all:",
        "--require-hashes",
        "--python-version",
        target.python,
        "--implementation",
        "cp",
        "--abi",
        target.abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in target.platforms():
        args += ["--platform", platform]
    return [*args, "--dest", str(dest), "--requirement", str(requirements)]


def fetch(requirements: Requirements, target: Target) -> dict[str, Wheel]:
    """One wheel per pin (by normalized name), fetched for ``target`` and checked against the
    pinned hashes; a :class:`BuildError` naming the requirement when one cannot be had."""
    if not requirements.pins:
        return {}
    pip = pip_command()
    with tempfile.TemporaryDirectory(prefix="nesop-deb-wheels-") as tmp:
        scratch = Path(tmp)
        listing = scratch / "requirements.txt"
        listing.write_text(requirements.pip_text(), encoding="utf-8")
        dest = scratch / "wheels"
        try:
            proc.run([*pip, *download_args(target, listing, dest)])
        except CommandError as exc:
            raise _refusal(exc.stderr, requirements, target) from None
        found = sorted(dest.iterdir()) if dest.is_dir() else []
        wheels = {}
        for path in found:
            wheel = Wheel(path.name, path.read_bytes())
            wheels[_check(wheel, requirements, target).name] = wheel
    missing = [p.spec for p in requirements.pins if p.name not in wheels]
    if missing:
        raise BuildError(
            f"{requirements.file}: pip fetched no wheel of {', '.join(missing)} for {target}",
            hint="check the pin: `nesop-deb -v build` shows the pip command that fetched the set",
        )
    return wheels


def _check(wheel: Wheel, requirements: Requirements, target: Target) -> Pin:
    """The pin ``wheel`` is for: its name, version and hash must be what the file pins."""
    m = WHEEL_NAME.fullmatch(wheel.file)
    if m is None:
        raise BuildError(f"pip fetched {printable(wheel.file)!r} for {target}, which is not a wheel")
    pin = requirements.get(m.group("name"))
    if pin is None:
        raise BuildError(f"pip fetched {wheel.file}, which {requirements.file} does not pin")
    if not same_version(m.group("version"), pin.version):
        raise BuildError(
            f"{requirements.file} line {pin.line} pins {pin.requirement}, but its wheel {wheel.file} is"
            f" version {m.group('version')}",
            hint="pip fetched another version than the file pins: check the pin and pip's configuration"
            " (a constraints file)",
        )
    if wheel.sha256 not in pin.hashes:  # pip checked it: this is a second look, at what ships
        raise BuildError(
            f"{wheel.file} (sha256 {wheel.sha256}) is not among the hashes {requirements.file} pins for"
            f" {pin.spec}"
        )
    return pin


def select(
    text: str,
    file: str,
    head: Requirements,
    base: Requirements | None,
    target: Target,
    wheels: dict[str, Wheel],
) -> tuple[Dependencies, dict[str, bytes]]:
    """The manifest's ``dependencies`` and the wheels the package carries (file name -> bytes).

    ``wheels`` is the whole set, fetched: a package ships only the wheels of the pins a server at
    ``base`` has none for (every one without a base), and is for any architecture only when every
    wheel of the set is pure Python: the virtualenv needs them all, shipped now or earlier.
    """
    ship = {p.name for p in new_pins(head, base)}
    shipped = sorted((w for name, w in wheels.items() if name in ship), key=lambda w: w.file)
    architecture = "all" if all(w.pure for w in wheels.values()) else target.architecture
    entries = tuple(WheelEntry(w.file, w.sha256, len(w.data)) for w in shipped)
    return Dependencies(text, entries, target.python, architecture, file), {w.file: w.data for w in shipped}


# what pip says when it cannot: the requirement it could not satisfy, the dependency left unpinned,
# the file whose hash is not pinned
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_UNPINNED = re.compile(r"^\s+(\S.*?) from \S+ \(from (\S+?)(?:->|\))", re.MULTILINE)
_NO_HASH = re.compile(r"^\s+(\S+==\S+) --hash=sha256:([0-9a-f]{64})", re.MULTILINE)
_MISMATCH = re.compile(
    r"^\s+(\S+) from (\S+?)(?: \(from .*\))?:\n"  # markupsafe==3.0.3 from https://…whl (from -r …):
    r"\s+Expected sha256 .*\n(?:\s+Expected\s+or .*\n)*"  # one line per pinned hash
    r"\s+Got\s+([0-9a-f]{64})",
    re.MULTILINE,
)


_UNREACHABLE = re.compile(
    r"(Failed to establish a new connection|Could not fetch URL|ProxyError|SSLError|Name or service not known"
    r"|Temporary failure in name resolution)[^\n]*"
)
_REQUIRES_PYTHON = re.compile(r"Requires-Python (\S+)")


def _refusal(stderr: str, requirements: Requirements, target: Target) -> BuildError:
    file = requirements.file
    m = _NO_MATCH.search(stderr)
    unreachable = _UNREACHABLE.search(stderr)
    if unreachable is not None:
        return BuildError(
            f"pip could not reach its index to fetch the wheels of {file}: {printable(unreachable.group(0))}",
            hint="check the network, or pip's index and proxy settings (pip.conf); the build needs them",
        )
    needs = _REQUIRES_PYTHON.search(stderr)
    if m is not None and needs is not None:
        return BuildError(
            f"{printable(m.group(1))} needs Python {printable(needs.group(1))}, but the servers run {target}",
            hint="pin a version that supports the servers' Python, or build for theirs (--python)",
        )
    if m is not None:
        return BuildError(
            f"no wheel of {printable(m.group(1))} for {target} (CPython {target.abi}, manylinux glibc"
            f" <= 2.{GLIBC_MAX} {target.machine}) on the index pip uses",
            hint=f"pin a version that publishes one, or build for another target (--python, --arch);"
            f" {file} needs a wheel of every package: nothing is built from source",
        )
    if "must have their versions pinned with ==" in stderr:
        found = _UNPINNED.search(stderr.split("These do not:", 1)[-1])
        what = f"{found.group(1)} (needed by {found.group(2)})" if found else "a dependency"
        return BuildError(
            f"{file} does not pin {printable(what)}: the set must hold every package it installs",
            hint="pin the whole set with its dependencies: `pip-compile --generate-hashes` lists them all",
        )
    if "DO NOT MATCH THE HASHES" in stderr:
        bad = _MISMATCH.search(stderr)
        what = (
            f"the wheel of {bad.group(1)} for {target} ({bad.group(2).rsplit('/', 1)[-1]}, sha256"
            f" {bad.group(3)})"
            if bad
            else f"a wheel for {target}"
        )
        return BuildError(
            f"{printable(what)} is not among the hashes {file} pins",
            hint="pin the hashes of every file of the release (`pip-compile --generate-hashes` does);"
            " hashes taken on the build machine cover its own wheels only",
        )
    if "missing from some requirements" in stderr:
        found_hash = _NO_HASH.search(stderr)
        what = found_hash.group(1) if found_hash else "a requirement"
        return BuildError(
            f"{file}: pip needs a hash for {printable(what)}, which the set does not pin with one",
            hint="pin it with its hashes (`pip-compile --generate-hashes`)",
        )
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
    return BuildError(
        f"fetching the wheels of {file} for {target} failed: {printable(last)}",
        hint="run it again with -v to see pip's command; check that pip reaches its index",
    )


__all__ = [
    "GLIBC_MAX",
    "Target",
    "Wheel",
    "download_args",
    "fetch",
    "is_python_version",
    "pip_command",
    "select",
]
