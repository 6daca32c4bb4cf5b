"""``nesop-update adopt``: take on an app deployed by hand, before its first package.

A server deployed by hand (as the original guide left it) has no package, so nothing on it says
what the app is. Adopting it records, in root's state directory (``/var/lib/<package>/adoption/``,
0700):

- the app's settings, read from its ``nesop-deb.toml``: later commands find the app without it;
- the whole tree as it is: every file and link with its sha256, mode and owner (not ``backups/``,
  ``logs/``, the ``[app] writable`` directories or the database: the app's data changes by design).
  ``validate --check files`` compares the files no update wrote against it.

An adoption records no version. The first package still finds an unmanaged app and adopts it
through its drift check, as on a server never adopted (guide 5.6); what the adoption adds is a
record of the files no update touches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb import config
from nesop_deb import manifest as mf
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Action
from nesop_deb.runtime import checks, database, inventory, lock, safefs, state
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.apply import NEW_SUFFIX
from nesop_deb.runtime.context import AppSettings, Context
from nesop_deb.runtime.log import log

FORMAT = 1


@dataclass(frozen=True)
class Adoption:
    time: str
    root: str
    config_file: str | None
    files: int  # files and links recorded
    files_sha256: str = ""  # of the recorded tree (files.json), which its record names

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "root": self.root, "config_file": self.config_file, "files": self.files}


@dataclass(frozen=True)
class Baseline:
    """The tree as adopted, and the paths the applied updates owned then (their manifests say
    what those hold, so the baseline does not)."""

    adoption: Adoption
    entries: dict[str, inventory.Entry]
    managed: frozenset[str]


def skip(ctx: Context) -> Callable[[str], bool]:
    """What is not the app's code: root's records, and the app's data (its writable directories,
    its database and the files SQLite keeps beside it)."""
    db = ctx.database_path
    data: set[str] = set()
    if db is not None and ctx.app_root in db.parents:
        rel = db.relative_to(ctx.app_root).as_posix()
        data = {rel, *(rel + s for s in database.SIDECARS)}

    # the virtualenv is not the app's code: the runtime builds it, and records its link itself
    venv = set() if ctx.app.venv is None else {ctx.app.venv + s for s in ("", ".adopted", ".nesop-new")}

    def skipped(rel: str) -> bool:
        return rel in ("backups", "logs") or rel in data or rel in venv or ctx.app.is_writable(rel)

    return skipped


def updated_paths(ctx: Context, st: state.State) -> set[str]:
    """Every path an applied version wrote, deleted or renamed (a kept config file's ``.nesop-new``
    included): the applied manifests say what those hold."""
    paths: set[str] = set()
    for entry in st.applied:
        for f in state.stored_manifest(ctx, entry.version).files:
            paths.add(f.path)
            if f.renamed_from:
                paths.add(f.renamed_from)
            if f.action is not Action.DELETE and f.path in entry.kept_config:
                paths.add(f.path + NEW_SUFFIX)
    return paths


def adopt(ctx: Context, config_file: Path | None) -> Adoption:
    """Record the app's settings and its whole tree (again, if it was adopted before; without a
    ``config_file`` the earlier record's stays named)."""
    if not ctx.app_root.is_dir():
        raise RefusedError(
            f"{ctx.app_root} is not a directory: there is no app to adopt",
            hint="deploy the app there first, or check [app] root in its nesop-deb.toml",
        )
    checks.app_accounts(ctx)
    checks.root_records(ctx)  # backups/ and logs/ must be root's before root writes its log there
    runlog.setup(ctx.log_file)
    with lock.held(ctx.state_dir / "lock", f"adopt {ctx.app.name}"):
        journal = state.read_journal(ctx)
        if journal is not None:
            raise RefusedError(
                f"an interrupted {journal.get('kind')} of {journal.get('version')} is pending",
                hint="run `nesop-update recover` first",
            )
        st = state.load(ctx)
        earlier = recorded(ctx)
        if config_file is None and earlier is not None and earlier.config_file is not None:
            config_file = Path(earlier.config_file)
        with runlog.step(f"adopt {ctx.app.name} at {ctx.app_root}"):
            with safefs.Tree.open(ctx.app_root) as app:
                found = inventory.scan(app, skip(ctx))
            if found.refused:
                more = f" (and {len(found.refused) - 1} more)" if len(found.refused) > 1 else ""
                raise RefusedError(
                    f"{ctx.app_root}/{found.refused[0]}{more}",
                    hint="fix that entry and adopt again; nothing was recorded",
                )
            adoption = Adoption(
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                root=ctx.app.root,
                config_file=None if config_file is None else str(config_file),
                files=sum(1 for e in found.entries.values() if e.kind != inventory.DIR),
            )
            files = {
                "format": FORMAT,
                "time": adoption.time,
                "root": adoption.root,
                "entries": {rel: e.to_dict() for rel, e in found.entries.items()},
                "managed": sorted(updated_paths(ctx, st)),
            }
            record = {
                "format": FORMAT,
                "package": ctx.package,
                "config": ctx.app.to_config(),
                **adoption.to_dict(),
            }
            state.save_adoption(ctx, record, files)
            log.info(
                "%s: recorded %d files of %s in %s (live: %s)",
                ctx.app.name,
                adoption.files,
                ctx.app_root,
                state.adoption_dir(ctx),
                st.current or "unmanaged",
            )
    return recorded(ctx) or adoption


def _adoption(data: dict[str, Any]) -> Adoption:
    config_file = data.get("config_file")
    return Adoption(
        str(data["time"]),
        str(data["root"]),
        None if config_file is None else str(config_file),
        int(data["files"]),
        str(data["files_sha256"]),
    )


def recorded(ctx: Context) -> Adoption | None:
    """The app's adoption; None when it was never adopted."""
    data = state.read_adoption(ctx)
    if data is None:
        return None
    try:
        return _adoption(data)
    except (KeyError, TypeError, ValueError) as exc:
        path = state.adoption_dir(ctx) / state.ADOPTION
        raise state.StateError(f"{path}: damaged ({exc!r})", hint="run `nesop-update adopt` again") from None


def baseline(ctx: Context) -> Baseline | None:
    """The tree as adopted; None when the app was never adopted."""
    adoption = recorded(ctx)
    if adoption is None:
        return None
    path = state.adoption_dir(ctx) / state.ADOPTED_FILES
    data = state.read_adopted_files(ctx, adoption.files_sha256)
    try:
        entries = {str(rel): inventory.Entry.from_dict(e) for rel, e in data["entries"].items()}
        managed = frozenset(str(p) for p in data.get("managed", []))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise state.StateError(f"{path}: damaged ({exc!r})", hint="run `nesop-update adopt` again") from None
    return Baseline(adoption, entries, managed)


def adopted_contexts(root: Path) -> list[Context]:
    """Every app adopted on the system below ``root``, with the settings its adoption recorded."""
    found = []
    for package, data in state.adoption_records(root):
        if not config.is_package_name(package) or data.get("package") != package:
            continue
        try:
            mf.check_config(data["config"])  # the settings root acts on, checked as a manifest's are
            settings = AppSettings.from_manifest_config(data["config"])
        except (KeyError, TypeError, ValueError, mf.ManifestError):
            continue  # damaged: left out, as an unreadable manifest is
        found.append(Context(package, settings, root))
    return found
