"""The gate's drop-in, written for every managed app by the toolchain's systemd generator
(``debian/nesop-update-recover-generator``): its name, and whether systemd loaded it."""

from __future__ import annotations

from collections.abc import Iterable

NAME = "50-nesop-update-gate.conf"


def loaded(drop_ins: Iterable[str]) -> bool:
    """Whether the service's loaded drop-ins (``DropInPaths``) include the gate's."""
    return any(p.rsplit("/", 1)[-1] == NAME for p in drop_ins)
