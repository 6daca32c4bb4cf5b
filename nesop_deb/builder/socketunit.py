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

from nesop_deb.errors import BuildError

_TRUE = ("1", "yes", "true", "on")


@dataclass(frozen=True)
class SocketUnit:
    listen: tuple[str, ...]  # every ListenStream= value, in order


def _socket_section(text: str) -> dict[str, list[str]]:
    """The ``[Socket]`` section's settings: key -> values in order (systemd's syntax: comments
    start with # or ;, a trailing backslash continues a line)."""
    values: dict[str, list[str]] = {}
    section = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Socket" and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def check(text: str, path: str, service: str) -> SocketUnit:
    """Refuse a socket unit the runtime cannot gate; return what it listens on."""
    settings = _socket_section(text)

    def refuse(what: str, fix: str) -> BuildError:
        return BuildError(f"[app] socket_file {path}: {what}", hint=fix)

    # an empty assignment resets the list, as systemd reads it
    listen: list[str] = []
    for value in settings.get("ListenStream", []):
        listen = [] if value == "" else [*listen, value]
    if not listen:
        raise refuse(
            "has no ListenStream= in [Socket]",
            "add ListenStream= with the app's address, e.g. ListenStream=127.0.0.1:8000",
        )
    accept = (settings.get("Accept") or ["no"])[-1].lower()
    if accept in _TRUE:
        raise refuse(
            "says Accept=yes: systemd would start one service instance per connection",
            "remove Accept= (the app takes the listening socket itself)",
        )
    named = (settings.get("Service") or [""])[-1]
    if named not in ("", service):
        raise refuse(
            f"starts {named}, not {service}",
            f"remove Service= (the socket is installed as {service.removesuffix('.service')}.socket"
            " and starts the service of the same name)",
        )
    return SocketUnit(tuple(listen))
