"""Reading a systemd unit file the way systemd does, for the few settings nesop-deb checks: the
builder (is the socket unit one the runtime can hold connections with?) and the runtime (did an
update change what the socket listens on?).

systemd's syntax: ``[Section]`` headers; ``Key=value`` lines, a key may repeat; lines starting
with ``#`` or ``;`` are comments, and are never continued; any other line ending in a backslash
continues on the next.
"""

from __future__ import annotations

_TRUE = ("1", "yes", "y", "true", "t", "on")
_LISTEN = (
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
)


def section(text: str, name: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` settings of section ``name``, in order."""
    found: list[tuple[str, str]] = []
    current = None
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue  # a comment, even one ending in a backslash, stands alone
        line = pending + stripped
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current == name and "=" in line:
            key, value = line.split("=", 1)
            found.append((key.strip(), value.strip()))
    if pending and current == name and "=" in pending:
        key, value = pending.split("=", 1)
        found.append((key.strip(), value.strip()))
    return found


def last(settings: list[tuple[str, str]], key: str) -> str | None:
    """The value ``key`` ends with (the last assignment wins), None if never set."""
    values = [v for k, v in settings if k == key]
    return values[-1] if values else None


def boolean(value: str) -> bool:
    return value.lower() in _TRUE


def listeners(settings: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every ``(Listen*, address)`` the socket ends with: an empty ``Listen*=`` of any kind
    drops all the listeners set before it."""
    found: list[tuple[str, str]] = []
    for key, value in settings:
        if key in _LISTEN:
            found = [] if value == "" else [*found, (key, value)]
    return found
