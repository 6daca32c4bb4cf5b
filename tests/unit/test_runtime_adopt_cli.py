"""`nesop-update --config FILE …` and `nesop-update adopt` on a server deployed by hand: every
read-only command, a backup and its restore, before the first package."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nesop_deb import proc
from nesop_deb.cli import update as update_cli
from tests.unit.runtime_fixtures import Server, fake_server, install_base
from tests.unit.test_runtime_adopt import write_config


class NotInstalled:
    """dpkg as it answers on a server where the app's package was never installed."""

    def __init__(self, inner: proc.Executor) -> None:
        self.inner = inner

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        if argv[0] == "dpkg-query":
            return proc.Result(argv, 1, b"", f"dpkg-query: no packages found matching {argv[-1]}\n".encode())
        return self.inner(argv, cwd, env, stdin, timeout)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for s in fake_server(tmp_path, monkeypatch):
        s.settings["app"]["writable"] = ["data", "uploads"]
        install_base(s)
        monkeypatch.setattr(proc, "executor", NotInstalled(proc.executor))
        yield s


def run(*args: str) -> Result:
    return CliRunner().invoke(update_cli.cli, list(args), prog_name="nesop-update")


def test_without_a_config_nothing_is_managed(server: Server) -> None:
    result = run("status")
    assert result.exit_code == 2
    assert "no app is managed by nesop-deb on this server" in result.stderr
    assert "nesop-update --config FILE" in result.stderr


def test_every_read_only_command_and_a_backup_work_with_config(server: Server) -> None:
    config = str(write_config(server))

    status = run("--config", config, "status", "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert (data["app"], data["version"], data["adopted"]) == ("demo", None, None)
    assert data["package"] == {"name": "demo-update", "state": "not installed", "version": ""}
    text = run("status", "--config", config)  # beside --app, after the command, works too
    assert "unmanaged (no update applied yet)" in text.stdout
    assert "adopted:      no (`nesop-update adopt`" in text.stdout

    files = run("--config", config, "validate", "--check", "files")
    assert files.exit_code == 0 and "PASS  files" in files.stdout
    assert run("--config", config, "history").stdout.startswith("no update recorded yet")
    assert run("--config", config, "list-backups").stdout.startswith("no backups in ")

    backup = run("--config", config, "backup", "before-adoption")
    assert backup.exit_code == 0, backup.output
    assert backup.stdout.strip() == str(server.ctx.backups_dir / "before-adoption")
    rows = json.loads(run("--config", config, "list-backups", "--json").stdout)
    assert [(r["name"], r["kind"], r["version"], r["database"]) for r in rows] == [
        ("before-adoption", "manual", None, True)
    ]

    (server.app_root / "app.py").write_bytes(b"broken by hand\n")
    restored = run("--config", config, "rollback", "before-adoption")
    assert restored.exit_code == 0, restored.output
    assert (server.app_root / "app.py").read_bytes() == b"print('v1')\n"


def test_adopt_then_every_command_works_without_config(server: Server) -> None:
    config = str(write_config(server))

    adopted = run("adopt", config)

    assert adopted.exit_code == 0, adopted.output
    assert adopted.stdout.strip() == f"demo: adopted {server.app_root} (8 files); --config not needed now"
    status = run("status")
    assert status.exit_code == 0, status.output
    assert "adopted:      20" in status.stdout and f"from {config}: 8 files recorded" in status.stdout
    assert json.loads(run("status", "--json").stdout)["adopted"]["files"] == 8
    assert run("validate", "--check", "files").exit_code == 0

    (server.app_root / "lib/keep.py").write_bytes(b"KEEP = False\n")
    files = run("validate", "--check", "files", "--json")

    assert files.exit_code == 1
    [result] = json.loads(files.stdout)
    assert [p.split(":")[0] for p in result["problems"]] == ["lib/keep.py"]


def test_adopt_takes_its_file_as_an_argument_or_from_config(server: Server) -> None:
    config = str(write_config(server))
    assert run("--config", config, "adopt").exit_code == 0
    assert run("adopt", "--config", config).exit_code == 0

    two = run("--config", config, "adopt", str(server.root / "other.toml"))
    assert two.exit_code == 2 and "two config files" in two.stderr
    twice = run("--config", config, "status", "--config", str(server.root / "other.toml"))
    assert twice.exit_code == 2 and "--config" in twice.stderr
