"""The APT ``DPkg::Pre-Install-Pkgs`` hook (installed by the nesop-deb package).

apt writes the path of every .deb it is about to hand to dpkg on our stdin, ``apt install
./file.deb`` included. For each nesop-deb update package this hook checks, before dpkg touches
anything (a non-zero exit stops apt):

- on a server with trusted keys, its signature: ``X.deb.asc`` over the whole file, or else the
  manifest's own signature, and then only if nothing but what ``nesop-deb build`` writes came
  with that manifest (a signed manifest vouches for the payload, not for scripts or other files);
  and an update whose preinst will refuse its unsigned manifest is refused here already;
- every payload file against the manifest (without a key this catches damage, not an attacker);

and stages it for the app's local repository, where postinst publishes it once its version is
applied, so it can be reinstalled later.

"Update package" is decided by what the package is, not by what it says: its Pre-Depends (which
a tampered package can rewrite to ``python3`` while its shims still run the runtime), its name
(a managed app's package), its maintainer scripts (our shims, an embedded manifest) and, on a
server with keys, its files (an ``update_manifest.json``). Plain ``dpkg -i`` bypasses apt hooks;
preinst verifies the manifest's signature and postinst the payload again.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

from nesop_deb import debfile, proc, shims, signing
from nesop_deb.debfile import UpdateDeb
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.runtime import apply, apps, repo
from nesop_deb.runtime import log as runlog
from nesop_deb.text import printable

_MANIFEST_MEMBER = re.compile(r"(?:^|\s)(?:\./|/)?usr/share/[^/\s]+/update_manifest\.json$")
_SHIM_MARKERS = (b"nesop_deb.hooks", b'\nMANIFEST = "')
_SCRIPTS = {*shims.MAINTAINER_SCRIPTS, "config"}  # what runs as root (config: debconf, before unpack)


def _control_says_update(deb: Path) -> bool:
    """Pre-Depends, Package and maintainer scripts: the cheap part, read from control.tar."""
    fields = proc.run(["dpkg-deb", "-f", deb, "Package", "Pre-Depends"], check=False)
    if fields.returncode != 0:
        return False  # not a package dpkg can read: dpkg itself refuses it
    values = Deb822(fields.out)
    if "nesop-deb" in values.get("Pre-Depends", ""):
        return True
    if values.get("Package") in {ctx.package for ctx in apps.managed()}:
        return True
    control = proc.run(["dpkg-deb", "--ctrl-tarfile", deb], check=False)
    if control.returncode != 0:
        return False
    with tarfile.open(fileobj=io.BytesIO(control.stdout)) as tar:
        for member in tar.getmembers():
            if member.name.removeprefix("./") not in _SCRIPTS or not member.isfile():
                continue
            fh = tar.extractfile(member)
            if fh is not None and any(marker in fh.read() for marker in _SHIM_MARKERS):
                return True
    return False


def _ships_manifest(deb: Path) -> bool:
    """Whether any ``usr/share/*/update_manifest.json`` is among the files (reads all of data.tar)."""
    listing = proc.run(["dpkg-deb", "--contents", deb], check=False)
    return listing.returncode == 0 and any(_MANIFEST_MEMBER.search(ln) for ln in listing.out.splitlines())


def is_update(deb: Path, keyed: bool) -> bool:
    """Whether ``deb`` is (or passes for) an update package; its files are read only when the
    server has keys: listing them decompresses every package apt installs."""
    return _control_says_update(deb) or (keyed and _ships_manifest(deb))


def _archived(update: UpdateDeb) -> bool:
    """A reinstall (a rollback) from the app's own local repository: root-only, and only this
    hook puts packages there, after checking them as below."""
    ctx = apply.context_for(update.manifest)
    return update.path.resolve().parent == repo.repo_dir(ctx).resolve()


def _manifest_vouches(update: UpdateDeb, root: Path) -> str:
    """A package without ``X.deb.asc`` on a server with keys: its signed manifest must verify,
    and the package must be exactly what the builder writes for it. Returns the signer."""
    name = update.path.name
    whose = f"the update manifest of {name}"
    signer = signing.verify_manifest(update.manifest_raw, update.manifest_sig, whose, root) or ""
    # checked when it was archived; the templates it was checked against may have changed since
    problems = [] if _archived(update) else debfile.shape_problems(update)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RefusedError(
            f"{name}: {problems[0]}{more}: its manifest is signed, but it vouches only for the payload",
            hint=f"copy {signing.signature_path(update.path).name} (the whole file's signature) beside it, "
            "or build the package again with `nesop-deb build --sign KEYID`",
        )
    return signer


def _as_preinst_will(update: UpdateDeb, root: Path) -> None:
    """A package signed as a whole whose preinst runs the runtime: the runtime will refuse a
    manifest its signature does not cover, so refuse it here, before dpkg runs. (In a downgrade
    the newer package's prerm undoes itself before the older preinst runs: too late to refuse.)"""
    fields = shims.embedded(update.scripts.get("preinst", b"").decode("utf-8", "replace"))
    if fields is None:
        return  # its scripts are its own, and the whole file's signature vouches for them
    raw, signature = shims.decode(fields) or (b"", None)
    signing.verify_manifest(raw, signature, f"the update manifest of {update.path.name}", root)


@dataclass(frozen=True)
class Checked:
    update: UpdateDeb
    signer: str | None  # who signed it (None: the server requires no signature)
    whole_file: bool  # signed by X.deb.asc (archived with it), not only by its manifest


def check(deb: Path, root: Path = Path("/")) -> Checked:
    """Everything apt's hook and `nesop-update apply` check before dpkg may run; raises
    RefusedError (or UsageError for what is not an update package) naming ``deb``."""
    keyed = bool(signing.trusted_keyrings(root))
    # the whole file's signature, as before; without one, the manifest's (checked once parsed)
    whole_file = keyed and signing.signature_path(deb).is_file()
    signer = signing.verify(deb, root) if whole_file else None
    update = debfile.open_update(deb)
    if whole_file:
        _as_preinst_will(update, root)
    elif keyed:
        signer = _manifest_vouches(update, root)
    problems = debfile.verify_payload(update)
    if problems:
        raise RefusedError(
            f"{deb.name}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint="the package is damaged; copy or build it again; nothing was installed",
        )
    return Checked(update, signer, whole_file)


def handle(deb: Path, root: Path = Path("/")) -> None:
    if deb.suffix != ".deb" or not deb.is_file():
        return
    if not is_update(deb, bool(signing.trusted_keyrings(root))):
        return
    checked = check(deb, root)
    ctx = apply.context_for(checked.update.manifest)
    repo.stage_incoming(ctx, deb, checked.update.manifest.version, checked.whole_file)


def main() -> int:
    runlog.setup(None)
    # apt sets no DPKG_ROOT for its hooks; one from `sudo -E` must not move the trusted keys
    os.environ.pop("DPKG_ROOT", None)
    failed = False
    for line in sys.stdin.read().splitlines():
        path = line.strip()
        if not path or path.startswith("**"):
            continue
        try:
            handle(Path(path))
        except NesopError as exc:
            sys.stderr.write(printable(f"nesop-deb: refusing {path}: {exc}") + "\n")  # a package's words
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
