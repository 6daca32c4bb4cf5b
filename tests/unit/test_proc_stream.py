"""proc.stream and proc.pipeline: output that is never held whole in memory, and failures named."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import IO

import pytest

from nesop_deb import proc
from nesop_deb.errors import CommandError


def test_stream_hands_the_output_over_as_it_comes() -> None:
    def digest(out: IO[bytes]) -> str:
        h = hashlib.sha256()
        for chunk in iter(lambda: out.read(65536), b""):
            h.update(chunk)
        return h.hexdigest()

    big = 8 << 20  # more than any pipe buffer: nothing blocks
    got = proc.stream(["sh", "-c", f"head -c {big} /dev/zero"], digest)
    assert got == hashlib.sha256(bytes(big)).hexdigest()


def test_stream_raises_for_a_failed_command_with_its_error_output() -> None:
    with pytest.raises(CommandError) as failed:
        proc.stream(["sh", "-c", "echo partial; echo 'pg_dump: error: no such database' >&2; exit 1"],
                    lambda out: out.read())  # fmt: skip
    assert failed.value.returncode == 1
    assert "no such database" in failed.value.stderr


def test_stream_does_not_block_when_the_reader_stops_early() -> None:
    assert proc.stream(["sh", "-c", "head -c 1000000 /dev/zero"], lambda out: out.read(10)) == bytes(10)


def test_stream_names_a_missing_command() -> None:
    with pytest.raises(CommandError, match="command not found"):
        proc.stream(["nesop-no-such-tool"], lambda out: out.read())


def test_pipeline_feeds_a_file_through_two_commands(tmp_path: Path) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"b\na\nc\n")
    with source.open("rb") as fh:
        proc.pipeline(["sort"], ["sh", "-c", f"cat > {sink}"], stdin=fh.fileno())
    assert sink.read_bytes() == b"a\nb\nc\n"


def test_pipeline_names_the_second_command_when_it_fails(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"x\n" * 100000)
    with source.open("rb") as fh, pytest.raises(CommandError) as failed:
        proc.pipeline(
            ["cat"], ["sh", "-c", "echo 'psql: ERROR: lock timeout' >&2; exit 3"], stdin=fh.fileno()
        )
    assert (failed.value.argv[0], failed.value.returncode) == ("sh", 3)
    assert "lock timeout" in failed.value.stderr


def test_pipeline_names_the_first_command_when_only_it_fails(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"")
    with source.open("rb") as fh, pytest.raises(CommandError) as failed:
        proc.pipeline(["sh", "-c", "echo 'pg_restore: error: input file is too short' >&2; exit 1"], ["cat"],
                      stdin=fh.fileno())  # fmt: skip
    assert "too short" in failed.value.stderr


def test_stream_kills_a_command_that_outlives_its_deadline() -> None:
    """A child that stops (SIGSTOP by the account it runs as) or hangs: root stops waiting."""
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"timed out after 0\.5 s") as failed:
        proc.stream(["sh", "-c", "echo begun; exec sleep 60"], lambda out: out.read(), timeout=0.5)
    assert failed.value.returncode == 124
    assert time.monotonic() - started < 10


def test_pipeline_kills_both_commands_at_the_deadline(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"x")
    started = time.monotonic()
    with source.open("rb") as fh, pytest.raises(CommandError, match="timed out") as failed:
        proc.pipeline(["sh", "-c", "cat; exec sleep 60"], ["cat"], stdin=fh.fileno(), timeout=0.5)
    assert failed.value.returncode == 124
    assert time.monotonic() - started < 10


def test_a_deadline_that_is_not_reached_changes_nothing(tmp_path: Path) -> None:
    assert proc.stream(["echo", "quick"], lambda out: out.read(), timeout=30) == b"quick\n"


def test_a_command_run_as_another_account_gets_a_session_of_its_own() -> None:
    """No controlling terminal: what runs as the app's account cannot type into root's."""
    argv = proc.as_account(65534, 65534, ["psql", "-X"])
    assert argv[:3] == ["setsid", "-w", "setpriv"]
    assert argv[-3:] == ["--", "psql", "-X"]
    out = proc.run(
        proc.as_account(65534, 65534, ["sh", "-c", "id -u; ps -o sid= -p $$; echo $$"])
    ).out.split()
    uid, sid, pid = out
    assert uid == "65534" and sid == pid  # it leads its own session
