"""`nesop-update` run by someone other than root: every command stops at once with the line that
runs it as root (exit 2), before it reads a file; --help and --version still answer.

As root, the commands run as the unprivileged account ``nobody`` (through runuser)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from nesop_deb.cli.update import cli

from .helpers import NESOP_UPDATE, Outcome, run_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() == 0 and shutil.which("runuser") is None,
        reason="running as another account needs runuser",
    ),
]

# each command with arguments it accepts; apply needs its package
ARGS = {
    "apply": ["/root/app-update_1.0.1_all.deb"],
    "rollback": ["before-experiment"],
    "adopt": ["/root/x.toml"],
}


def as_user(args: list[str], env: dict[str, str]) -> Outcome:
    argv = [str(NESOP_UPDATE), *args]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "nobody", "--", *argv]
    return run_tool(argv, env, cwd=Path("/"))  # a directory every account may enter


@pytest.mark.parametrize(
    "args",
    [
        [name, *ARGS.get(name, [])]
        for name in sorted(cli.commands)  # every command the CLI has, whatever it grows
    ]
    + [
        ["--config", "/root/app/nesop-deb.toml", "status", "--json"],
        ["--debug", "history", "--app", "my shop"],
    ],
    ids=lambda args: " ".join(args),
)
def test_every_command_asks_for_root(args: list[str], env: dict[str, str]) -> None:
    outcome = as_user(args, env)
    assert outcome.returncode == 2
    assert outcome.error_lines == [f"nesop-update: error: run as root: sudo nesop-update {shlex.join(args)}"]
    assert outcome.stdout == ""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", "--help"], ["apply", "-h"]])
def test_help_and_version_answer_anyone(args: list[str], env: dict[str, str]) -> None:
    outcome = as_user(args, env)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith("Usage: nesop-update") or outcome.stdout.startswith(
        "nesop-update, version"
    )
