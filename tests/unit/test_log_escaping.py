"""Log lines quote what the app's account controls (its health answer, its journal, its file
names): the runtime's stderr and update.log, and the CLIs' log, escape it (nesop_deb.text)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.cli.common import setup_logging
from nesop_deb.runtime import log
from nesop_deb.text import PrintableFormatter
from tests.unit.runtime_fixtures import Server, fake_server

HOSTILE = "HTTP 503: \x1b[2J\x1b]0;owned\x07\nforged line \u202eexe.txt"
SHOWN = "HTTP 503: \\x1b[2J\\x1b]0;owned\\x07\\x0aforged line \\u202eexe.txt"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def test_the_runtime_escapes_its_stderr_and_update_log(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.app_root.mkdir(parents=True)
    log.setup(server.ctx.log_file)

    log.log.error("health: %s", HOSTILE)
    with log.step(f"stop {HOSTILE}"):
        pass

    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [f"health: {SHOWN}", f"-> stop {SHOWN}"]
    assert err[2].startswith(f"<- stop {SHOWN} (") and len(err) == 3, err
    lines = server.ctx.log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(f" ERROR health: {SHOWN}"), lines
    assert "\x1b" not in "".join(lines)


def test_the_cli_escapes_its_log(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # put pytest's own handlers back afterwards
    monkeypatch.setattr(root, "level", root.level)

    setup_logging(verbose=False)
    logging.getLogger("nesop_deb.builder").warning("skipping %s", HOSTILE)

    assert capsys.readouterr().err == f"skipping {SHOWN}\n"


def test_a_traceback_keeps_its_lines_each_escaped() -> None:
    try:
        raise ValueError("bad name \x1b[2J")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed: %s", ("\x1b",), sys.exc_info())

    first, *traceback = PrintableFormatter("%(message)s").format(record).split("\n")

    assert first == "failed: \\x1b"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad name \\x1b[2J"
