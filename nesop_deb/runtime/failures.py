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
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_json_atomic
from nesop_deb.text import printable

# the steps of an update that run once the app is stopped: a failure there cost an outage
AFTER_STOP = ("snapshot-db", "apply-files", "migrate", "unit", "start", "health", "commit")

_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EINTR, errno.EAGAIN}
# SQLite's primary result codes for a busy or locked database, an I/O error and a full disk
_TRANSIENT_SQLITE = {5, 6, 10, 13}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL
FULL_BELOW = 1 << 20  # bytes free: a file system with less is full for the update's purposes


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


def transient(exc: BaseException, ctx: Context | None = None) -> bool:
    """Whether ``exc`` is of a kind that goes away without a fix to the app: a full disk, a signal,
    a busy database. Judged from the exception's type and codes, and (with ``ctx``) from the file
    systems the update writes being full now, never from a message's text: a message may quote
    the app (its health answer, its log, its migration's error), which must not be able to turn
    a failure into one that is retried at every apt run."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        code = getattr(current, "sqlite_errorcode", None)
        if isinstance(current, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _TRANSIENT_SQLITE:
            return True
        if type(current).__name__ == "Interrupted":  # the transaction's own signal exception
            return True
        current = current.__cause__ or current.__context__
    return ctx is not None and _full(ctx)


def _full(ctx: Context) -> bool:
    """Whether a file system the update writes (the app's, its database's, the state's) is full."""
    places = [ctx.app_root, ctx.state_dir]
    with contextlib.suppress(NesopError):
        if ctx.database_path is not None:
            places.append(ctx.database_path.parent)
    for place in places:
        try:
            st = os.statvfs(place)
        except OSError:
            continue
        if st.f_bavail * st.f_frsize < FULL_BELOW:
            return True
    return False


def _path(ctx: Context) -> Path:
    return ctx.state_dir / "failed.json"


def record(ctx: Context, manifest: Manifest, step: str, reason: str, *, is_transient: bool) -> Failure:
    failure = Failure(
        version=manifest.version,
        manifest_sha256=manifest_digest(manifest),
        step=step,
        reason=printable(reason if len(reason) <= 300 else reason[:297] + "..."),  # it quotes the app
        transient=is_transient,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    keep(ctx, failure)
    return failure


def keep(ctx: Context, failure: Failure) -> None:
    """Write ``failure`` as the record (``retry`` puts one back as it was)."""
    state.ensure_dir(ctx)
    write_json_atomic(_path(ctx), json.dumps(asdict(failure), indent=2, sort_keys=True) + "\n")


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
