"""The gate: ``/var/lib/<package>/gate``, held with an exclusive ``flock`` while the app must not
start, because its tree, its virtualenv, its database or its units are being changed.

The toolchain's systemd generator gives the app's service a drop-in whose ``ExecCondition=``
(see :mod:`.dropin`) waits for a shared lock on this file before every start, and then, while the
file still names a holder and the app's journal exists, keeps waiting: a start the socket unit
triggers, an operator's ``systemctl start`` or a timer's all wait here until the runtime has made
the tree whole again. The condition only ever waits or lets the start go on (it never fails: a
failing start would make the socket unit retrigger until it hits its trigger limit).

What a crash leaves:

- SIGKILL of the holder: the kernel drops the lock, the file keeps the holder's line and the
  journal is there, so the app stays gated until ``dpkg --configure -a`` or ``nesop-update
  recover`` finishes the transaction (connections keep queueing on the socket meanwhile);
- a reboot: the recovery unit runs before the app, finishes the transaction and removes the
  journal, and a holder's line without a journal holds nothing; :func:`release` clears it.

flock locks belong to an open file description: a second ``open`` of the file in the holding
process would wait for its own lock, so the descriptor this process holds is kept here (one per
gate path) and :func:`hold` while held returns at once. The descriptor is close-on-exec; the
runtime's own forked children (:mod:`nesop_deb.runtime.owner`) close it before they run anything.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from nesop_deb.errors import RefusedError
from nesop_deb.runtime import lock
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log

NAME = "gate"
WAIT = 10.0  # seconds: other holders of the lock are the gate's own momentary shared checks

_held: dict[Path, int] = {}  # gate path -> the descriptor holding its exclusive lock


@dataclass(frozen=True)
class GateState:
    holder: str  # the line the holder wrote; "" when open
    locked: bool  # a live process holds it now


def path(ctx: Context) -> Path:
    return ctx.state_dir / NAME


def _locked(p: Path) -> int:
    """The gate's descriptor, opened (never through a link) and locked exclusively."""
    fd = lock.open_file(p, "the gate")
    try:
        lock.acquire(
            fd,
            WAIT,
            lambda holder: RefusedError(
                f"the gate {p} is held by {holder}", hint="wait for that operation to finish"
            ),
            step=0.02,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def hold(ctx: Context, why: str) -> None:
    """Close the gate: from now on a start of the app waits. Idempotent in this process."""
    p = path(ctx)
    if p in _held:
        return
    fd = _held[p] = _locked(p)
    try:
        os.ftruncate(fd, 0)
        # no fsync: after a power loss the boot's recovery decides, not this line
        os.pwrite(fd, f"pid {os.getpid()}: {why}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock holds all the same, only a crash is not covered
        log.warning("cannot write the gate %s (%s): it is held, but a crash would leave it open", p, exc)


def release(ctx: Context) -> None:
    """Open the gate: a start waiting for it goes on. Also clears what a killed holder left.
    Idempotent; a missing state directory means there is no gate to open."""
    p = path(ctx)
    fd = _held.get(p)
    if fd is None:
        if not p.parent.is_dir():
            return
        fd = _locked(p)
        if os.fstat(fd).st_size:
            log.info("opened the gate %s, left held by a process that is gone", p)
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _held.pop(p, None)
        os.close(fd)


def held_here(ctx: Context) -> bool:
    """Whether this process holds the gate."""
    return path(ctx) in _held


def inspect(ctx: Context) -> GateState:
    """What the gate says now, without changing it (for status and validate)."""
    p = path(ctx)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return GateState("", False)
    try:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if p in _held:
            return GateState(holder, True)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return GateState(holder, True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return GateState(holder, False)
    finally:
        os.close(fd)
