"""The app stops and starts only on a whole tree: the gate, and the app's socket unit.

An app whose ``[app] socket_file`` names a socket unit is started by systemd on a connection: the
listening socket stays open while the app is stopped, connections queue in the kernel, and the
app that starts next serves them. A connection that arrives in the middle of an update would
start the old app on a half-updated tree, so every stop the runtime makes closes the gate first
(:mod:`.gatefile`) and every start opens it: between the two, whatever starts the app (the
socket, an operator, a timer) waits in the drop-in's ``ExecCondition=`` (:mod:`.dropin`).

The interface: :func:`stop_app`, :func:`start_app`, :func:`hold`, :func:`release`, and what
``status`` and ``validate`` report (:func:`socket_installed`, :func:`inspect`, :mod:`.dropin`).
"""

from __future__ import annotations

import os

from nesop_deb.errors import RefusedError
from nesop_deb.runtime import service, unitfile
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.gating import dropin
from nesop_deb.runtime.gating.gatefile import GateState, held_here, hold, inspect, release
from nesop_deb.runtime.gating.report import GateReport, report
from nesop_deb.runtime.log import log

__all__ = [
    "GateReport",
    "GateState",
    "ensure_dropin",
    "held_here",
    "hold",
    "inspect",
    "release",
    "report",
    "socket_installed",
    "start_app",
    "stop_app",
]


def socket_installed(ctx: Context) -> str | None:
    """The app's socket unit when one is installed (where the runtime installs it), else None."""
    name = ctx.app.socket
    return name if os.path.lexists(unitfile.path(ctx, name)) else None


def ensure_dropin(ctx: Context, st: service.ServiceStatus) -> None:
    """Before the stop, while the app serves: the gate's drop-in must be loaded, or a start
    mid-update would not wait. systemd loads it at its next reload (the toolchain's generator
    writes it for every update package unpacked), so one ``daemon-reload`` now when it is not."""
    if not st.exists or dropin.loaded(st.drop_ins):
        return
    log.info("%s has not loaded the update gate (%s) yet: reloading systemd", ctx.app.service, dropin.NAME)
    service.daemon_reload()
    if dropin.loaded(service.status(ctx.app.service).drop_ins):
        return
    socket = socket_installed(ctx)
    if socket is not None:  # its connections would start the old app in the middle of the update
        raise RefusedError(
            f"{ctx.app.service} has no update gate ({dropin.NAME} is not loaded) and {socket} starts"
            " it on any connection: the update would run under a live app",
            hint="check that nesop-deb is installed and `systemctl cat "
            f"{ctx.app.service}` lists the drop-in; nothing was changed",
        )
    log.warning(
        "%s has no update gate (%s): a start during the update would not wait", ctx.app.service, dropin.NAME
    )


def stop_app(ctx: Context, why: str) -> None:
    """Close the gate, then stop the app's service (its socket keeps listening)."""
    hold(ctx, why)
    if service.status(ctx.app.service).exists:
        service.stop(ctx.app.service)


def start_app(ctx: Context, *, reset_failed: bool = True) -> None:
    """Open the gate, then start the app's service (and its socket, when installed)."""
    release(ctx)
    service.start(ctx.app.service, reset_failed=reset_failed, socket=socket_installed(ctx))
