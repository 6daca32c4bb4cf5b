"""The update log: a first install's lines reach the file once the root exists; every line goes to
the journal as ``nesop-update``."""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.log import log


@pytest.fixture(autouse=True)
def own_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    logger = logging.getLogger("nesop_deb")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.delenv("DPKG_ROOT", raising=False)
    yield
    for h in logger.handlers:
        h.close()


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket where journald's would be."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setattr(runlog, "JOURNAL_SOCKET", str(path))
    yield sock
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    """Parse journald's native protocol."""
    out: dict[str, str] = {}
    while datagram:
        line, _, rest = datagram.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            out[name.decode()] = value.decode()
            datagram = rest
            continue
        size = struct.unpack("<Q", rest[:8])[0]
        out[line.decode()] = rest[8 : 8 + size].decode()
        datagram = rest[8 + size + 1 :]
    return out


def test_a_first_install_is_logged_once_the_root_exists(tmp_path: Path) -> None:
    root = tmp_path / "opt/app"
    log_file = root / "logs/update.log"
    runlog.setup(log_file)

    with runlog.step("apply app 1.0.0 (live: unmanaged)"):
        log.info("before the root exists")
        root.mkdir(parents=True)  # what the first install's stage step does
        log.info("after it")

    lines = log_file.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "-> apply app 1.0.0 (live: unmanaged)",
        "  before the root exists",
        "  after it",
        lines[-1].split(" ", 2)[2],
    ]
    assert lines[-1].split(" ", 2)[2].startswith("<- apply app 1.0.0")
    assert (log_file.parent.stat().st_mode & 0o777) == 0o755


def test_a_root_that_never_comes_costs_nothing(tmp_path: Path) -> None:
    log_file = tmp_path / "opt/app/logs/update.log"
    runlog.setup(log_file)
    log.info("preflight of a first install that is refused")
    assert not log_file.parent.parent.exists()


def test_every_line_goes_to_the_journal_as_nesop_update(tmp_path: Path, journal: socket.socket) -> None:
    runlog.setup(None)

    log.info("-> apply nesop-store-update 1.0.5")
    log.error("migrate failed:\nno such column")

    first, second = fields(journal.recv(65536)), fields(journal.recv(65536))
    assert first == {
        "MESSAGE": "-> apply nesop-store-update 1.0.5",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "nesop-update",
    }
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("migrate failed:")  # escaped like every other line
    assert "no such column" in second["MESSAGE"]


def test_no_journal_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runlog, "JOURNAL_SOCKET", str(tmp_path / "absent.socket"))
    runlog.setup(None)
    log.info("a line")
    assert capsys.readouterr().err == "a line\n"


def test_another_dpkg_root_is_not_this_hosts_journal(
    journal: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPKG_ROOT", "/srv/chroot")
    runlog.setup(None)
    log.info("a line")
    journal.settimeout(0.05)
    with pytest.raises(TimeoutError):
        journal.recv(65536)


def test_a_unit_whose_stderr_is_the_journal_logs_each_line_once(
    journal: socket.socket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stream = (tmp_path / "stream").open("w")
    st = os.fstat(stream.fileno())
    saved = os.dup(2)
    os.dup2(stream.fileno(), 2)
    try:
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        monkeypatch.setattr(sys, "stderr", stream)
        runlog.setup(None)
        log.info("a line")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        stream.close()
    journal.settimeout(0.05)
    with pytest.raises(TimeoutError):
        journal.recv(65536)  # stderr carried it
    assert (tmp_path / "stream").read_text() == "a line\n"
