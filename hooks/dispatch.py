"""dpkg's maintainer-script arguments → one intent, in one pure function.

The raw conditions come from Debian Policy §6.5-6.6 and dpkg's own behaviour (docs/architecture.md §3). The
whole argument matrix is one test table (tests/unit/test_dispatch.py); anything else fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nesop_deb.errors import UsageError
from nesop_deb.versions import compare


class Kind(StrEnum):
    PREFLIGHT_INSTALL = "preflight-install"  # preinst install [old new]: first install (or after removal)
    PREFLIGHT_UPGRADE = "preflight-upgrade"  # preinst upgrade OLD: this newer version replaces OLD
    PREFLIGHT_DOWNGRADE = "preflight-downgrade"  # preinst upgrade NEWER: this older version replaces it
    CONFIGURE = "configure"  # postinst configure [FROM]: apply this version (FROM empty: none before)
    UNDO_ABOVE = "undo-above"  # prerm upgrade OLDER: this newer package undoes itself down to OLDER
    PREPARE_UPGRADE = "prepare-upgrade"  # prerm upgrade NEWER: nothing to undo, NEWER takes over
    ABORT_UPGRADE = "abort-upgrade"  # preinst/postinst abort-upgrade: the upgrade failed, dpkg unwinds
    ABORT_REMOVE = "abort-remove"  # postinst abort-remove [...]: removal was cancelled
    ABORT_DECONFIGURE = "abort-deconfigure"  # postinst abort-deconfigure ...
    ABORT_INSTALL = "abort-install"  # postrm abort-install [old new]: a first install was unwound
    FAILED_UPGRADE = "failed-upgrade"  # prerm/postrm failed-upgrade OLD NEW: the other one's script failed
    REMOVE = "remove"  # prerm/postrm remove: the package goes, the live app stays
    PURGE = "purge"  # postrm purge: drop the state, keep the backups
    DECONFIGURE = "deconfigure"  # prerm deconfigure in-favour ...
    REPLACED = "replaced"  # postrm upgrade OTHER: this version's files were replaced by OTHER's
    DISAPPEAR = "disappear"  # postrm disappear OVERWRITER VERSION
    TRIGGERED = "triggered"  # postinst triggered NAMES


@dataclass(frozen=True)
class Intent:
    kind: Kind
    script: str
    own_version: str
    other_version: str | None = None  # the version on the other side of an upgrade, if any


SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


def _need(args: list[str], n: int, script: str) -> None:
    if len(args) < n:
        raise UsageError(f"{script} {' '.join(args)}: dpkg passed too few arguments")


def dispatch(script: str, own_version: str, argv: list[str]) -> Intent:
    """Map ``script argv...`` (as dpkg calls it) to an :class:`Intent`; unknown calls raise."""
    if script not in SCRIPTS:
        raise UsageError(f"unknown maintainer script {script!r}")
    if not argv:
        raise UsageError(f"{script}: dpkg passed no action")
    action, args = argv[0], argv[1:]

    def intent(kind: Kind, other: str | None = None) -> Intent:
        return Intent(kind, script, own_version, other or None)

    match script, action:
        case "preinst", "install":
            return intent(Kind.PREFLIGHT_INSTALL, args[0] if args else None)
        case "preinst", "upgrade":
            _need(args, 1, script)
            newer = compare(args[0], own_version) > 0
            return intent(Kind.PREFLIGHT_DOWNGRADE if newer else Kind.PREFLIGHT_UPGRADE, args[0])
        case "preinst" | "postinst", "abort-upgrade":
            _need(args, 1, script)
            return intent(Kind.ABORT_UPGRADE, args[0])
        case "postinst", "configure":
            return intent(Kind.CONFIGURE, args[0] if args else None)
        case "postinst", "abort-remove":
            return intent(Kind.ABORT_REMOVE)
        case "postinst", "abort-deconfigure":
            return intent(Kind.ABORT_DECONFIGURE)
        case "postinst", "triggered":
            return intent(Kind.TRIGGERED)
        case "prerm", "upgrade":
            _need(args, 1, script)
            older = compare(args[0], own_version) < 0
            return intent(Kind.UNDO_ABOVE if older else Kind.PREPARE_UPGRADE, args[0])
        case "prerm" | "postrm", "remove":
            return intent(Kind.REMOVE)
        case "prerm", "deconfigure":
            return intent(Kind.DECONFIGURE)
        case "prerm" | "postrm", "failed-upgrade":
            _need(args, 1, script)
            return intent(Kind.FAILED_UPGRADE, args[0])
        case "postrm", "purge":
            return intent(Kind.PURGE)
        case "postrm", "upgrade":
            _need(args, 1, script)
            return intent(Kind.REPLACED, args[0])
        case "postrm", "disappear":
            return intent(Kind.DISAPPEAR, args[1] if len(args) > 1 else None)
        case "postrm", "abort-install":
            return intent(Kind.ABORT_INSTALL, args[0] if args else None)
        case "postrm", "abort-upgrade":
            _need(args, 1, script)
            return intent(Kind.ABORT_UPGRADE, args[0])
    raise UsageError(f"{script}: unknown action {action!r} (arguments: {' '.join(argv)})")
