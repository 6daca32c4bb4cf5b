"""What ``status`` and ``validate --check service`` say of the socket unit and the gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nesop_deb.runtime import service, state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.gating import dropin, gatefile


@dataclass(frozen=True)
class GateReport:
    socket: str | None  # the socket unit's name when the app has one (configured or installed)
    socket_state: str  # e.g. "active/listening", "not installed"
    enabled: str
    listen: tuple[str, ...]
    gate: str  # "open", "held: <holder>", "left by <holder>: the app waits for recovery"
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.socket,
            "state": self.socket_state,
            "enabled": self.enabled,
            "listen": list(self.listen),
            "gate": self.gate,
            "problems": list(self.problems),
        }


def report(ctx: Context, svc: service.ServiceStatus) -> GateReport:
    problems: list[str] = []
    gate = _gate(ctx, problems)
    # the generator writes the drop-in for an app whose update package is installed (an app only
    # adopted gets it with its first package, whose stop reloads systemd first)
    managed = (ctx.share / "update_manifest.json").exists()
    if managed and svc.exists and not dropin.loaded(svc.drop_ins):
        problems.append(
            f"{ctx.app.service} has not loaded the update gate ({dropin.NAME}): a start during an"
            " update would not wait; run `systemctl daemon-reload` (is nesop-deb installed?)"
        )
    name = ctx.app.socket
    sock = service.socket_status(name)
    if not sock.exists:
        if ctx.app.socket_file is not None:
            problems.append(f"{name} is not installed: [app] socket_file names {ctx.app.socket_file}")
            return GateReport(name, "not installed", "", (), gate, problems)
        return GateReport(None, "none", "", (), gate, problems)
    if not sock.listening:
        problems.append(
            f"{name} is {sock.active_state}/{sock.sub_state}: connections are refused"
            f" (`systemctl start {name}`)"
        )
    if sock.enabled != "enabled":
        problems.append(f"{name} is {sock.enabled or 'not enabled'}: it would not listen after a reboot")
    if ctx.app.service not in sock.triggers:
        problems.append(
            f"{name} does not start {ctx.app.service} (it triggers {' '.join(sock.triggers) or 'nothing'})"
        )
    return GateReport(
        name, f"{sock.active_state}/{sock.sub_state}", sock.enabled, sock.listen, gate, problems
    )


def _gate(ctx: Context, problems: list[str]) -> str:
    g = gatefile.inspect(ctx)
    if not g.holder:
        return "open"
    if g.locked:
        return f"held ({g.holder})"
    if state.journal_path(ctx).exists():
        problems.append(
            f"the gate was left closed by {g.holder}, which is gone: the app waits until"
            " `nesop-update recover` finishes the interrupted operation"
        )
        return f"left closed ({g.holder}): the app waits for the recovery"
    return "open (a stale holder line, cleared by the next operation)"
