"""The update log: every step, timed and nested, to ``<root>/logs/update.log`` and to stderr.

stderr reaches apt's term.log and the journal when dpkg runs us; the file is the operator's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("nesop_deb.runtime")
_depth = 0
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Indent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "  " * _depth + str(record.msg)
        return True


class _LogFile(logging.FileHandler):
    """The update log; a write that fails (a full disk) is said once on stderr, not per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            sys.stderr.write(f"warning: cannot write to {self.baseFilename}: {exc}\n")


def setup(log_file: Path | None, *, verbose: bool = False) -> None:
    """Send the runtime's log to stderr and (when given) to the update log file."""
    root = logging.getLogger("nesop_deb")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
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
