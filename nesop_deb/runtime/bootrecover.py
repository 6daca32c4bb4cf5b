"""Recovery at boot: an update cut off by a crash or a power loss is finished before the app runs.

The toolchain package ships ``nesop-update-recover@.service`` and a systemd generator that makes
every managed app's service ``Requires=`` and ``After=`` its own instance of it
(``nesop-update-recover@<service name>.service``). That instance runs ``nesop-update recover
--boot --app <package>`` when the app's journal exists, so the app starts on one whole version:
the old one (the undo), or the new one if the update had committed. When the recovery fails, the
app does not start at all (systemd: "Dependency failed"), rather than serve a mixed tree.

What differs from ``nesop-update recover``: the service is left alone (systemd starts it as soon
as this returns; a ``systemctl start`` from here would wait for this very unit), and an app whose
service already runs is not touched (its files would change under it). When another process holds
the lock, this waits for it (at most :data:`LOCK_WAIT`), unless that process is the one starting
the app (``service.starting``): the runtime starts an app only on a whole tree, and its start is
what pulled this unit in, so waiting would deadlock both. dpkg's own state is fixed by the next
``dpkg --configure -a``, as after any interrupted package run.
"""

from __future__ import annotations

import contextlib
import time

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.runtime import lock, operations, service, state
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log

NOTHING = "nothing to recover"
LOCK_WAIT = 480.0  # seconds; below the unit's TimeoutStartSec (10 min), so a hang ends as a failure


def recover(ctx: Context) -> str:
    """Finish ``ctx``'s pending transaction before its service starts; returns what was done."""
    if not state.journal_path(ctx).exists():
        return NOTHING
    try:
        runlog.setup(ctx.log_file)
    except (OSError, NesopError) as exc:  # logs/ not root's: the journal has the lines all the same
        runlog.setup(None)
        log.warning("cannot write %s (%s); logging to the journal only", ctx.log_file, exc)
    with contextlib.ExitStack() as held:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                held.enter_context(lock.held(operations.lock_path(ctx), "recover at boot", wait=0))
                break
            except RefusedError as exc:
                pid = service.starting(ctx.app.service)
                if pid is not None:
                    # the holder made the tree whole and is starting the app: its start pulled
                    # this unit in, and waits for it
                    log.info("%s; pid %d is starting %s on a whole tree", exc.message, pid, ctx.app.service)
                    return f"pid {pid} holds the lock and is starting the app"
                if time.monotonic() >= deadline:
                    raise NesopError(
                        f"recovery of {ctx.app.name} at boot: {exc.message} for {LOCK_WAIT:g} s",
                        hint=f"{ctx.app.service} does not start until it is done; then "
                        f"`systemctl start {ctx.app.service}`",
                    ) from None
                time.sleep(0.2)
        if not state.journal_path(ctx).exists():
            return NOTHING  # the holder finished it
        svc = service.status(ctx.app.service)
        if svc.active_state not in ("inactive", "failed", ""):
            raise RefusedError(
                f"{ctx.app.service} is {svc.active_state}: a pending transaction is finished here only "
                "before the app starts",
                hint=f"run `nesop-update recover --app {ctx.app.name}`: it stops and starts the app itself",
            )
        try:
            done = operations.recover(ctx, boot=True)
        except NesopError as exc:
            raise NesopError(
                f"recovery of {ctx.app.name} at boot failed: {exc}",
                hint=f"{ctx.app.service} does not start until it succeeds; fix the cause, then "
                f"`systemctl start {ctx.app.service}` (the recovery runs first) or "
                f"`nesop-update recover --app {ctx.app.name}`",
            ) from exc
        return done or NOTHING
