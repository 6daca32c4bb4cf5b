"""Read an update ``.deb``: its control fields, manifest, scripts and payload (python-debian)."""

from __future__ import annotations

import hashlib
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from debian.arfile import ArError
from debian.debfile import DebFile

from nesop_deb import manifest as mf
from nesop_deb.errors import UsageError


@dataclass(frozen=True)
class UpdateDeb:
    path: Path
    control: dict[str, str]
    manifest: mf.Manifest
    scripts: dict[str, bytes]
    members: dict[str, tarfile.TarInfo]  # data.tar members by normalised path ("usr/share/...")

    @property
    def share(self) -> str:
        return f"usr/share/{self.manifest.package}"


def _normal(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


# What python-debian and the tar and compression modules raise on a file that is not a
# well-formed .deb: ArError (and its subclass DebError) for a missing or broken ar header (an
# empty file, random bytes, text), OSError and EOFError for truncated members, zlib and lzma
# errors for damaged compressed data, KeyError for a missing part, ValueError for bad control
# text. Anything else is a bug of ours and stays an internal error.
_UNREADABLE = (ArError, tarfile.TarError, EOFError, OSError, KeyError, ValueError, zlib.error, lzma.LZMAError)


def check_file(path: Path) -> None:
    """Refuse a path that cannot be a package before anything parses it."""
    if not path.exists():
        raise UsageError(f"{path}: no such file", hint="give the path of an update package (.deb)")
    # is_file() first: opening a FIFO or a device to probe it could block or have effects
    if not path.is_file():
        raise UsageError(
            f"{path}: not a Debian package (not a regular file)",
            hint="give the path of an update package (.deb) built with `nesop-deb build`",
        )
    try:
        path.open("rb").close()
    except OSError as exc:
        raise UsageError(
            f"{path}: cannot read it ({exc.strerror or exc})", hint="check its permissions"
        ) from None


def _reason(exc: BaseException) -> str:
    """The library's own words, on one line (some of its errors carry none: then their kind)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a parser's failure on a damaged or foreign file into one line naming the file."""
    try:
        yield
    except _UNREADABLE as exc:
        raise UsageError(
            f"{path}: not a Debian package ({_reason(exc)})",
            hint="build it with `nesop-deb build`, or copy it again if it was damaged on the way",
        ) from None


def open_update(path: Path) -> UpdateDeb:
    """Open and parse an update package; a broken or foreign file is one clear error."""
    check_file(path)
    with _reading(path):
        deb = DebFile(str(path))
        control = {k: str(v) for k, v in deb.debcontrol().items()}
        scripts: dict[str, bytes] = {}
        for n in ("preinst", "postinst", "prerm", "postrm"):
            content = deb.control.get_content(n) if deb.control.has_file(n) else None
            if content is not None:
                scripts[n] = content
        data = deb.data.tgz()
        members = {_normal(m.name): m for m in data.getmembers()}
        package = control.get("Package", "")
        name = f"usr/share/{package}/{mf.NAME}"
        extracted = data.extractfile(members[name]) if name in members else None
        raw = extracted.read() if extracted is not None else None
    if raw is None:
        raise UsageError(
            f"{path}: not a nesop-deb update package (no {name})",
            hint="inspect and apply only packages built with `nesop-deb build`",
        )
    try:
        manifest = mf.loads(raw)
    except mf.ManifestError as exc:
        # the package is the bad input: name it, and exit as a usage error (nothing was done)
        raise UsageError(
            f"{path}: {exc.message}", hint=exc.hint or "rebuild it with `nesop-deb build`"
        ) from None
    if manifest.package != package or manifest.version != control.get("Version"):
        raise UsageError(
            f"{path}: the manifest says {manifest.package} {manifest.version} but the control file says "
            f"{package} {control.get('Version')}"
        )
    return UpdateDeb(path, control, manifest, scripts, members)


def read_member(update: UpdateDeb, name: str) -> bytes | None:
    with _reading(update.path):
        deb = DebFile(str(update.path))
        fh = deb.data.tgz().extractfile(update.members[name]) if name in update.members else None
        return fh.read() if fh is not None else None


def verify_payload(update: UpdateDeb) -> list[str]:
    """Compare every payload file and migration with the manifest; return the problems found."""
    with _reading(update.path):
        return _payload_problems(update)


def _payload_problems(update: UpdateDeb) -> list[str]:
    problems: list[str] = []
    tar = DebFile(str(update.path)).data.tgz()
    payload = f"{update.share}/payload/"
    expected = {payload + f.path: f for f in update.manifest.files if f.ships_payload}
    for name, entry in expected.items():
        member = update.members.get(name)
        if member is None:
            problems.append(f"{entry.path}: missing from the payload")
            continue
        if entry.link_target is not None:
            if not member.issym() or member.linkname != entry.link_target:
                problems.append(f"{entry.path}: expected a symlink to {entry.link_target}")
            continue
        fh = tar.extractfile(member) if member.isfile() else None
        if fh is None:
            problems.append(f"{entry.path}: not a regular file in the payload")
            continue
        data = fh.read()
        if hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != entry.size:
            problems.append(f"{entry.path}: sha256 does not match the manifest (tampered or corrupt)")
    extra = [
        n
        for n in update.members
        if n.startswith(payload) and not update.members[n].isdir() and n not in expected
    ]
    problems += [f"{n[len(payload) :]}: in the payload but not in the manifest" for n in sorted(extra)]
    mig_dir = f"{update.share}/migrations/"
    for m in update.manifest.migrations:
        for file, sha in ((m.file, m.sha256), (m.rollback_file, m.rollback_sha256)):
            if file is None:
                continue
            member = update.members.get(mig_dir + file)
            fh = tar.extractfile(member) if member is not None and member.isfile() else None
            if fh is None:
                problems.append(f"migration {file}: missing from the package")
            elif hashlib.sha256(fh.read()).hexdigest() != sha:
                problems.append(f"migration {file}: sha256 does not match the manifest")
    return problems
