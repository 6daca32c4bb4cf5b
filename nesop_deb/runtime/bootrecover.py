"""Recovery at boot: an update cut off by a crash or a power loss is finished before the app runs.

The toolchain package ships ``nesop-update-recover@.service`` and a systemd generator that makes
every managed app's service ``Requires=`` and ``After=`` its own instance of it
(``nesop-update-recover@<service name>.service``). That instance runs ``nesop-update recover
--boot --app <package>`` when the app's journal exists, so the app starts on one whole version:
the old one (the undo), or the new one if the update had committed. When the recovery fails, the
app does not start at all (systemd: "Dependency failed"), rather than serve a mixed tree.

What differs from ``nesop-update recover``: the service is left alone (systemd starts it as soon
as this returns; a ``systemctl start`` from here would wait for this very unit), the lock is not
waited for (a process holding it runs the transaction, and starts the app itself), and an app
whose service already runs is not touched (its files would change under it). dpkg's own state is
fixed by the next ``dpkg --configure -a``, as after any interrupted package run.
"""

from __future__ import annotations

import contextlib

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.runtime import lock, operations, service, state
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log

NOTHING = "nothing to recover"


def recover(ctx: Context) -> str:
    """Finish ``ctx``'s pending transaction before its service starts; returns what was done."""
    if not state.journal_path(ctx).exists():
        return NOTHING
    runlog.setup(ctx.log_file)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock.held(operations.lock_path(ctx), "recover at boot", wait=0))
        except RefusedError as exc:
            # the holder is the transaction itself (its start step pulled this unit in) or a
            # recovery: it finishes the journal and starts the app; waiting here would deadlock
            log.info("%s; it finishes the transaction itself", exc.message)
            return "another operation holds the lock and finishes the transaction"
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
