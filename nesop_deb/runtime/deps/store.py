"""The wheel store: every wheel the updates shipped, kept by root for the builds to come.

An update ships only the wheels its base did not pin, so a build here uses the store plus the
package's own ``wheels/``. Wheels come from dpkg's unpacked copy (root's), are checked against the
manifest's sha256 and renamed into place: the store holds only complete, verified files.
"""

from __future__ import annotations

from pathlib import Path

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Dependencies, Manifest
from nesop_deb.runtime import safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.deps.pins import pins, wheel_pin
from nesop_deb.runtime.fsutil import sha256_file

WHEELS = "wheels"  # in the unpacked package, beside payload/ and migrations/


def open_store(ctx: Context) -> safefs.Tree:
    """The store, made root's (0700) when missing; a link or a directory others may write to
    is refused (see :func:`safefs.records`)."""
    tree = safefs.records(ctx.state_dir, WHEELS, create=True)
    assert tree is not None
    return tree


def stored(ctx: Context) -> set[str]:
    if not (ctx.wheels_dir).is_dir():
        return set()
    with open_store(ctx) as store:
        return {n for n in store.listdir() if n.endswith(".whl")}


def check_available(ctx: Context, manifest: Manifest) -> None:
    """Every pinned requirement has a wheel, in the store or in the package; refuse otherwise
    (before anything changes), naming what is missing."""
    deps = manifest.dependencies
    if deps is None:
        return
    have = {wheel_pin(name) for name in stored(ctx) | {w.file for w in deps.wheels}}
    missing = sorted(f"{n}=={v}" for n, v in pins(deps.requirements) - have)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RefusedError(
            f"{manifest.package} {manifest.version} needs wheels this server does not have: {shown}"
            f" (neither in the package nor in {ctx.wheels_dir})",
            hint="build the update with `nesop-deb build --all-wheels` (it carries every wheel; a server"
            " whose virtualenv was made by hand has none in its store)",
        )


def add(ctx: Context, source: Path, deps: Dependencies) -> None:
    """Copy the package's wheels into the store (idempotent: a wheel already there is kept)."""
    with open_store(ctx) as store:
        for w in deps.wheels:
            if store.digest(w.file) == w.sha256:
                continue
            src = source / WHEELS / w.file
            tmp = f".{w.file}{safefs.TMP_SUFFIX}"
            try:
                with src.open("rb") as fh:
                    store.write_new(tmp, fh, 0o600, 0, 0)
            except FileNotFoundError:
                raise NesopError(f"{src} is missing: the package is damaged") from None
            # the copy is what is checked: streamed, so a wheel of any size never sits in memory
            if store.digest(tmp) != w.sha256:
                store.unlink(tmp)
                raise RefusedError(
                    f"wheel {w.file}: sha256 does not match the manifest; the package is damaged",
                    hint="download or build the package again; nothing was changed",
                )
            store.replace(tmp, w.file)


def verify_shipped(source: Path, deps: Dependencies) -> None:
    """The package's wheels are what its manifest says (the preflight's payload check)."""
    for w in deps.wheels:
        p = source / WHEELS / w.file
        if p.is_symlink() or not p.is_file() or sha256_file(p) != w.sha256:
            raise RefusedError(
                f"wheel {w.file}: sha256 does not match the manifest; the package is damaged",
                hint="download or build the package again; nothing was changed",
            )


def remove(ctx: Context, names: set[str]) -> None:
    with open_store(ctx) as store:
        for name in names:
            store.unlink(name)


def drop_scratch(ctx: Context) -> None:
    """Copies an interrupted :func:`add` left behind."""
    if not ctx.wheels_dir.is_dir():
        return
    with open_store(ctx) as store:
        for name in store.listdir():
            if name.startswith(".") and name.endswith(safefs.TMP_SUFFIX):
                store.unlink(name)
