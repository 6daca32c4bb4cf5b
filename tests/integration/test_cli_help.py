"""`--help` of every nesop-deb and nesop-update command exits 0 (in this process, and a few through the
installed entry points). A new command must join the table: test_the_table_covers_every_command."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nesop_deb.cli import build as build_cli
from nesop_deb.cli import update as update_cli

from .helpers import NESOP_DEB, NESOP_UPDATE, Outcome, run_tool, toolchain_version

pytestmark = pytest.mark.integration

COMMANDS: list[tuple[Path, tuple[str, ...]]] = [
    (NESOP_DEB, ()),
    (NESOP_DEB, ("build",)),
    (NESOP_DEB, ("inspect",)),
    (NESOP_DEB, ("verify",)),
    (NESOP_DEB, ("init",)),
    (NESOP_DEB, ("publish",)),
    (NESOP_UPDATE, ()),
    (NESOP_UPDATE, ("status",)),
    (NESOP_UPDATE, ("backup",)),
    (NESOP_UPDATE, ("list-backups",)),
    (NESOP_UPDATE, ("rollback",)),
    (NESOP_UPDATE, ("history",)),
    (NESOP_UPDATE, ("validate",)),
    (NESOP_UPDATE, ("apply",)),
    (NESOP_UPDATE, ("recover",)),
    (NESOP_UPDATE, ("retry",)),  # tries a failed version again, after a fix
    (NESOP_UPDATE, ("adopt",)),  # records an app deployed by hand (`--config FILE` names it once)
    (NESOP_UPDATE, ("release",)),  # beyond docs/architecture.md §17's list: lifts the hold a rollback sets
]


GROUPS = {NESOP_DEB: build_cli.cli, NESOP_UPDATE: update_cli.cli}


def _check_help(program: Path, command: tuple[str, ...], outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith(f"Usage: {' '.join([program.name, *command])} ")
    assert outcome.stderr == ""
    if not command:  # the group lists its commands
        listed = {
            line.split()[0] for line in outcome.stdout.split("Commands:")[1].splitlines() if line.strip()
        }
        assert listed == {c[0] for p, c in COMMANDS if p == program and c}


@pytest.mark.parametrize(("program", "command"), COMMANDS, ids=[" ".join([p.name, *c]) for p, c in COMMANDS])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0(program: Path, command: tuple[str, ...], flag: str) -> None:
    result = CliRunner().invoke(GROUPS[program], [*command, flag], prog_name=program.name)
    _check_help(program, command, Outcome(result.exit_code, result.stdout, result.stderr))


@pytest.mark.parametrize(
    ("program", "command"),
    [(NESOP_DEB, ()), (NESOP_DEB, ("build",)), (NESOP_UPDATE, ()), (NESOP_UPDATE, ("status",))],
)
def test_help_of_the_installed_entry_points(
    program: Path, command: tuple[str, ...], env: dict[str, str]
) -> None:
    _check_help(program, command, run_tool([program, *command, "--help"], env))


def _registered(group: click.Group) -> set[str]:
    return set(group.commands)


def test_the_table_covers_every_command() -> None:
    assert _registered(build_cli.cli) == {c[0] for p, c in COMMANDS if p == NESOP_DEB and c}
    assert _registered(update_cli.cli) == {c[0] for p, c in COMMANDS if p == NESOP_UPDATE and c}


@pytest.mark.parametrize("program", [NESOP_DEB, NESOP_UPDATE], ids=lambda p: p.name)
def test_version(program: Path, env: dict[str, str]) -> None:
    outcome = run_tool([program, "--version"], env)
    assert outcome.returncode == 0
    assert outcome.stdout.strip() == f"{program.name}, version {toolchain_version()}"


def test_unknown_command_is_a_usage_error(env: dict[str, str]) -> None:
    outcome = run_tool([NESOP_DEB, "bild"], env)
    assert outcome.returncode == 2
    assert "No such command 'bild'" in outcome.stderr
