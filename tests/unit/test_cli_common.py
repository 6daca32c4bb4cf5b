"""What every CLI shares: terminal-safe output of names that come from packages and servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from nesop_deb.cli.common import guarded, printable, show
from nesop_deb.errors import ExitCode, UsageError


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("static/app.js", "static/app.js"),
        ("x\x1b[2J\x1b]0;owned\x07", "x\\x1b[2J\\x1b]0;owned\\x07"),  # clear screen, retitle, bell
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),  # no forged lines, no overwritten ones
        ("del\x7f c1\x9b nul\x00", "del\\x7f c1\\x9b nul\\x00"),
        ("caf\udce9.txt", "caf\\udce9.txt"),  # an undecodable name, as os.fsdecode gives it
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # shown reversed without the escape
        ("ünïcødé 日本 a\u00a0b", "ünïcødé 日本 a\u00a0b"),  # letters and spaces are kept
        ("", ""),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # what is printable stays as it is


def test_printable_takes_any_object() -> None:
    assert printable(Path("/srv/a\x1bb")) == "/srv/a\\x1bb"


def test_show_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    show("version:      1.0.1\x1b[31m")
    show("applied:      \x1b[2K", err=True)
    out, err = capsys.readouterr()
    assert out == "version:      1.0.1\\x1b[31m\n"
    assert err == "applied:      \\x1b[2K\n"


def test_an_error_line_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise UsageError("backup pre_update\x1b[2J: no such backup", hint="see list-backups\nforged line")

    with pytest.raises(SystemExit) as info:
        guarded("nesop-update", False, fail)
    assert info.value.code == int(ExitCode.USAGE)
    _, err = capsys.readouterr()
    assert err == (
        "nesop-update: error: backup pre_update\\x1b[2J: no such backup; see list-backups\\x0aforged line\n"
    )
