"""The NESOP Store's 1.1.x releases in real virtualenvs: each built as the server builds it (only
wheels, every hash required; here from PyPI), then the unit's ExecStart run from it. broken/import
builds and imports like any release, yet gunicorn cannot load the app."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from nesop_deb.runtime.deps.venvs import check_imports, top_level_modules

pytestmark = pytest.mark.integration

ROOT = "/opt/nesop-store"
UNIT = "deploy/nesop-store.service"
REMOVED_API = "ImportError: cannot import name 'TimedJSONWebSignatureSerializer' from 'itsdangerous'"


@pytest.fixture(scope="module")
def venv_of(
    example_checkout: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The virtualenv of a release's requirements.txt, built once per release."""
    cache = tmp_path_factory.mktemp("pip-cache")
    made: dict[str, Path] = {}

    def build(ref: str) -> Path:
        if ref not in made:
            venv = tmp_path_factory.mktemp("venv") / ref.replace("/", "_")
            # as the server builds it: no pip in the virtualenv, only what requirements.txt pins
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
            requirements = example_checkout(ref) / "requirements.txt"
            subprocess.run(
                [sys.executable, "-m", "pip", "--python", venv / "bin/python", "--disable-pip-version-check",
                 "install", "--quiet", "--require-hashes", "--only-binary=:all:", "--cache-dir", cache,
                 "-r", requirements],
                check=True, capture_output=True,
            )  # fmt: skip
            made[ref] = venv
        return made[ref]

    return build


def start(app: Path, venv: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """The unit's ExecStart with the app in ``app`` and its virtualenv ``venv``; the database migrated."""
    database = tmp_path / "store.db"
    with closing(sqlite3.connect(database)) as conn:
        for migration in sorted((app / "migrations").glob("*.sql")):
            if not migration.name.endswith(".rollback.sql"):
                conn.executescript(migration.read_text())
    unit = (app / UNIT).read_text().splitlines()
    exec_start = next(line for line in unit if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    argv = exec_start.replace(f"{ROOT}/venv/", f"{venv}/").replace(ROOT, str(app)).split()
    assert argv[0] == f"{venv}/bin/gunicorn"
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # as the unit: the shared checkout stays as it is
        "NESOP_STORE_DB": str(database),
        "NESOP_STORE_PORT": "0",
    }
    return subprocess.Popen(argv, cwd=app, env=env, stderr=subprocess.PIPE, text=True)


def test_broken_import_builds_and_imports_but_gunicorn_exits_1(
    example_checkout: Callable[[str], Path], venv_of: Callable[[str], Path], tmp_path: Path
) -> None:
    venv = venv_of("broken/import")
    modules = top_level_modules(venv)
    assert modules == ["gunicorn", "itsdangerous", "markupsafe"]
    check_imports(venv, modules, None)  # the server's check of a new virtualenv passes
    process = start(example_checkout("broken/import"), venv, tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert REMOVED_API in stderr
    assert 'receipts.py", line' in stderr and "Listening at" not in stderr


def test_release_1_1_3_serves_from_its_virtualenv(
    example_checkout: Callable[[str], Path], venv_of: Callable[[str], Path], tmp_path: Path
) -> None:
    """The same way of running, on the release broken/import is based on: it serves."""
    venv = venv_of("v1.1.3")
    assert top_level_modules(venv) == ["gunicorn", "markupsafe"]
    process = start(example_checkout("v1.1.3"), venv, tmp_path)
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "Listening at: " in line:
                break
        else:
            pytest.fail("gunicorn exited before listening:\n" + "".join(seen))
        url = line.split("Listening at: ")[1].split()[0]
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            health = json.load(response)
        assert (health["status"], health["version"], health["pid"]) == ("ok", "1.1.3", process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
