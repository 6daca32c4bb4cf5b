"""The app's service, through ``systemctl`` (never ``deb-systemd-invoke``: its exit code proves
nothing, docs/architecture.md §3 fact 9). Every call goes through the subprocess seam."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import NesopError


class ServiceError(NesopError):
    """The service could not be stopped or started."""


@dataclass(frozen=True)
class ServiceStatus:
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int
    restarts: int
    drop_ins: tuple[str, ...] = ()  # the drop-in files systemd loaded for it

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")


_PROPERTIES = "LoadState,ActiveState,SubState,MainPID,NRestarts,DropInPaths"


def _show(unit: str, properties: str) -> dict[str, str]:
    """``systemctl show``'s ``properties`` of ``unit`` (missing ones are left out)."""
    out = proc.run(["systemctl", "show", "-p", properties, "--", unit], check=False).out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def status(unit: str) -> ServiceStatus:
    values = _show(unit, _PROPERTIES)
    return ServiceStatus(
        values.get("LoadState", ""),
        values.get("ActiveState", ""),
        values.get("SubState", ""),
        int(values.get("MainPID", "0") or 0),
        int(values.get("NRestarts", "0") or 0),
        tuple(values.get("DropInPaths", "").split()),
    )


def _systemctl(*args: str) -> None:
    try:
        proc.run(["systemctl", *args], timeout=120)
    except NesopError as exc:
        raise ServiceError(str(exc)) from None


def stop(unit: str) -> None:
    _systemctl("stop", "--", unit)


def start(unit: str, *, reset_failed: bool = True, socket: str | None = None) -> None:
    """Start ``unit``. reset-failed first: a unit that hit its start limit in a failed attempt
    must be startable again. The update's own start skips it when the unit was known not to be
    failed (it runs while the app is down, and every call there is outage).

    The runtime starts the app only on a whole tree (a new version applied, or an old one put
    back), and says so while it does: the recovery unit the start pulls in sees this process
    holds the lock and is starting the app, and need not wait for it (see :func:`starting`).

    ``socket``: the app's socket unit, started with it (one call): a socket that failed, or that
    an update installed, listens again before the app takes it over."""
    units = [unit] if socket is None else [socket, unit]
    if reset_failed:
        proc.run(["systemctl", "reset-failed", "--", *units], check=False)
    marker = _starting_dir() / unit
    try:
        marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker.write_text(f"{os.getpid()}\n", encoding="ascii")
        said = True
    except OSError:
        said = False  # no /run to say it in: the recovery unit waits for the lock, bounded
    try:
        _systemctl("start", "--", *units)
    finally:
        if said:
            with contextlib.suppress(OSError):
                marker.unlink()


def _starting_dir() -> Path:
    return Path(os.environ.get("DPKG_ROOT") or "/") / "run/nesop-deb/starting"


def starting(unit: str) -> int | None:
    """The pid of a live runtime process starting ``unit`` now (through :func:`start`), if any."""
    try:
        pid = int((_starting_dir() / unit).read_text(encoding="ascii").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def daemon_reload() -> None:
    _systemctl("daemon-reload")


def enable(unit: str) -> None:
    _systemctl("enable", "--", unit)


def disable(unit: str, *, now: bool = False) -> None:
    _systemctl("disable", *(["--now"] if now else []), "--", unit)


def start_unit(unit: str) -> None:
    """Start a unit that is not the app (its socket): no gate, no marker."""
    _systemctl("start", "--", unit)


def restart(unit: str) -> None:
    _systemctl("restart", "--", unit)


def journal_tail(unit: str, lines: int = 5) -> str:
    # the unit's own processes only: systemd's messages about the unit say less than the app does
    out = proc.run(
        ["journalctl", f"_SYSTEMD_UNIT={unit}", "-n", str(lines), "--no-pager", "-o", "cat"], check=False
    ).out
    return " | ".join(line.strip() for line in out.splitlines() if line.strip())


@dataclass(frozen=True)
class SocketStatus:
    load_state: str
    active_state: str
    sub_state: str
    enabled: str  # UnitFileState: enabled, disabled, ...
    listen: tuple[str, ...]  # what it listens on, e.g. "127.0.0.1:5000"
    triggers: tuple[str, ...]

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def listening(self) -> bool:
        return (self.active_state, self.sub_state) == ("active", "listening") or (
            self.active_state == "active" and self.sub_state == "running"
        )


def socket_status(unit: str) -> SocketStatus:
    values = _show(unit, "LoadState,ActiveState,SubState,UnitFileState,Listen,Triggers")
    # Listen= is "ADDRESS (Stream)" per listener, several separated by spaces
    listen = tuple(part for part in values.get("Listen", "").split() if not part.startswith("("))
    return SocketStatus(
        values.get("LoadState", ""),
        values.get("ActiveState", ""),
        values.get("SubState", ""),
        values.get("UnitFileState", ""),
        listen,
        tuple(values.get("Triggers", "").split()),
    )
