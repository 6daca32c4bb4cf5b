"""The update log: every step, timed and nested, to ``<root>/logs/update.log`` and to stderr.

stderr reaches apt's term.log and the journal when dpkg runs us; the file is the operator's.
Both are escaped (:class:`~nesop_deb.text.PrintableFormatter`): a line quotes what the app's
account controls (its health answer, its journal, its file names).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nesop_deb.runtime import safefs
from nesop_deb.text import PrintableFormatter

log = logging.getLogger("nesop_deb.runtime")
_depth = 0
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Indent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "  " * _depth + str(record.msg)
        return True


class _LogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """The update log; a write that fails (a full disk) is said once on stderr, not per line."""

    failed = False

    def __init__(self, path: Path) -> None:
        # opened through root's own logs/ directory, never through a link (see safefs.records)
        logs = safefs.records(path.parent.parent, path.parent.name, create=True, mode=0o755)
        assert logs is not None
        with logs:
            fd = logs.open_append(path.name, 0o640)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))
        self.path = path

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            sys.stderr.write(f"warning: cannot write to {self.path}: {exc}\n")

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def setup(log_file: Path | None, *, verbose: bool = False) -> None:
    """Send the runtime's log to stderr and (when given) to the update log file,
    ``<app root>/logs/update.log``."""
    root = logging.getLogger("nesop_deb")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(PrintableFormatter("%(message)s"))
    root.addHandler(stderr)
    if log_file is not None:
        handler = _LogFile(log_file)
        handler.setFormatter(PrintableFormatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
        root.addHandler(handler)
    if not any(isinstance(f, _Indent) for f in log.filters):
        log.addFilter(_Indent())
    root.propagate = False


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log ``name`` as a block; its end line says how long it took and whether it failed."""
    global _depth
    log.info("-> %s", name)
    start = time.monotonic()
    _depth += 1
    try:
        yield
    except BaseException as exc:
        _depth -= 1
        log.error("<- %s failed after %.3f s: %s", name, time.monotonic() - start, exc)
        raise
    _depth -= 1
    log.info("<- %s (%.3f s)", name, time.monotonic() - start)
