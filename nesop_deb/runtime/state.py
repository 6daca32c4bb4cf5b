"""Persistent state in ``/var/lib/<package>/`` (0700): what is applied, and what is in flight.

- ``state.json``: the applied stack, oldest first; its last entry is the live version.
- ``versions/<version>/``: each applied version's manifest and migrations (rollbacks included),
  so undoing a version is data: a newer package's code need not know later versions.
- ``journal.json``: the write-ahead journal of the transaction in flight (absent when idle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError
from nesop_deb.manifest import NAME as MANIFEST_NAME
from nesop_deb.manifest import Manifest, loads
from nesop_deb.runtime import safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_json_atomic

FORMAT = 1


class StateError(NesopError):
    """The state directory is unreadable or inconsistent."""


@dataclass
class Applied:
    version: str
    previous: str | None  # the version live before this one (None: adopted or first install)
    backup: str | None  # the backup taken before applying it
    time: str
    migrations: list[str] = field(default_factory=list)
    kept_config: list[str] = field(default_factory=list)


@dataclass
class State:
    applied: list[Applied] = field(default_factory=list)

    @property
    def current(self) -> str | None:
        return self.applied[-1].version if self.applied else None

    def entry(self, version: str) -> Applied | None:
        return next((a for a in self.applied if a.version == version), None)

    def to_json(self) -> str:
        data = {"format": FORMAT, "applied": [asdict(a) for a in self.applied]}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _state_file(ctx: Context) -> Path:
    return ctx.state_dir / "state.json"


def load(ctx: Context) -> State:
    path = _state_file(ctx)
    if not path.exists():
        return State()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return State([Applied(**a) for a in data.get("applied", [])])
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(
            f"{path}: unreadable state ({exc})", hint="restore it from a backup of /var/lib"
        ) from None


def save(ctx: Context, state: State) -> None:
    ensure_dir(ctx)
    write_json_atomic(_state_file(ctx), state.to_json())


def ensure_dir(ctx: Context) -> None:
    ctx.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = ctx.state_dir.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise StateError(
            f"{ctx.state_dir}: not a directory of root's own; the runtime keeps its state only there",
            hint=f"move it aside (mv {ctx.state_dir} {ctx.state_dir}.old); it is made again",
        )
    ctx.state_dir.chmod(0o700)


def version_dir(ctx: Context, version: str) -> Path:
    return ctx.state_dir / "versions" / version


def recorded_migrations(ctx: Context, version: str) -> Path:
    """The copy of a version's migrations (with their rollbacks) kept by :func:`record_version`."""
    return version_dir(ctx, version) / "migrations"


def record_version(ctx: Context, manifest: Manifest, migrations_src: Path) -> None:
    """Keep a version's manifest and migrations (its undo data) in the state directory."""
    vdir = version_dir(ctx, manifest.version)
    tmp = vdir.with_name(vdir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "migrations").mkdir(parents=True)
    (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    for m in manifest.migrations:
        for name in (m.file, m.rollback_file):
            if name is not None:
                shutil.copy2(migrations_src / name, tmp / "migrations" / name)
    shutil.rmtree(vdir, ignore_errors=True)
    tmp.rename(vdir)


def stored_manifest(ctx: Context, version: str) -> Manifest:
    path = version_dir(ctx, version) / MANIFEST_NAME
    try:
        return loads(path.read_bytes())
    except FileNotFoundError:
        raise StateError(f"{path}: the undo data of {version} is missing") from None


# --- backup seals -------------------------------------------------------------------------------


def _seal_path(ctx: Context, name: str) -> Path:
    return ctx.state_dir / "backup-seals" / name


def seal_backup(ctx: Context, name: str, digest: str) -> None:
    """Record the sha256 of a backup's manifest where only root can write: a backup whose manifest
    does not match it (one the app's account forged) is never restored."""
    ensure_dir(ctx)
    write_json_atomic(_seal_path(ctx, name), json.dumps({"manifest_sha256": digest}) + "\n")


def backup_seal(ctx: Context, name: str) -> str | None:
    try:
        data = json.loads(_seal_path(ctx, name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{_seal_path(ctx, name)}: unreadable ({exc})") from None
    digest = data.get("manifest_sha256") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) else None


def drop_seal(ctx: Context, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _seal_path(ctx, name).unlink()


# --- the write-ahead journal -------------------------------------------------------------------


def journal_path(ctx: Context) -> Path:
    return ctx.state_dir / "journal.json"


def read_journal(ctx: Context) -> dict[str, Any] | None:
    path = journal_path(ctx)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable journal ({exc})") from None
    return data if isinstance(data, dict) else None


def write_journal(ctx: Context, data: dict[str, Any]) -> None:
    """Durably record the transaction's progress (fsynced before the next mutating step)."""
    ensure_dir(ctx)
    write_json_atomic(journal_path(ctx), json.dumps(data, indent=2, sort_keys=True) + "\n")


def clear_journal(ctx: Context) -> None:
    with contextlib.suppress(FileNotFoundError):
        journal_path(ctx).unlink()


# --- adoption: an app deployed by hand, taken on before its first package ---------------------


def adoption_dir(ctx: Context) -> Path:
    return ctx.state_dir / "adoption"


ADOPTION = "adoption.json"  # what was adopted: the app's settings, when, from which config file
ADOPTED_FILES = "files.json"  # the tree as it was then: every path with kind, sha256, mode, owner


def save_adoption(ctx: Context, record: dict[str, Any], files: dict[str, Any]) -> None:
    """Record an adoption: the tree first, then the record that names it with the tree's sha256 (a
    crash between the two writes leaves a tree its record does not name: an incomplete adoption,
    never a wrong one)."""
    ensure_dir(ctx)
    d = adoption_dir(ctx)
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    text = json.dumps(files, sort_keys=True) + "\n"
    write_json_atomic(d / ADOPTED_FILES, text)
    record = {**record, "files_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_json_atomic(d / ADOPTION, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_adoption(ctx: Context) -> dict[str, Any] | None:
    """The adoption record; None when the app was never adopted."""
    path = adoption_dir(ctx) / ADOPTION
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable ({exc})", hint="run `nesop-update adopt` again") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: not a JSON object", hint="run `nesop-update adopt` again")
    return data


def read_adopted_files(ctx: Context, sha256: str) -> dict[str, Any]:
    """The tree an adoption recorded, which must be the one its record names by ``sha256``."""
    path = adoption_dir(ctx) / ADOPTED_FILES
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path}: unreadable ({exc})", hint="run `nesop-update adopt` again") from None
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise StateError(
            f"{path} is not the tree its adoption recorded: an adoption was interrupted",
            hint="run `nesop-update adopt` again",
        )
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise StateError(f"{path}: not a JSON object", hint="run `nesop-update adopt` again")
    return data


def root_only(path: Path) -> bool:
    """``path`` is no link, root's, and no one else may write it (a directory in /var/lib that an
    app's account owns, such as a unit's StateDirectory, is not the runtime's)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return not stat.S_ISLNK(st.st_mode) and safefs.is_private(st)


def adoption_records(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(package, record) of every app adopted on the system below ``root``. Only records root
    wrote count: the state directory, its ``adoption/`` and the record itself must be root's and
    writable by no one else. Unreadable ones are left out (as an unreadable manifest is: the
    commands that use one report it)."""
    found = []
    for path in sorted((root / "var/lib").glob(f"*/adoption/{ADOPTION}")):
        if not all(root_only(p) for p in (path.parent.parent, path.parent, path)):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append((path.parent.parent.name, data))
    return found


# --- files a partial update left behind ----------------------------------------------------------

LEFT_BEHIND = "left_behind.json"  # beside a version's manifest: {"files": {path: sha256 or null}}


def left_behind(ctx: Context, version: str | None) -> dict[str, str | None]:
    """The files that partial updates up to ``version`` left as they were: app-relative path →
    the sha256 the server keeps (None: absent). Empty when nothing was left behind, and for
    versions recorded before this was kept."""
    if version is None:
        return {}
    path = version_dir(ctx, version) / LEFT_BEHIND
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable ({exc})", hint="restore it from a backup of /var/lib") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in files.items()
    ):
        raise StateError(f"{path}: not a map of paths to sha256", hint="restore it from a backup of /var/lib")
    return dict(files)


def carry_left_behind(before: dict[str, str | None], manifest: Manifest) -> dict[str, str | None]:
    """What is left behind once ``manifest`` is applied on top of ``before``: a file it writes
    (or deletes) no longer is; one it leaves out is, at the content the server already keeps."""
    written = {p for f in manifest.files for p in (f.path, f.renamed_from) if p is not None}
    after = {p: sha for p, sha in before.items() if p not in written}
    for lb in manifest.left_behind:
        after.setdefault(lb.path, lb.base_sha256)
    return dict(sorted(after.items()))


def record_left_behind(ctx: Context, manifest: Manifest, previous: str | None) -> None:
    """Beside the version's undo data: what is left behind once it is applied on ``previous``."""
    files = carry_left_behind(left_behind(ctx, previous), manifest)
    path = version_dir(ctx, manifest.version) / LEFT_BEHIND
    if files:
        write_json_atomic(path, json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
