"""Terminal-safe text: what the CLIs print and what the runtime logs quote strings others control.

Kept apart from the CLI so the runtime (which runs as root and never imports the CLI) escapes
its log the same way the CLI escapes its output.
"""

from __future__ import annotations

import logging
import unicodedata

# Bidirectional overrides and isolates: not control characters, but they make a terminal show
# a name in another order than it has ("exe.txt" shown for "txt.exe").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: object) -> str:
    """``text`` safe to print on a terminal: control characters become ``\\xNN`` escapes.

    Paths, versions and reasons come from packages and from the server's tree: a name holding an
    escape sequence must not move the cursor, rewrite earlier lines or retitle the window of the
    operator reading them. C0, DEL and C1 controls, lone surrogates (undecodable file names) and
    bidirectional overrides are escaped; everything else, non-ASCII letters included, is kept.
    """
    s = str(text)
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI else c for c in s)


class PrintableFormatter(logging.Formatter):
    """A log line with every control character escaped (:func:`printable`).

    A message quotes what the app's account controls (an HTTP body, its journal, its file names):
    one holding a newline must not forge a log line, nor an escape sequence rewrite the terminal
    of whoever reads apt's output or ``update.log``. A traceback keeps its lines, each escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines(super().formatStack(stack_info))


def _lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))
