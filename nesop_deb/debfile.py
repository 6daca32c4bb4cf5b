"""Read an update ``.deb``: its control fields, manifest, scripts and payload (python-debian)."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

from debian.debfile import DebError, DebFile

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


def open_update(path: Path) -> UpdateDeb:
    """Open and parse an update package; a broken or foreign file is one clear error."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        deb = DebFile(str(path))
        control = {k: str(v) for k, v in deb.debcontrol().items()}
        scripts: dict[str, bytes] = {}
        for n in ("preinst", "postinst", "prerm", "postrm"):
            content = deb.control.get_content(n) if deb.control.has_file(n) else None
            if content is not None:
                scripts[n] = content
        data = deb.data.tgz()
        members = {_normal(m.name): m for m in data.getmembers()}
    except (DebError, tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
        raise UsageError(
            f"{path}: not a readable .deb package ({exc})", hint="download or build it again"
        ) from None
    package = control.get("Package", "")
    name = f"usr/share/{package}/{mf.NAME}"
    if name not in members:
        raise UsageError(f"{path}: not a nesop-deb update package (no {name})")
    extracted = data.extractfile(members[name])
    assert extracted is not None
    manifest = mf.loads(extracted.read())
    if manifest.package != package or manifest.version != control.get("Version"):
        raise UsageError(
            f"{path}: the manifest says {manifest.package} {manifest.version} but the control file says "
            f"{package} {control.get('Version')}"
        )
    return UpdateDeb(path, control, manifest, scripts, members)


def read_member(update: UpdateDeb, name: str) -> bytes | None:
    deb = DebFile(str(update.path))
    fh = deb.data.tgz().extractfile(update.members[name]) if name in update.members else None
    return fh.read() if fh is not None else None


def verify_payload(update: UpdateDeb) -> list[str]:
    """Compare every payload file and migration with the manifest; return the problems found."""
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
