"""The operator's guide, section 8, run as written: every command of the four scenarios, in order,
on the developer's side (the example store's repository) and on a server deployed by hand at
1.0.0, with the server's state checked after each."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import store
from .testbed import Container

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
UPDATES = "/var/tmp/updates"  # the directory the package was copied to on the server


@dataclass(frozen=True)
class Step:
    side: str  # "dev" or "server"
    command: str  # exactly as the guide prints it after `dev$ ` or `server$ `
    exit_code: int = 0
    says: str = ""  # a piece of what it prints


def _scenarios() -> list[tuple[str, list[Step]]]:
    def apply_and_validate(version: str, validate: str, says: str) -> list[Step]:
        return [
            Step(
                "server",
                f"sudo apt install ./nesop-store-update_{version}_all.deb",
                says=f"is now at {version}",
            ),
            Step("server", validate, says=says),
        ]

    return [
        (
            "8.1",
            [
                Step("dev", "git checkout v1.0.1"),
                Step("dev", "nesop-deb build --files server.py --no-migrations", 2, "leaves out 1 file(s)"),
                Step(
                    "dev",
                    "nesop-deb build --files server.py --no-migrations --allow-partial",
                    says="1 left out (partial)",
                ),
                *apply_and_validate("1.0.1", "sudo nesop-update validate", "left at an earlier version"),
            ],
        ),
        (
            "8.2",
            [
                Step("dev", "git checkout v1.0.2"),
                Step(
                    "dev",
                    "nesop-deb build --files index.html admin.html --no-migrations",
                    2,
                    "scripts/products.js",
                ),
                Step("dev", "nesop-deb build", says="1 renamed, 1 deleted"),
                *apply_and_validate(
                    "1.0.2",
                    "sudo nesop-update validate --check web --check files",
                    "assets they load checked",
                ),
            ],
        ),
        (
            "8.3",
            [
                Step("dev", "git checkout v1.0.3"),
                Step("dev", "nesop-deb build", says="1 migration(s)"),
                Step(
                    "dev",
                    "nesop-deb inspect dist/nesop-store-update_1.0.3_all.deb | sed -n "
                    "'/^migrations:/,/^config/p'",
                    says="0002_product_stock  reversible",
                ),
                *apply_and_validate(
                    "1.0.3", "sudo nesop-update validate --check database", "2 migrations recorded"
                ),
            ],
        ),
        (
            "8.4",
            [
                Step("dev", "git checkout v1.0.4"),
                Step("dev", "nesop-deb build --files config.py requirements.txt", 2, "leaves out 3 file(s)"),
                Step("dev", "nesop-deb build", says="5 modified"),
                *apply_and_validate(
                    "1.0.4", "sudo nesop-update validate --check config", "config files parsed"
                ),
            ],
        ),
    ]


def _in_the_guide(section: str, steps: list[Step]) -> None:
    """Each command is the guide's, in the section it belongs to, in this order."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"### {section} ")
    end = text.find("\n### ", start + 1)
    body = text[start:end]
    at = 0
    for s in steps:
        line = f"{s.side}$ {s.command}\n"
        found = body.find(line, at)
        assert found >= 0, f"guide {section} does not show, at this point: {line!r}"
        at = found + len(line)


def _dev(repo: Path, command: str) -> subprocess.CompletedProcess[str]:
    tools = str(Path(sys.executable).parent)  # nesop-deb, as installed beside the test's python
    env = {**os.environ, **store.GIT_ENV, "PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return subprocess.run(
        ["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, check=False
    )


def _server(box: Container, command: str) -> tuple[int, str]:
    result = box.run(["bash", "-c", f"cd {UPDATES} && {command}"], check=False, timeout=300)
    return result.returncode, result.stdout + result.stderr


VERSIONS = {"8.1": "1.0.1", "8.2": "1.0.2", "8.3": "1.0.3", "8.4": "1.0.4"}


def _check(server: Container, repo: store.ExampleRepo, section: str) -> None:
    """The server after a scenario: dpkg, the history, the tree and what the app serves."""
    version = VERSIONS[section]
    assert store.dpkg_status(server) == ("ii", version)
    assert store.history(server)[-1]["status"] == "success"
    if section == "8.1":  # the partial update: server.py is 1.0.1's, VERSION was left at 1.0.0's
        live = store.live_tree(server)
        assert live["server.py"] == repo.tree("v1.0.1")["server.py"]
        assert live["VERSION"] == repo.tree("v1.0.0")["VERSION"]
        assert store.health(server)["version"] == "1.0.0"
        return
    store.assert_tree(server, repo, f"v{version}")
    assert store.health(server)["version"] == version


def test_the_guides_scenarios_run_as_written(
    server: Container, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    repo = tmp_path / "nesop-store"
    env = {**os.environ, **store.GIT_ENV}
    subprocess.run(["git", "clone", "-q", str(example_repo.path), str(repo)], check=True, env=env)
    store.deploy_by_hand(server, example_repo, "v1.0.0")
    rows = store.register_customers(server, 3)
    server.run(["mkdir", "-p", UPDATES])

    for section, steps in _scenarios():
        _in_the_guide(section, steps)
        for s in steps:
            if s.side == "dev":
                result = _dev(repo, s.command)
                code, output = result.returncode, result.stdout + result.stderr
                if s.command.startswith("nesop-deb build") and code == 0:
                    # the guide's next line is `scp dist/… admin@server:/tmp/`: the copy
                    deb = Path(repo, result.stdout.strip().splitlines()[-1])
                    server.copy_in(deb, f"{UPDATES}/{deb.name}")
            else:
                code, output = _server(server, s.command)
            assert code == s.exit_code, f"{section} `{s.command}` exited {code}:\n{output[-3000:]}"
            assert s.says in output, f"{section} `{s.command}` did not say {s.says!r}:\n{output[-3000:]}"
        _check(server, example_repo, section)
        assert set(rows) <= store.customer_emails(server)
