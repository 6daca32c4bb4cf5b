"""The guide's quick start, followed as written on a new app's repository, up to its two packages.

Every dev-machine block of the quick start in docs/guide.md (a fenced block right after a
``<!-- quickstart: dev -->`` line) is run command by command (the lines after ``$ ``) with bash, in
a small app of this test's own: ``app.py``, its systemd unit in ``deploy/`` and one migration with
its rollback, committed. nesop-deb comes from the test's virtual environment on ``PATH``; git, make
and dpkg-deb are the real ones. What each command prints must hold the lines the guide shows under
it, in order (``...`` stands for any lines, a line ending in ``…`` for any rest of it, and the
guide's ``/home/me/src/myapp`` is the app's directory here).

``$EDITOR`` is a script of this test that makes exactly the edit the guide describes: in
``nesop-deb.toml`` it turns the commented-out ``url`` and ``database`` lines into the two settings
the guide's text gives (taken from the guide); in ``app.py`` (the guide's "change the app") it
changes the greeting.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .helpers import BIN, REPO_ROOT, control_fields, package_manifest

GUIDE = REPO_ROOT / "docs" / "guide.md"
MARK = "<!-- quickstart: dev -->"
GUIDE_APP = "/home/me/src/myapp"  # where the guide's app lives

APP_PY = '''\
"""myapp: greets visitors, and answers /health while its database is there."""

import os
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATABASE = os.environ.get("MYAPP_DB", "/opt/myapp/data/myapp.db")
GREETING = "Hello"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True).execute("SELECT 1 FROM greetings")
            body = b"ok\\n"
        else:
            body = f"{GREETING}!\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
'''

UNIT = """\
[Unit]
Description=myapp
After=network.target

[Service]
User=myapp
Group=myapp
WorkingDirectory=/opt/myapp
ExecStart=/usr/bin/python3 /opt/myapp/app.py
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# $EDITOR FILE: the edit the guide describes for FILE; fails loudly if the file is not as the
# guide says (a line it tells you to change is not there).
EDITOR = """\
import os
import re
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text(encoding="utf-8")
if path.name == "nesop-deb.toml":
    for key in ("url", "database"):
        setting = os.environ["QUICKSTART_" + key.upper()]
        text, n = re.subn(rf"(?m)^# *{key} = .*$", lambda _m: setting, text)
        if n != 1:
            sys.exit(f"editor: {path} has {n} commented-out `{key} = ` lines, not 1")
elif path.name == "app.py":
    text, n = re.subn(r'(?m)^GREETING = "Hello"$', 'GREETING = "Hello, visitor"', text)
    if n != 1:
        sys.exit(f"editor: {path} has no GREETING line to change")
else:
    sys.exit(f"editor: the quick start edits no {path.name}")
path.write_text(text, encoding="utf-8")
"""


@dataclass(frozen=True)
class Command:
    line: str  # as the guide prints it after `$ `
    shows: list[str]  # the guide's output lines under it


def quick_start() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("\n## Quick start for your own app\n")
    return text[start : text.index("\n## ", start + 1)]


def dev_commands(section: str) -> list[Command]:
    """The marked blocks' commands, in order, each with the output lines the guide shows."""
    commands: list[Command] = []
    for block in re.findall(rf"{re.escape(MARK)}\n```console\n(.*?)\n```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append(Command(line[2:], []))
            else:
                assert commands, f"the quick start shows output before any command: {line!r}"
                commands[-1].shows.append(line)
    return commands


def setting(section: str, key: str) -> str:
    """The `key = "…"` the quick start's text says to set."""
    found = [m.group(1) for m in re.finditer(rf'`({key} = "[^"`]+")`', section)]
    assert len(found) == 1, f"the quick start should name one {key} setting, not {found}"
    return found[0]


def assert_shows(command: Command, output: str, app: Path) -> None:
    """Each line the guide shows is in ``output``, in order; ``...`` skips any lines."""
    lines = output.splitlines()
    at = 0
    for shown in command.shows:
        if shown.strip() in ("...", "…"):
            continue
        want = shown.replace(GUIDE_APP, str(app))
        prefix = want.endswith("…")
        want = want.removesuffix("…").rstrip() if prefix else want
        for i in range(at, len(lines)):
            if lines[i] == want or (prefix and lines[i].startswith(want)):
                at = i + 1
                break
        else:
            raise AssertionError(
                f"`{command.line}` did not print {shown!r} (in order); it printed:\n{output}"
            )


def make_app(path: Path, env: dict[str, str]) -> None:
    """The app as its developer has it before nesop-deb: committed, with a git identity."""
    files = {
        "app.py": APP_PY,
        "deploy/myapp.service": UNIT,
        "migrations/0001_create_greetings.sql": "CREATE TABLE greetings (name TEXT NOT NULL);\n",
        "migrations/0001_create_greetings.rollback.sql": "DROP TABLE greetings;\n",
    }
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text, encoding="utf-8")
    for args in (
        ["init", "--quiet", "--initial-branch=main"],
        ["config", "user.name", "Your Name"],
        ["config", "user.email", "you@example.com"],
        ["add", "-A"],
        ["commit", "--quiet", "-m", "myapp"],
    ):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)


def test_the_quick_start_runs_as_written(tmp_path: Path, env: dict[str, str]) -> None:
    section = quick_start()
    commands = dev_commands(section)
    assert [c.line for c in commands][:2] == ["nesop-deb init", "$EDITOR nesop-deb.toml"], commands
    app = tmp_path / "src" / "myapp"
    app.mkdir(parents=True)
    make_app(app, env)
    editor = tmp_path / "editor"
    editor.write_text(f"#!{sys.executable}\n{EDITOR}", encoding="utf-8")
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    shell_env = {
        **env,
        "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "EDITOR": str(editor),
        "QUICKSTART_URL": setting(section, "url"),
        "QUICKSTART_DATABASE": setting(section, "database"),
    }

    built: list[Path] = []
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command.line],
            cwd=app,
            env=shell_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, f"`{command.line}` exited {result.returncode}:\n{result.stdout}"
        assert_shows(command, result.stdout, app)
        if command.line.startswith("make deb"):
            # the guide's last line of a build is the package's path
            built.append(Path(command.shows[-1].replace(GUIDE_APP, str(app))))
            assert result.stdout.splitlines()[-1] == str(built[-1])

    # the two packages the quick start says it built: the first install, and the update from it
    assert built == [app / "dist/full/myapp-update_1.0.0_all.deb", app / "dist/myapp-update_1.0.1_all.deb"]
    for deb, version in zip(built, ("1.0.0", "1.0.1"), strict=True):
        assert deb.is_file(), f"{deb} is missing; dist/ holds {sorted(p.name for p in app.rglob('*.deb'))}"
        info = subprocess.run(["dpkg-deb", "--info", deb], capture_output=True, text=True, check=False)
        assert info.returncode == 0, info.stderr
        assert " Package: myapp-update\n" in info.stdout and f" Version: {version}\n" in info.stdout
        assert control_fields(deb)["Pre-Depends"].startswith("nesop-deb (>= ")

    full, _ = package_manifest(built[0], "myapp-update")
    assert full["full"] is True and full["bases"] == []
    cfg = full["config"]
    # what init found, and what the guide's edit set
    assert cfg["app"]["unit_file"] == "deploy/myapp.service"
    assert (cfg["app"]["service"], cfg["app"]["user"]) == ("myapp.service", "myapp")
    assert cfg["migrations"]["dir"] == "migrations"
    assert f'url = "{cfg["health"]["url"]}"' == setting(section, "url")
    assert f'database = "{cfg["migrations"]["database"]}"' == setting(section, "database")
    assert cfg["package"]["maintainer"] == "Your Name <you@example.com>"
    assert {f["path"] for f in full["files"]} == {
        "app.py",
        "deploy/myapp.service",
        "migrations/0001_create_greetings.sql",
        "migrations/0001_create_greetings.rollback.sql",
    }
    assert [m["id"] for m in full["migrations"]] == ["0001_create_greetings"]

    update, _ = package_manifest(built[1], "myapp-update")
    assert update["full"] is False and update["bases"] == ["1.0.0"]
    assert [(f["action"], f["path"]) for f in update["files"]] == [("modify", "app.py")]
    # the built packages stay out of git: init ignored dist/, and the tree is clean
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=app, env=env, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
