"""The NESOP Store from 1.2.0 under gunicorn 27, handed its listening socket as systemd hands it
nesop-store.socket: the socket at fd 3, LISTEN_FDS=1 and LISTEN_PID the pid of the process
ExecStart runs. gunicorn takes that socket by itself and ignores ``bind``; a request sent while no
gunicorn runs waits in the socket's queue for the next one, also across a release that does not
start. The virtualenv is built as the server builds it (only wheels, every hash required; here
from PyPI)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.unit.activation import activated

pytestmark = pytest.mark.integration

ROOT = "/opt/nesop-store"
UNIT = "deploy/nesop-store.service"


@pytest.fixture(scope="module")
def venv(example_checkout: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv of 1.2.0's requirements.txt, which 1.2.2 and broken/socket-start keep."""
    requirements = example_checkout("v1.2.0") / "requirements.txt"
    for ref in ("v1.2.2", "broken/socket-start"):
        assert (example_checkout(ref) / "requirements.txt").read_bytes() == requirements.read_bytes()
    path = tmp_path_factory.mktemp("venv") / "v1.2.0"
    cache = tmp_path_factory.mktemp("pip-cache")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", path / "bin/python", "--disable-pip-version-check",
         "install", "--quiet", "--require-hashes", "--only-binary=:all:", "--cache-dir", cache,
         "-r", requirements],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


@pytest.fixture
def database(example_checkout: Callable[[str], Path], tmp_path: Path) -> Path:
    """1.2.2's schema: every migration of main applied."""
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as conn:
        for migration in sorted((example_checkout("v1.2.2") / "migrations").glob("*.sql")):
            if not migration.name.endswith(".rollback.sql"):
                conn.executescript(migration.read_text())
    return path


def start(app: Path, venv: Path, database: Path, listener: socket.socket) -> subprocess.Popen[str]:
    """The unit's ExecStart, with the app in ``app`` and ``listener`` as the socket from systemd."""
    unit = (app / UNIT).read_text().splitlines()
    exec_start = next(line for line in unit if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    argv = exec_start.replace(f"{ROOT}/venv/", f"{venv}/").replace(ROOT, str(app)).split()
    assert argv[0] == f"{venv}/bin/gunicorn"
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # as the unit: the shared checkout stays as it is
        "NESOP_STORE_DB": str(database),
        # config.py names the socket's own address: were bind used, gunicorn would find it taken
        "NESOP_STORE_PORT": str(listener.getsockname()[1]),
    }
    return activated(argv, listener, cwd=app, env=env)


def listening_at(process: subprocess.Popen[str]) -> str:
    """The address gunicorn says it listens at (its log, up to that line)."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Listening at: " in line:
            return line.split("Listening at: ")[1].split()[0]
    pytest.fail("gunicorn exited before listening:\n" + "".join(seen))


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def health(response: http.client.HTTPResponse) -> tuple[int, str, int]:
    body = json.loads(response.read())
    return response.status, body["version"], body["pid"]


def test_gunicorn_serves_on_the_socket_from_systemd_and_the_next_one_answers_what_waited(
    example_checkout: Callable[[str], Path], venv: Path, database: Path
) -> None:
    app = example_checkout("v1.2.0")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        first = start(app, venv, database, listener)
        try:
            assert listening_at(first) == f"http://127.0.0.1:{port}"
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            client.request("GET", "/health")
            assert health(client.getresponse()) == (200, "1.2.0", first.pid)  # the master's pid
            client.close()
            assert stop(first) == 0
        finally:
            first.kill()
            first.wait()
        # no gunicorn runs: the request is sent all the same, and waits in the socket's queue
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        waiting.request("GET", "/health")
        second = start(app, venv, database, listener)
        try:
            assert health(waiting.getresponse()) == (200, "1.2.0", second.pid)
            assert stop(second) == 0
        finally:
            waiting.close()
            second.kill()
            second.wait()


def test_broken_socket_start_exits_1_and_what_waited_is_answered_by_1_2_2(
    example_checkout: Callable[[str], Path], venv: Path, database: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        waiting.request("GET", "/health")
        broken = start(example_checkout("broken/socket-start"), venv, database, listener)
        _, stderr = broken.communicate(timeout=120)
        assert broken.returncode == 1, stderr
        assert "missing ), unterminated subpattern" in stderr and "Listening at" not in stderr
        # as an update's undo starts the release before: it finds the socket, and the request, waiting
        previous = start(example_checkout("v1.2.2"), venv, database, listener)
        try:
            assert health(waiting.getresponse()) == (200, "1.2.2", previous.pid)
            assert stop(previous) == 0
        finally:
            waiting.close()
            previous.kill()
            previous.wait()
