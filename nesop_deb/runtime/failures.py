"""A version that failed after the stop is not tried again on its own.

dpkg leaves a version whose postinst failed half-configured (``iF``), and every later apt run that
configures pending packages runs that postinst again: without this record, each would stop the
app and fail the same way, an outage each time, until someone acts. So the failure is recorded in
``/var/lib/<package>/failed.json`` (root's) with the manifest's sha256; a postinst of the same
package (same manifest) refuses before the stop, naming the two ways out. Failures that are
transient by nature (a full disk, a signal, a lock) do not block: they are retried as before.

The record goes when a version is committed, when the live version is configured again (``apt
install <package>=<live version>``: dpkg is honest again), and on ``nesop-update retry``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_json_atomic

# the steps of an update that run once the app is stopped: a failure there cost an outage
AFTER_STOP = ("snapshot-db", "apply-files", "migrate", "start", "health", "commit")

_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EINTR, errno.EAGAIN}
# how a full disk reads once wrapped in a message (SQLite, the reserve) and a signal's message
_TRANSIENT_TEXT = (
    "No space left",
    "Disk quota exceeded",
    "disk is full",
    "disk I/O error",
    "database is locked",
    "table is locked",
    "cannot set aside",
    "interrupted by signal",
)


@dataclass(frozen=True)
class Failure:
    version: str
    manifest_sha256: str
    step: str
    reason: str
    transient: bool
    time: str

    @property
    def blocks_retry(self) -> bool:
        """A failure after the stop that nothing suggests would go away by itself."""
        return self.step in AFTER_STOP and not self.transient


def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is of a kind that goes away without a fix to the app:
    a full disk, a signal, a busy database."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and transient_text(str(current)):
            return True
        if type(current).__name__ == "Interrupted":  # the transaction's own signal exception
            return True
        current = current.__cause__ or current.__context__
    return transient_text(str(exc))


def transient_text(reason: str) -> bool:
    return any(marker in reason for marker in _TRANSIENT_TEXT)


def _path(ctx: Context) -> Path:
    return ctx.state_dir / "failed.json"


def record(ctx: Context, manifest: Manifest, step: str, reason: str, *, is_transient: bool) -> Failure:
    failure = Failure(
        version=manifest.version,
        manifest_sha256=manifest_digest(manifest),
        step=step,
        reason=reason if len(reason) <= 300 else reason[:297] + "...",
        transient=is_transient,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    state.ensure_dir(ctx)
    write_json_atomic(_path(ctx), json.dumps(asdict(failure), indent=2, sort_keys=True) + "\n")
    return failure


def read(ctx: Context) -> Failure | None:
    """The last failed version's record; an unreadable one counts as none (it only ever spares
    an outage, never guards data)."""
    try:
        data = json.loads(_path(ctx).read_text(encoding="utf-8"))
        return Failure(**{k: data[k] for k in Failure.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def clear(ctx: Context) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(ctx).unlink()


def refuse_repeat(ctx: Context, manifest: Manifest, live: str | None) -> None:
    """Raise :class:`RefusedError` if ``manifest`` is the package that failed after the stop."""
    failure = read(ctx)
    if failure is None or not failure.blocks_retry:
        return
    if (failure.version, failure.manifest_sha256) != (manifest.version, manifest_digest(manifest)):
        return
    back = f"apt install {ctx.package}={live}" if live else f"apt remove {ctx.package}"
    raise RefusedError(
        f"{ctx.package} {failure.version} failed at {failure.step} on {failure.time} ({failure.reason}); "
        "it is not tried again on its own",
        hint=f"go back with `{back}`, or fix the cause and run `nesop-update retry`",
    )
