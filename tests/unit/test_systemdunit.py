"""Unit files read as systemd reads them (the cases checked against systemd 252)."""

from __future__ import annotations

import pytest

from nesop_deb import systemdunit
from nesop_deb.builder import socketunit
from nesop_deb.errors import BuildError


def test_a_comment_ending_in_a_backslash_does_not_swallow_the_next_line() -> None:
    text = "[Socket]\n# the store's address \\\nListenStream=127.0.0.1:5000\n"
    assert systemdunit.section(text, "Socket") == [("ListenStream", "127.0.0.1:5000")]


def test_a_continued_line_is_one_setting() -> None:
    text = "[Socket]\nListenStream=\\\n  127.0.0.1:5000\n[Install]\nWantedBy=sockets.target\n"
    assert systemdunit.section(text, "Socket") == [("ListenStream", "127.0.0.1:5000")]
    assert systemdunit.section(text, "Install") == [("WantedBy", "sockets.target")]


def test_an_empty_listen_setting_of_any_kind_drops_every_listener_before_it() -> None:
    settings = systemdunit.section(
        "[Socket]\nListenStream=5000\nListenDatagram=\nListenStream=6000\n", "Socket"
    )
    assert systemdunit.listeners(settings) == [("ListenStream", "6000")]
    with pytest.raises(BuildError, match="no ListenStream="):
        socketunit.check("[Socket]\nListenStream=5000\nListenDatagram=\n", "s.socket", "s.service")


@pytest.mark.parametrize("value", ["yes", "y", "Y", "t", "true", "1", "on"])
def test_every_spelling_of_yes_in_accept_is_refused(value: str) -> None:
    with pytest.raises(BuildError, match="Accept=yes"):
        socketunit.check(f"[Socket]\nListenStream=5000\nAccept={value}\n", "s.socket", "s.service")


def test_the_last_assignment_wins() -> None:
    unit = socketunit.check("[Socket]\nListenStream=5000\nAccept=yes\nAccept=no\n", "s.socket", "s.service")
    assert unit.listen == ("5000",)
