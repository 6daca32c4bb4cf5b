"""``python -m nesop_deb.hooks SCRIPT PACKAGE VERSION ARGS...``: what the maintainer-script shims run.

Maps dpkg's call to an intent (:mod:`nesop_deb.hooks.dispatch`) and carries it out. A non-zero
exit makes dpkg fail the step: in preinst that unwinds for free, in postinst the runtime has
already restored the old app (docs/architecture.md §3.1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nesop_deb.errors import ExitCode, NesopError
from nesop_deb.runtime import apply, operations
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context

from .dispatch import Intent, Kind, dispatch


def _installed_context(package: str) -> Context | None:
    root = Path(os.environ.get("DPKG_ROOT") or "/")
    try:
        return apply.context_for(apply.load_installed_manifest(package, root))
    except NesopError:
        return None


def _older(own: str, other: str | None) -> bool:
    from nesop_deb.versions import compare

    return other is not None and compare(own, other) < 0


def handle(intent: Intent, package: str) -> None:
    kind = intent.kind
    if kind in (Kind.PREFLIGHT_INSTALL, Kind.PREFLIGHT_UPGRADE, Kind.PREFLIGHT_DOWNGRADE):
        script = os.environ.get("NESOP_DEB_SCRIPT")
        if not script:
            raise NesopError("preinst: NESOP_DEB_SCRIPT is not set; run through the package's preinst")
        manifest = operations.manifest_from_script(Path(script))
        if kind is Kind.PREFLIGHT_DOWNGRADE:
            operations.preflight_downgrade(manifest)
        else:
            operations.preflight(manifest)
    elif kind is Kind.CONFIGURE:
        # before the first change (and any recovery): postinst applies the manifest dpkg unpacked,
        # which preinst did not see; on a server with trusted keys it must verify too
        operations.check_installed_manifest(package)
        operations.configure(package, intent.own_version)
    elif kind in (Kind.ABORT_UPGRADE, Kind.ABORT_INSTALL, Kind.ABORT_REMOVE, Kind.ABORT_DECONFIGURE):
        ctx = _installed_context(package)
        if ctx is not None:
            operations.ensure_running(ctx)
            if kind is Kind.ABORT_UPGRADE and intent.script == "postinst":
                operations.still_applied(ctx, intent.own_version)
    elif kind is Kind.PURGE:
        operations.purge(package)
    elif kind is Kind.UNDO_ABOVE or (
        kind is Kind.FAILED_UPGRADE
        and intent.script == "prerm"
        and _older(intent.own_version, intent.other_version)
    ):
        # prerm upgrade OLDER (the newer package undoes itself), or, when that failed, the older
        # package's prerm failed-upgrade NEWER: one more attempt with this package's runtime.
        from nesop_deb.runtime import undo

        ctx = _installed_context(package)
        if ctx is None:
            raise NesopError(f"prerm: {package} is not unpacked; cannot undo it")
        target = intent.other_version if kind is Kind.UNDO_ABOVE else intent.own_version
        undo.undo_above(ctx, target or "")
    # PREPARE_UPGRADE, REMOVE, REPLACED, DISAPPEAR, DECONFIGURE, FAILED_UPGRADE, TRIGGERED:
    # the live app stays as it is, so there is nothing to do.


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.stderr.write("usage: python -m nesop_deb.hooks SCRIPT PACKAGE VERSION ACTION [ARGS...]\n")
        return int(ExitCode.USAGE)
    script, package, version, *args = argv
    runlog.setup(None)
    try:
        intent = dispatch(script, version, args)
        handle(intent, package)
    except NesopError as exc:
        sys.stderr.write(f"{package} {script}: error: {exc}\n")
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
