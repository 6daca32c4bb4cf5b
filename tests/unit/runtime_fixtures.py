"""A fake server for the runtime's unit tests.

Everything is real except systemd: the app tree, the unpacked package, the state directory and
the SQLite database live below ``tmp_path`` (``Context.root`` and ``$DPKG_ROOT`` point there), and
migrations run through the real yoyo. Only the subprocess seam (``nesop_deb.proc.executor``) is
replaced, by :class:`FakeSystemd`, which answers ``systemctl``/``journalctl`` from a small state
machine and hands every other command to the real executor.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import __version__, proc
from nesop_deb.manifest import Action, FileEntry, Manifest, MigrationEntry
from nesop_deb.runtime import database, health, state
from nesop_deb.runtime.context import AppSettings, Context
from nesop_deb.runtime.gating import dropin

PACKAGE = "demo-update"
APP = "demo"
UNIT = "demo.service"
APP_ROOT = "/opt/app"
DB_REL = "data/app.db"
USER = "app"

# yoyo's own bookkeeping: the log grows with every apply/rollback (an audit trail, not app data)
# and the lock table only holds a row while yoyo works.
YOYO_VOLATILE = ("_yoyo_log", "yoyo_lock")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- systemd --------------------------------------------------------------------------------------


@dataclass
class UnitState:
    load: str = "loaded"
    active: str = "active"
    sub: str = "running"
    pid: int = 100
    restarts: int = 0
    # the drop-ins systemd loaded: the toolchain's generator gives every managed app the gate's
    gate_dropin: bool = True


class FakeSystemd:
    """``systemctl show/stop/start/reset-failed/daemon-reload/enable`` and ``journalctl``."""

    def __init__(self, real: proc.Executor) -> None:
        self.real = real
        self.units: dict[str, UnitState] = {}
        self.calls: list[list[str]] = []
        self.fail_starts = 0  # this many coming ``start`` calls fail (the unit ends up failed)
        self.on_start: Callable[[str], None] | None = None
        self.on_stop: Callable[[str], None] | None = None  # the app's last acts while it stops
        self.passthrough: Path | None = None  # commands below this directory really run
        self.unexpected: list[list[str]] = []
        self._next_pid = 1000

    def add_unit(self, name: str, *, active: bool = True) -> UnitState:
        unit = UnitState(active="active" if active else "inactive", sub="running" if active else "dead")
        unit.pid = self._pid() if active else 0
        self.units[name] = unit
        return unit

    def is_active(self, name: str) -> bool:
        unit = self.units.get(name)
        return unit is not None and unit.active == "active"

    def verbs(self) -> list[str]:
        """The systemctl verbs called so far, in order (``show`` left out)."""
        return [c[1] for c in self.calls if c[0] == "systemctl" and c[1] != "show"]

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        if argv[0] == "systemctl":
            self.calls.append(list(argv))
            return self._systemctl(argv)
        if argv[0] == "journalctl":
            self.calls.append(list(argv))
            return proc.Result(argv, 0, b"Traceback (most recent call last):\nboom\n", b"")
        if self.passthrough is not None and argv[0].startswith(f"{self.passthrough}/"):
            return self.real(argv, cwd, env, stdin, timeout)  # a script the test wrote (checks.d)
        # nothing else may reach the machine running the tests (apt-get, useradd, ...)
        self.unexpected.append(list(argv))
        return proc.Result(argv, 127, b"", f"{argv[0]}: not available in unit tests".encode())

    def _systemctl(self, argv: list[str]) -> proc.Result:
        verb = argv[1]
        name = argv[-1]
        unit = self.units.get(name)

        def result(code: int = 0, out: str = "", err: str = "") -> proc.Result:
            return proc.Result(argv, code, out.encode(), err.encode())

        if verb == "daemon-reload":
            for u in self.units.values():
                u.gate_dropin = True  # the generator ran
            return result()
        if verb == "show":
            if unit is None:
                return result(out="LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n")
            return result(
                out=f"LoadState={unit.load}\nActiveState={unit.active}\nSubState={unit.sub}\n"
                f"MainPID={unit.pid}\nNRestarts={unit.restarts}\n"
                + (f"DropInPaths=/run/systemd/generator/{name}.d/{dropin.NAME}\n" if unit.gate_dropin else "")
            )
        if unit is None:
            return result(5, err=f"Failed to {verb} {name}: Unit {name} not found.")
        if verb == "stop":
            if self.on_stop is not None and unit.active == "active":
                self.on_stop(name)
            unit.active, unit.sub, unit.pid = "inactive", "dead", 0
        elif verb == "reset-failed":
            if unit.active == "failed":
                unit.active, unit.sub = "inactive", "dead"
        elif verb == "enable":
            pass
        elif verb == "start":
            if self.fail_starts > 0:
                self.fail_starts -= 1
                unit.active, unit.sub, unit.pid = "failed", "failed", 0
                return result(1, err=f"Job for {name} failed because the control process exited.")
            if unit.active != "active":
                unit.active, unit.sub, unit.pid = "active", "running", self._pid()
            if self.on_start is not None:
                self.on_start(name)
        else:
            return result(1, err=f"Unknown command verb {verb}.")
        return result()


# --- health endpoint ------------------------------------------------------------------------------


class HealthServer:
    """A real HTTP server on 127.0.0.1 whose answer (the status code) a callable decides."""

    def __init__(self, decide: Callable[[], int]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = decide()
                body = b"ok" if code < 300 else b"unhealthy"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/health"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --- an update package ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    entry: FileEntry
    data: bytes | None = None  # the payload of a regular file


def add(path: str, data: bytes, mode: int = 0o644) -> Change:
    return Change(FileEntry(path, Action.ADD, sha(data), len(data), mode, None), data)


def modify(path: str, old: bytes, new: bytes, mode: int = 0o644) -> Change:
    return Change(FileEntry(path, Action.MODIFY, sha(new), len(new), mode, sha(old)), new)


def delete(path: str, old: bytes) -> Change:
    return Change(FileEntry(path, Action.DELETE, None, 0, None, sha(old)))


def rename(old_path: str, path: str, old: bytes, new: bytes, mode: int = 0o644) -> Change:
    return Change(FileEntry(path, Action.RENAME, sha(new), len(new), mode, sha(old), old_path), new)


def add_symlink(path: str, target: str) -> Change:
    text = target.encode()
    return Change(FileEntry(path, Action.ADD, sha(text), len(text), 0o644, None, None, target))


@dataclass(frozen=True)
class Migration:
    id: str
    sql: str
    rollback: str | None = None

    def entry(self) -> MigrationEntry:
        rb = None if self.rollback is None else f"{self.id}.rollback.sql"
        return MigrationEntry(
            self.id,
            f"{self.id}.sql",
            sha(self.sql.encode()),
            self.rollback is not None,
            rb,
            None if self.rollback is None else sha(self.rollback.encode()),
        )


def write_migrations(directory: Path, migrations: Sequence[Migration]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for m in migrations:
        (directory / f"{m.id}.sql").write_text(m.sql, encoding="utf-8")
        if m.rollback is not None:
            (directory / f"{m.id}.rollback.sql").write_text(m.rollback, encoding="utf-8")


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    root: Path
    systemd: FakeSystemd
    settings: dict[str, Any]
    health_servers: list[HealthServer] = field(default_factory=list)

    @property
    def ctx(self) -> Context:
        return Context(PACKAGE, AppSettings.from_manifest_config(self.settings), self.root)

    @property
    def app_root(self) -> Path:
        return self.ctx.app_root

    @property
    def db(self) -> Path:
        return self.app_root / DB_REL

    @property
    def unit(self) -> UnitState:
        return self.systemd.units[UNIT]

    def configure(self, **health: Any) -> None:
        """Change the app settings the next packages carry (``url``, ``timeout``)."""
        self.settings["health"].update(health)

    def serve_health(self, decide: Callable[[], int]) -> str:
        server = HealthServer(decide)
        self.health_servers.append(server)
        self.configure(url=server.url)
        return server.url

    def write_tree(self, files: Mapping[str, bytes | str], modes: Mapping[str, int] | None = None) -> None:
        """Live app files: bytes are regular files, str are symlink targets."""
        modes = modes or {}
        for rel, data in files.items():
            p = self.app_root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                p.symlink_to(data)
                continue
            p.write_bytes(data)
            p.chmod(modes.get(rel, 0o644))

    def init_database(self, migrations: Sequence[Migration], rows: Sequence[str] = ()) -> None:
        """A database as a previous release left it: its migrations applied by yoyo, then data."""
        directory = self.root / "var/tmp/base-migrations"
        write_migrations(directory, migrations)
        self.db.parent.mkdir(parents=True, exist_ok=True)
        db = self.ctx.database
        assert db is not None
        database.apply(db, directory, [m.id for m in migrations])
        self.sql(*rows)

    def sql(self, *statements: str) -> None:
        conn = sqlite3.connect(self.db)
        try:
            for s in statements:
                conn.execute(s)
            conn.commit()
        finally:
            conn.close()

    def package(
        self,
        version: str,
        changes: Sequence[Change],
        migrations: Sequence[Migration] = (),
        *,
        bases: Sequence[str] = ("1.0.0",),
        full: bool = False,
        builder_version: str = __version__,
        settings: dict[str, Any] | None = None,
    ) -> Manifest:
        """Unpack an update package the way dpkg would: payload, migrations, manifest in share."""
        cfg = settings if settings is not None else self.settings
        manifest = Manifest(
            package=PACKAGE,
            version=version,
            bases=tuple(bases),
            full=full,
            source_commit="0" * 40,
            since_commit=None,
            since_ref=None,
            builder_version=builder_version,
            created=0,
            config={k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()},
            files=tuple(sorted((c.entry for c in changes), key=lambda e: e.path)),
            migrations=tuple(m.entry() for m in migrations),
            config_files=tuple(cfg["files"]["config"]),
        )
        share = self.ctx.share
        shutil.rmtree(share, ignore_errors=True)
        payload = share / "payload"
        payload.mkdir(parents=True)
        for c in changes:
            if c.entry.action is Action.DELETE:
                continue
            p = payload / c.entry.path
            p.parent.mkdir(parents=True, exist_ok=True)
            if c.entry.link_target is not None:
                p.symlink_to(c.entry.link_target)
            else:
                assert c.data is not None
                p.write_bytes(c.data)
                p.chmod(c.entry.mode or 0o644)
        write_migrations(share / "migrations", migrations)
        (share / "update_manifest.json").write_text(manifest.to_json(), encoding="utf-8")
        return manifest

    def applied(self) -> list[str]:
        return [a.version for a in state.load(self.ctx).applied]


def default_settings() -> dict[str, Any]:
    return {
        "app": {"name": APP, "root": APP_ROOT, "user": USER, "group": USER, "service": UNIT},
        "migrations": {"dir": "migrations", "database": f"sqlite:///{APP_ROOT}/{DB_REL}"},
        "health": {"url": None, "timeout": 2},
        "files": {"config": ["config.py"]},
        "backups": {"keep": 5},
    }


def _scratch_root(tmp_path: Path) -> Path:
    """The fake server's ``/``: in RAM where possible, since the runtime fsyncs at every step."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return Path(tempfile.mkdtemp(prefix="nesop-runtime-", dir=shm)) / "root"
    return tmp_path / "root"


def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Set up an empty fake server (the generator body of a fixture: it cleans up after)."""
    root = _scratch_root(tmp_path)
    (root / "etc").mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()
    (root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:{uid}:{gid}::{APP_ROOT}:/usr/sbin/nologin\n"
    )
    (root / "etc/group").write_text(f"root:x:0:\n{USER}:x:{gid}:\n")
    systemd = FakeSystemd(proc.executor)
    systemd.add_unit(UNIT)
    systemd.passthrough = root
    monkeypatch.setattr(proc, "executor", systemd)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # the settle window watches for a restart loop; the fake never loops unless a test says so
    monkeypatch.setattr(health, "SETTLE_SECONDS", 0.0)
    logger = logging.getLogger("nesop_deb")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    server = Server(root, systemd, default_settings())
    try:
        yield server
    finally:
        for h in logger.handlers:
            h.close()
        for s in server.health_servers:
            s.close()
        if root.parent != tmp_path:
            shutil.rmtree(root.parent, ignore_errors=True)
    assert systemd.unexpected == [], "a command the fake server does not provide was run"


def walk_with_ghosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``os.walk`` as the app's account can make it look, by deleting its own files: each
    directory lists a file and a subdirectory that are gone when root looks at them, and before
    it, a directory is handed out that is gone too. Returns the vanished directories handed out."""
    real_walk = os.walk
    ghosts: list[str] = []

    def walk(top: Any, *args: Any, **kwargs: Any) -> Iterator[tuple[str, list[str], list[str]]]:
        for dirpath, dirs, files in real_walk(top, *args, **kwargs):
            ghosts.append(os.path.join(dirpath, "gone-dir"))
            yield ghosts[-1], [], []  # listed by its parent, removed before root's turn
            dirs.append("gone-dir")
            files.append("gone-file")
            yield dirpath, dirs, files

    monkeypatch.setattr(os, "walk", walk)
    return ghosts


# --- snapshots ------------------------------------------------------------------------------------

Entry = tuple[str, bytes | str | None, int, int, int]  # kind, content, mode, uid, gid


def watch_migration_reads(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each ``database.read`` from now on appends the systemctl verbs called by then (and checks
    that the migrations it returns are parsed, not only listed)."""
    reads: list[list[str]] = []
    real_read = database.read

    def read(directory: Path, ids: Sequence[str]) -> Any:
        migrations = real_read(directory, ids)
        assert all(m.loaded for m in migrations)
        reads.append(server.systemd.verbs())
        return migrations

    monkeypatch.setattr(database, "read", read)
    return reads


def tree(root: Path, skip: Sequence[str] = ("backups", "logs", DB_REL)) -> dict[str, Entry]:
    """Every path below ``root`` with its kind, content, mode and owner (SQLite files left out)."""
    found: dict[str, Entry] = {}
    for dirpath, dirs, files in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirs + files):
            p = base / name
            rel = str(p.relative_to(root))
            if any(rel == s or rel.startswith(f"{s}/") or rel.startswith(f"{s}-") for s in skip):
                continue
            st = p.lstat()
            mode = st.st_mode & 0o7777
            if p.is_symlink():
                found[rel] = ("link", os.readlink(p), 0, st.st_uid, st.st_gid)
            elif p.is_dir():
                found[rel] = ("dir", None, mode, st.st_uid, st.st_gid)
            else:
                found[rel] = ("file", p.read_bytes(), mode, st.st_uid, st.st_gid)
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return found


def db_dump(path: Path) -> dict[str, Any]:
    """Schema and rows of every table (yoyo's log and lock table: schema only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = sorted(
            conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        )
        rows: dict[str, list[Any]] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            if name in YOYO_VOLATILE:
                continue
            rows[name] = sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
        return {"schema": schema, "rows": rows}
    finally:
        conn.close()


def leftovers(root: Path) -> list[str]:
    """Temporary files a finished operation must not leave behind."""
    return sorted(
        str(p.relative_to(root))
        for pattern in ("*.nesop-tmp", "*.partial", "*.part", ".reserve-*", "*.before-stop")
        for p in root.rglob(pattern)
    )


# --- the standard scenario: 1.0.0 deployed by hand, 1.0.1 changes every kind of thing ---------------

APP_V1 = b"print('v1')\n"
APP_V2 = b"print('v2')\n"
RUN_SH = b"#!/bin/sh\nexec python3 app.py\n"
CONFIG_V1 = b"DEBUG = False\n"
CONFIG_V2 = b"DEBUG = False\nWORKERS = 4\n"
UTIL = b"def util() -> None: ...\n"
OLD_NAME = b"X = 1\n"
NEW_NAME = b"X = 2\n"
NEW_JS = b"console.log('new')\n"
README = b"# demo\n"

BASE_FILES: dict[str, bytes | str] = {
    "app.py": APP_V1,
    "run.sh": RUN_SH,
    "config.py": CONFIG_V1,
    "lib/util.py": UTIL,
    "lib/old_name.py": OLD_NAME,
    "lib/keep.py": b"KEEP = True\n",
    "static/site.css": b"body {}\n",
    "latest.css": "static/site.css",
}

M1 = Migration("0001_items", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
M2 = Migration(
    "0002_orders",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, item INTEGER NOT NULL REFERENCES items(id))",
    "DROP TABLE orders",
)
M3 = Migration("0003_upper_names", "UPDATE items SET name = upper(name)")  # no rollback


def install_base(server: Server, *, yoyo: bool = True) -> None:
    """1.0.0 as deployed: its files, and its database (``yoyo=False``: created by hand, untracked)."""
    server.write_tree(BASE_FILES)
    (server.app_root / "uploads").mkdir(mode=0o750)  # empty: the app writes there at run time
    (server.app_root / "backups").mkdir()
    rows = ["INSERT INTO items (name) VALUES ('apple')", "INSERT INTO items (name) VALUES ('pear')"]
    if yoyo:
        server.init_database([M1], rows)
    else:
        server.db.parent.mkdir(parents=True, exist_ok=True)
        server.sql(M1.sql, *rows)


def changes_101() -> list[Change]:
    return [
        modify("app.py", APP_V1, APP_V2),
        modify("run.sh", RUN_SH, RUN_SH, mode=0o755),
        modify("config.py", CONFIG_V1, CONFIG_V2),
        delete("lib/util.py", UTIL),
        rename("lib/old_name.py", "lib/new_name.py", OLD_NAME, NEW_NAME),
        add("static/js/new.js", NEW_JS),
        add_symlink("static/js/main.js", "new.js"),
        add("README.md", README),
        add("uploads/README.txt", README),
    ]


def release_101(server: Server, **kw: Any) -> Manifest:
    return server.package("1.0.1", changes_101(), [M2, M3], **kw)


def expected_after_101(before: dict[str, Entry]) -> dict[str, Entry]:
    """The tree 1.0.1 must leave, derived from the one before it."""
    uid, gid = os.getuid(), os.getgid()
    after = dict(before)
    del after["lib/util.py"], after["lib/old_name.py"]
    after["app.py"] = ("file", APP_V2, 0o644, uid, gid)
    after["run.sh"] = ("file", RUN_SH, 0o755, uid, gid)
    after["config.py"] = ("file", CONFIG_V2, 0o644, uid, gid)
    after["lib/new_name.py"] = ("file", NEW_NAME, 0o644, uid, gid)
    after["static/js"] = ("dir", None, 0o755, uid, gid)
    after["static/js/new.js"] = ("file", NEW_JS, 0o644, uid, gid)
    after["static/js/main.js"] = ("link", "new.js", 0, uid, gid)
    after["README.md"] = ("file", README, 0o644, uid, gid)
    after["uploads/README.txt"] = ("file", README, 0o644, uid, gid)
    return after
