"""The Ansible content in ansible/, with the real ansible-playbook: it parses, it installs as a
collection, every variable it takes is documented, and bad variables are refused before any host
is touched. The rollout itself runs on a booted fleet: tests/e2e/test_fleet.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TOP = Path(__file__).resolve().parents[2]
ANSIBLE = TOP / "ansible"
DEFAULTS = ANSIBLE / "roles" / "nesop_update" / "defaults" / "main.yml"


@pytest.fixture
def ansible_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("ansible-playbook") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ansible-playbook is missing: apt-get install ansible-core", pytrace=False)
        pytest.skip("ansible-playbook is missing: apt-get install ansible-core")
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
    }


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_playbooks_parse(ansible_env: dict[str, str], tmp_path: Path) -> None:
    for playbook in (ANSIBLE / "rollout.yml", ANSIBLE / "playbooks" / "rollout.yml"):
        result = _run(
            ["ansible-playbook", "-i", "localhost,", "--syntax-check", str(playbook)], ansible_env, tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_task_file_is_yaml(ansible_env: dict[str, str], tmp_path: Path) -> None:
    # --syntax-check does not read the files a role includes at run time; Ansible's own Python
    # (with its YAML parser) reads them all here
    files = sorted(str(path) for path in ANSIBLE.rglob("*.yml"))
    assert len(files) > 10
    script = "import sys, yaml\nfor name in sys.argv[1:]:\n    yaml.safe_load(open(name))"
    result = _run(["/usr/bin/python3", "-c", script, *files], ansible_env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_ansible_is_a_collection_of_the_projects_version(ansible_env: dict[str, str], tmp_path: Path) -> None:
    version = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]
    galaxy = (ANSIBLE / "galaxy.yml").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", galaxy, re.M), galaxy
    built = _run(
        ["ansible-galaxy", "collection", "build", str(ANSIBLE), "--output-path", str(tmp_path)],
        ansible_env,
        tmp_path,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = tmp_path / f"nesop-deb-{version}.tar.gz"
    assert tarball.is_file()
    installed = _run(["ansible-galaxy", "collection", "install", str(tarball)], ansible_env, tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # the collection's playbook, by its name
    check = _run(
        ["ansible-playbook", "-i", "localhost,", "--syntax-check", "nesop.deb.rollout"], ansible_env, tmp_path
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_variable_is_documented() -> None:
    names = re.findall(r"^(nesop_[a-z_]+):", DEFAULTS.read_text(), re.M)
    assert "nesop_version" in names and len(names) > 10
    guide = (TOP / "docs" / "fleet.md").read_text()
    missing = [name for name in names if f"`{name}`" not in guide]
    assert not missing, f"docs/fleet.md does not say what these do: {missing}"


def test_a_rollout_without_a_version_is_refused_before_any_host_is_touched(
    ansible_env: dict[str, str], tmp_path: Path
) -> None:
    # a host nothing listens for (loopback, port 1): the refusal must come before anything connects
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("web1 ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n")
    report = tmp_path / "report.json"
    result = _run(
        ["ansible-playbook", "-i", str(inventory), str(ANSIBLE / "rollout.yml"),
         "-e", "nesop_package=nesop-store-update", "-e", f"nesop_report={report}"],
        ansible_env, tmp_path,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "set nesop_package, nesop_version" in out, out
    assert "UNREACHABLE" not in out and "127.0.0.1" not in out, out
    assert not report.exists()
