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
from nesop_deb.shims import MAINTAINER_SCRIPTS, decode, embedded, render_script


@dataclass(frozen=True)
class UpdateDeb:
    path: Path
    control: dict[str, str]
    manifest: mf.Manifest
    scripts: dict[str, bytes]
    members: dict[str, tarfile.TarInfo]  # data.tar members by normalised path ("usr/share/...")
    manifest_raw: bytes = b""  # the manifest's bytes, as shipped (what its signature covers)
    manifest_sig: str | None = None  # update_manifest.json.asc, when the build was signed
    control_files: tuple[str, ...] = ()  # control.tar members ("control", "preinst", ...)

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


def control_fields(path: Path) -> dict[str, str]:
    """The control fields of any Debian package (an update package or not); a broken or foreign
    file is one clear error."""
    check_file(path)
    with _reading(path):
        return {k: str(v) for k, v in DebFile(str(path)).debcontrol().items()}


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
        control_files = tuple(n for n in map(_normal, deb.control.tgz().getnames()) if n not in ("", "."))
        data = deb.data.tgz()
        members = {_normal(m.name): m for m in data.getmembers()}
        package = control.get("Package", "")
        name = f"usr/share/{package}/{mf.NAME}"
        raw = _extract(data, members, name)
        sig = _extract(data, members, name + ".asc")
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
    signature = sig.decode("ascii", "replace") if sig is not None else None
    return UpdateDeb(path, control, manifest, scripts, members, raw, signature, control_files)


def _extract(data: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes | None:
    member = members.get(name)
    fh = data.extractfile(member) if member is not None and member.isfile() else None
    return fh.read() if fh is not None else None


def read_member(update: UpdateDeb, name: str) -> bytes | None:
    with _reading(update.path):
        deb = DebFile(str(update.path))
        fh = deb.data.tgz().extractfile(update.members[name]) if name in update.members else None
        return fh.read() if fh is not None else None


def verify_payload(update: UpdateDeb) -> list[str]:
    """Compare every payload file, migration and wheel with the manifest; return the problems found."""
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
            problems.append(f"{entry.path}: sha256 does not match the manifest (damaged)")
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
    deps = update.manifest.dependencies
    for w in deps.wheels if deps is not None else ():
        member = update.members.get(f"{update.share}/wheels/{w.file}")
        fh = tar.extractfile(member) if member is not None and member.isfile() else None
        if fh is None:
            problems.append(f"wheel {w.file}: missing from the package")
            continue
        data = fh.read()
        if hashlib.sha256(data).hexdigest() != w.sha256 or len(data) != w.size:
            problems.append(f"wheel {w.file}: sha256 does not match the manifest (damaged)")
    wheel_dir = f"{update.share}/wheels/"
    listed = {w.file for w in deps.wheels} if deps is not None else set()
    problems += [
        f"wheel {n[len(wheel_dir) :]}: in the package but not in the manifest"
        for n in sorted(update.members)
        if n.startswith(wheel_dir) and not update.members[n].isdir() and n[len(wheel_dir) :] not in listed
    ]
    return problems


# What `nesop-deb build` puts in a package besides the payload and migrations (builder/package.py
# write_tree): a package with anything more or different is not one the builder wrote.
_CONTROL_FILES = frozenset({"control", "md5sums", *MAINTAINER_SCRIPTS})
_UNSAFE_MODE = 0o7022  # setuid, setgid, sticky, group or other write: the builder sets none


def _expected_files(update: UpdateDeb) -> dict[str, str | None]:
    """Every non-directory member the builder writes for this manifest → its link target, if any."""
    share, package = update.share, update.manifest.package
    files: dict[str, str | None] = {
        f"{share}/{mf.NAME}": None,
        f"{share}/{mf.NAME}.asc": None,
        f"usr/share/doc/{package}/changelog.gz": None,
        f"usr/share/doc/{package}/copyright": None,
        f"usr/share/lintian/overrides/{package}": None,
    }
    payload = [f for f in update.manifest.files if f.ships_payload]
    files.update({f"{share}/payload/{f.path}": f.link_target for f in payload})
    for m in update.manifest.migrations:
        files.update({f"{share}/migrations/{n}": None for n in (m.file, m.rollback_file) if n is not None})
    deps = update.manifest.dependencies
    files.update({f"{share}/wheels/{w.file}": None for w in (deps.wheels if deps is not None else ())})
    return files


def _member_problem(name: str, member: tarfile.TarInfo, files: dict[str, str | None], dirs: set[str]) -> str:
    path = "" if name in ("", ".", "./") else name.rstrip("/")
    if member.isdir():
        known = path in dirs
    elif member.issym():
        known = files.get(path) is not None
    else:
        known = member.isfile() and path in files and files[path] is None
    if not known:
        return f"{path or '.'}: a member `nesop-deb build` does not write"
    if not member.issym() and member.mode & _UNSAFE_MODE:
        return f"{path or '.'}: mode {member.mode:o} (setuid, setgid, sticky or writable by others)"
    return ""


def _script_problems(update: UpdateDeb) -> list[str]:
    """The maintainer scripts must be the shims this runtime's templates write for the manifest."""
    preinst = update.scripts.get("preinst", b"").decode("utf-8", "replace")
    fields = embedded(preinst)
    if fields is None:
        return ["preinst: no embedded manifest"]
    problems = []
    if decode(fields) != (update.manifest_raw, update.manifest_sig):
        problems.append(f"preinst: its embedded manifest or signature differs from {mf.NAME}")
    m = update.manifest
    for script in MAINTAINER_SCRIPTS:
        expected = render_script(
            script,
            builder_version=m.builder_version,
            package=m.package,
            version=m.version,
            manifest=fields[0],
            manifest_sig=fields[1],
        )
        if update.scripts.get(script) != expected.encode():
            problems.append(f"{script}: not the script nesop-deb writes")
    return problems


def shape_problems(update: UpdateDeb) -> list[str]:
    """What makes ``update`` more than `nesop-deb build` writes for its manifest: other control
    files (a ``config``, ``conffiles``), other maintainer scripts, files outside the payload,
    unsafe modes. A signed manifest vouches for the payload; this says nothing else came along."""
    problems = [
        f"{n}: a control file `nesop-deb build` does not write"
        for n in update.control_files
        if n not in _CONTROL_FILES
    ]
    problems += _script_problems(update)
    files = _expected_files(update)
    dirs = {""} | {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    for name, member in sorted(update.members.items()):
        problem = _member_problem(name, member, files, dirs)
        if problem:
            problems.append(problem)
    return problems
