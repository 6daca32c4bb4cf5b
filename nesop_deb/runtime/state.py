"""Persistent state in ``/var/lib/<package>/`` (0700): what is applied, and what is in flight.

- ``state.json``: the applied stack, oldest first; its last entry is the live version.
- ``versions/<version>/``: each applied version's manifest and migrations (rollbacks included),
  so undoing a version is data: a newer package's code need not know later versions.
- ``journal.json``: the write-ahead journal of the transaction in flight (absent when idle).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError
from nesop_deb.manifest import NAME as MANIFEST_NAME
from nesop_deb.manifest import Manifest, loads
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
    ctx.state_dir.mkdir(parents=True, exist_ok=True)
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
