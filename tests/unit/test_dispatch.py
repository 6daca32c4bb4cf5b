"""The whole dpkg maintainer-script argument matrix, as one table (Debian Policy §6.5-6.6)."""

from __future__ import annotations

import pytest
from nesop_deb.hooks.dispatch import Intent, Kind, dispatch

from nesop_deb.errors import UsageError

OWN = "1.0.5"

MATRIX: list[tuple[str, list[str], Kind, str | None]] = [
    # preinst
    ("preinst", ["install"], Kind.PREFLIGHT_INSTALL, None),
    ("preinst", ["install", "1.0.3", "1.0.5"], Kind.PREFLIGHT_INSTALL, "1.0.3"),
    ("preinst", ["upgrade", "1.0.4", "1.0.5"], Kind.PREFLIGHT_UPGRADE, "1.0.4"),
    ("preinst", ["upgrade", "1.0.6", "1.0.5"], Kind.PREFLIGHT_DOWNGRADE, "1.0.6"),
    ("preinst", ["upgrade", "1.0.5", "1.0.5"], Kind.PREFLIGHT_UPGRADE, "1.0.5"),  # reinstall
    ("preinst", ["abort-upgrade", "1.0.6"], Kind.ABORT_UPGRADE, "1.0.6"),
    # postinst
    ("postinst", ["configure", ""], Kind.CONFIGURE, None),
    ("postinst", ["configure"], Kind.CONFIGURE, None),
    ("postinst", ["configure", "1.0.4"], Kind.CONFIGURE, "1.0.4"),
    ("postinst", ["abort-upgrade", "1.0.6"], Kind.ABORT_UPGRADE, "1.0.6"),
    ("postinst", ["abort-remove"], Kind.ABORT_REMOVE, None),
    ("postinst", ["abort-remove", "in-favour", "other", "2.0"], Kind.ABORT_REMOVE, None),
    (
        "postinst",
        ["abort-deconfigure", "in-favour", "x", "1", "removing", "y", "2"],
        Kind.ABORT_DECONFIGURE,
        None,
    ),
    ("postinst", ["triggered", "/usr/share/foo"], Kind.TRIGGERED, None),
    # prerm
    ("prerm", ["remove"], Kind.REMOVE, None),
    ("prerm", ["upgrade", "1.0.6"], Kind.PREPARE_UPGRADE, "1.0.6"),
    ("prerm", ["upgrade", "1.0.4"], Kind.UNDO_ABOVE, "1.0.4"),
    ("prerm", ["upgrade", "1.0.5"], Kind.PREPARE_UPGRADE, "1.0.5"),  # reinstall: nothing to undo
    ("prerm", ["failed-upgrade", "1.0.4", "1.0.5"], Kind.FAILED_UPGRADE, "1.0.4"),
    ("prerm", ["deconfigure", "in-favour", "x", "1"], Kind.DECONFIGURE, None),
    # postrm
    ("postrm", ["remove"], Kind.REMOVE, None),
    ("postrm", ["purge"], Kind.PURGE, None),
    ("postrm", ["upgrade", "1.0.6"], Kind.REPLACED, "1.0.6"),
    ("postrm", ["upgrade", "1.0.4"], Kind.REPLACED, "1.0.4"),
    ("postrm", ["disappear", "other", "2.0"], Kind.DISAPPEAR, "2.0"),
    ("postrm", ["failed-upgrade", "1.0.4", "1.0.5"], Kind.FAILED_UPGRADE, "1.0.4"),
    ("postrm", ["abort-install"], Kind.ABORT_INSTALL, None),
    ("postrm", ["abort-install", "1.0.3", "1.0.5"], Kind.ABORT_INSTALL, "1.0.3"),
    ("postrm", ["abort-upgrade", "1.0.4", "1.0.5"], Kind.ABORT_UPGRADE, "1.0.4"),
]


@pytest.mark.parametrize(("script", "argv", "kind", "other"), MATRIX)
def test_matrix(script: str, argv: list[str], kind: Kind, other: str | None) -> None:
    assert dispatch(script, OWN, argv) == Intent(kind, script, OWN, other)


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("preinst", ["configure"], "unknown action 'configure'"),
        ("postinst", ["purge"], "unknown action 'purge'"),
        ("prerm", ["purge"], "unknown action 'purge'"),
        ("postrm", ["configure", "1.0"], "unknown action 'configure'"),
        ("postinst", [], "no action"),
        ("preinst", ["upgrade"], "too few arguments"),
        ("prerm", ["upgrade"], "too few arguments"),
        ("config", ["configure"], "unknown maintainer script"),
    ],
)
def test_unknown_calls_fail_loudly(script: str, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        dispatch(script, OWN, argv)


def test_epochs_and_tildes_order_like_dpkg() -> None:
    assert dispatch("prerm", "1:1.0", ["upgrade", "2.0"]).kind is Kind.UNDO_ABOVE
    assert dispatch("preinst", "1.0.5~rc1", ["upgrade", "1.0.5"]).kind is Kind.PREFLIGHT_DOWNGRADE
