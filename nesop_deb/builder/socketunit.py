"""``[app] socket_file``, read at build time: a socket unit the runtime can hold connections with.

While an update runs, systemd keeps the app's listening socket open and queues the connections
that arrive; the app that starts next (the new one, or the old one put back) takes them over. That
works only for a socket that listens on a stream (``ListenStream=``), hands the whole listener to
one service (``Accept=no``, the default) and starts the app's own service (the unit is installed
as ``<service stem>.socket``, so ``Service=`` must be absent or name that service). Anything else
is refused here, where it can still be fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nesop_deb import systemdunit
from nesop_deb.errors import BuildError


@dataclass(frozen=True)
class SocketUnit:
    listen: tuple[str, ...]  # every ListenStream= address, in order


def check(text: str, path: str, service: str) -> SocketUnit:
    """Refuse a socket unit the runtime cannot gate; return what it listens on."""
    settings = systemdunit.section(text, "Socket")

    def refuse(what: str, fix: str) -> BuildError:
        return BuildError(f"[app] socket_file {path}: {what}", hint=fix)

    listen = [address for key, address in systemdunit.listeners(settings) if key == "ListenStream"]
    if not listen:
        raise refuse(
            "has no ListenStream= in [Socket]",
            "add ListenStream= with the app's address, e.g. ListenStream=127.0.0.1:8000",
        )
    if systemdunit.boolean(systemdunit.last(settings, "Accept") or "no"):
        raise refuse(
            "says Accept=yes: systemd would start one service instance per connection",
            "remove Accept= (the app takes the listening socket itself)",
        )
    named = systemdunit.last(settings, "Service") or ""
    if named not in ("", service):
        raise refuse(
            f"starts {named}, not {service}",
            f"remove Service= (the socket is installed as {service.removesuffix('.service')}.socket"
            " and starts the service of the same name)",
        )
    return SocketUnit(tuple(listen))
