"""Write a build plan into a reproducible ``.deb`` with ``dpkg-deb``.

The staging tree gets fixed modes and mtimes (SOURCE_DATE_EPOCH = the commit's time) and
``dpkg-deb --root-owner-group`` makes every member root-owned, so the same commit and options
give a byte-identical package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
import textwrap
import time
from email.utils import formatdate
from pathlib import Path

from debian.changelog import Changelog
from debian.deb822 import Deb822

from nesop_deb import __version__, proc
from nesop_deb.builder.plan import BuildPlan, describe
from nesop_deb.manifest import NAME as MANIFEST_NAME
from nesop_deb.render import render
from nesop_deb.shims import MAINTAINER_SCRIPTS, encode, render_script

PAYLOAD_LINTIAN_TAGS = (
    "script-not-executable [usr/share/{package}/payload/*]",
    "executable-not-elf-or-script [usr/share/{package}/payload/*]",
    "package-contains-vcs-control-file [usr/share/{package}/payload/*]",
    "package-contains-empty-directory [usr/share/{package}/payload/*]",
    "unusual-interpreter * [usr/share/{package}/payload/*]",
    "font-in-non-font-package [usr/share/{package}/payload/*]",
    "privacy-breach-generic [usr/share/{package}/payload/*]",
    "embedded-javascript-library * [usr/share/{package}/payload/*]",
    "extra-license-file [usr/share/{package}/payload/*]",
    "package-installs-python-bytecode [usr/share/{package}/payload/*]",
    "repeated-path-segment * [usr/share/{package}/payload/*]",
    "national-encoding [usr/share/{package}/payload/*]",
    "custom-library-search-path [usr/share/{package}/payload/*]",
)


def deb_name(plan: BuildPlan) -> str:
    """``<package>_<version>_all.deb``; a package whose virtualenv needs compiled wheels is for one
    Python and architecture: ``<package>_<version>_py<X.Y>_<arch>.deb`` (the version stays the
    release's, so apt's rollback by version keeps working)."""
    version = plan.version.split(":", 1)[-1]  # dpkg drops the epoch from file names
    deps = plan.manifest.dependencies
    if deps is not None and deps.architecture != "all":
        return f"{plan.package}_{version}_py{deps.python}_{deps.architecture}.deb"
    return f"{plan.package}_{version}_all.deb"


def _python_range(python: str) -> str:
    """``python3 (>= 3.13~), python3 (<< 3.14~)``: the one python3 minor version compiled wheels
    run on (``~`` sorts below any Debian revision, so 3.13.5-2 is in and 3.14~rc1 is not)."""
    major, minor = python.split(".")
    return f"python3 (>= {python}~), python3 (<< {major}.{int(minor) + 1}~)"


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _changelog(plan: BuildPlan) -> bytes:
    cl = Changelog()
    changes = [f"  * {c.subject} ({c.sha[:10]})" for c in reversed(plan.commits)] or ["  * No commits."]
    base = f" from {', '.join(plan.manifest.bases)}" if plan.manifest.bases else " (full install)"
    cl.new_block(
        package=plan.package,
        version=plan.version,
        distributions="unstable",
        urgency="medium",
        author=plan.config.package.maintainer,
        date=formatdate(plan.epoch, usegmt=False, localtime=False).replace("-0000", "+0000"),
        changes=["", f"  * Update of {plan.config.app.name} to {plan.version}{base}.", *changes, ""],
    )
    raw = str(cl).encode()
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: reproducible (what dh_compress does with gzip -n)
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def _control(plan: BuildPlan, installed_kib: int) -> bytes:
    lines = describe(plan.manifest)
    more = [f"... and {len(lines) - 41} more"] if len(lines) > 41 else []
    summary = textwrap.wrap(f"Changes: {lines[0].split(': ', 1)[1]}.", 78)
    long = [*summary, ".", *lines[1:41], *more]
    base = f"from {', '.join(plan.manifest.bases)}" if plan.manifest.bases else "a full install"
    ctl = Deb822()
    ctl["Package"] = plan.package
    ctl["Version"] = plan.version
    deps = plan.manifest.dependencies
    arch = deps.architecture if deps is not None else "all"  # compiled wheels: one architecture
    ctl["Architecture"] = arch
    ctl["Maintainer"] = plan.config.package.maintainer
    ctl["Installed-Size"] = str(installed_kib)
    ctl["Pre-Depends"] = f"nesop-deb (>= {__version__}), python3"
    if deps is not None and arch != "all":  # and one python3 minor version
        ctl["Depends"] = _python_range(deps.python)
    ctl["Section"] = plan.config.package.section
    ctl["Priority"] = "optional"
    ctl["Description"] = f"update of {plan.config.app.name} to {plan.version} ({base})\n" + "\n".join(
        " " + (line if line else ".") for line in long
    )
    return (ctl.dump().rstrip("\n") + "\n").encode()


def manifest_bytes(plan: BuildPlan) -> bytes:
    """The manifest exactly as the package ships it, embeds it in preinst and --sign signs it."""
    return plan.manifest.to_json().encode()


def write_tree(plan: BuildPlan, root: Path, manifest_signature: str | None = None) -> None:
    """Lay out the package's files and control directory under ``root``.

    ``manifest_signature`` (armoured, over the manifest's bytes) goes beside the manifest and into
    preinst; without it the tree is what it always was, so unsigned builds stay reproducible.
    """
    share = root / "usr/share" / plan.package
    # one byte string for both copies: what preinst verifies is what postinst applies
    manifest_raw = manifest_bytes(plan)
    entries = {f.path: f for f in plan.manifest.files}  # not a scan per file: --full has thousands
    for path, data in plan.payload.items():
        target = share / "payload" / path
        entry = entries[path]
        if entry.link_target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(entry.link_target)
        else:
            _write(target, data, entry.mode or 0o644)
    for name, data in plan.migrations.items():
        _write(share / "migrations" / name, data, 0o644)
    for name, data in plan.wheels.items():
        _write(share / "wheels" / name, data, 0o644)
    _write(share / MANIFEST_NAME, manifest_raw, 0o644)
    if manifest_signature is not None:
        _write(share / (MANIFEST_NAME + ".asc"), manifest_signature.encode("ascii"), 0o644)

    doc = root / "usr/share/doc" / plan.package
    _write(doc / "changelog.gz", _changelog(plan), 0o644)
    year = time.gmtime(plan.epoch).tm_year
    copyright_text = render(
        "copyright.j2",
        app=plan.config.app.name,
        builder_version=__version__,
        commit=plan.manifest.source_commit,
        year=year,
        maintainer=plan.config.package.maintainer,
        license="other",
        license_text=f" The terms of {plan.config.app.name}'s own license apply.",
    )
    _write(doc / "copyright", copyright_text.encode(), 0o644)
    overrides = render(
        "lintian-overrides.j2",
        builder_version=__version__,
        root=plan.config.app.root,
        package=plan.package,
        tags=[t.format(package=plan.package) for t in PAYLOAD_LINTIAN_TAGS],
    )
    _write(root / "usr/share/lintian/overrides" / plan.package, overrides.encode(), 0o644)

    debian = root / "DEBIAN"
    embedded, embedded_sig = encode(manifest_raw, manifest_signature)
    for script in MAINTAINER_SCRIPTS:
        text = render_script(
            script,
            builder_version=__version__,
            package=plan.package,
            version=plan.version,
            manifest=embedded,
            manifest_sig=embedded_sig,
        )
        _write(debian / script, text.encode(), 0o755)

    sums: list[str] = []
    size = 0
    for node in sorted(root.rglob("*")):
        rel = node.relative_to(root).as_posix()
        if rel.startswith("DEBIAN"):
            continue
        if node.is_symlink() or node.is_dir():
            size += 1
            continue
        data = node.read_bytes()
        size += (len(data) + 1023) // 1024
        sums.append(f"{hashlib.md5(data).hexdigest()}  {rel}\n")
    _write(debian / "md5sums", "".join(sums).encode(), 0o644)
    _write(debian / "control", _control(plan, size), 0o644)

    for node in [root, *root.rglob("*")]:
        if node.is_dir() and not node.is_symlink():
            node.chmod(0o755)
        os.utime(node, (plan.epoch, plan.epoch), follow_symlinks=False)


def build_deb(plan: BuildPlan, output: Path, manifest_signature: str | None = None) -> Path:
    """Write the package into ``output``; return its path. Nothing is left behind on failure."""
    output.mkdir(parents=True, exist_ok=True)
    target = output / deb_name(plan)
    with tempfile.TemporaryDirectory(prefix="nesop-deb-build-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        write_tree(plan, root, manifest_signature)
        partial = Path(tmp) / target.name
        proc.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "-z9", "--build", root, partial],
            extra_env={"SOURCE_DATE_EPOCH": str(plan.epoch), "LC_ALL": "C.UTF-8"},
            hint="is dpkg-dev installed? (apt-get install dpkg-dev)",
        )
        shutil.move(partial, target)  # the output may be on another filesystem
    (output / MANIFEST_NAME).write_text(plan.manifest.to_json(), encoding="utf-8")
    return target
