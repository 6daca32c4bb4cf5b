"""A throwaway PostgreSQL server for the integration tier: Debian's server binaries, a cluster made
by ``initdb`` in a temporary directory and run by the ``postgres`` account, listening only on a
Unix socket in that directory (no TCP port, nothing shared with another test run).

Local connections authenticate by peer (the OS account is the role), except the roles made with a
password, which authenticate by SCRAM over the same socket.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install postgresql"


def server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name)
    )
    return versions[-1] if versions else None


def missing() -> str | None:
    """Why no server can run here, or None."""
    if server_bin() is None:
        return f"no PostgreSQL server is installed ({INSTALL_HINT})"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return f"no postgres account ({INSTALL_HINT})"
    if os.geteuid() != 0:
        return "running a PostgreSQL server for the tests needs root (to run it as postgres)"
    return None


@dataclass
class PgServer:
    bindir: Path
    base: Path
    roles: set[str] = field(default_factory=set)

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def _as_postgres(self, argv: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(
            ["/usr/sbin/runuser", "-u", "postgres", "--", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` as the superuser; the unaligned, tuples-only output."""
        return self._as_postgres(
            [
                str(self.bindir / "psql"),
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-d",
                db,
            ],
            stdin=sql,
        )

    def url(self, db: str, user: str | None = None, password: str | None = None) -> str:
        auth = "" if user is None else user + (f":{password}" if password else "") + "@"
        return f"postgresql://{auth}/{db}?host={self.socket_dir}"

    def create_database(self, db: str, owner: str, password: str | None = None) -> str:
        """A role ``owner`` (made once; with ``password``, it logs in by SCRAM) and a database it
        owns, with ``public`` its own; a libpq URL for it (without the password)."""
        if owner not in self.roles:
            pw = "" if password is None else f" PASSWORD '{password}'"
            self.psql(f'CREATE ROLE "{owner}" LOGIN{pw};')
            self.roles.add(owner)
        self.psql(f'CREATE DATABASE "{db}" OWNER "{owner}";')
        self.psql(f'ALTER SCHEMA public OWNER TO "{owner}";', db=db)
        return self.url(db, owner)

    def drop_database(self, db: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);')

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])


@contextlib.contextmanager
def running(base: Path, password_roles: tuple[str, ...] = ()) -> Iterator[PgServer]:
    """A server in ``base`` (made, and removed after); ``password_roles`` authenticate by password."""
    bindir = server_bin()
    assert bindir is not None
    base.mkdir(parents=True, exist_ok=True)
    pg = pwd.getpwnam("postgres")
    os.chown(base, pg.pw_uid, pg.pw_gid)
    base.chmod(0o755)  # the roles' OS accounts reach the socket inside
    server = PgServer(bindir, base)
    server.socket_dir.mkdir()
    os.chown(server.socket_dir, pg.pw_uid, pg.pw_gid)
    server.socket_dir.chmod(0o755)
    server._as_postgres(
        [str(bindir / "initdb"), "-D", str(server.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
         "--auth-local=peer", "--auth-host=reject"]
    )  # fmt: skip
    hba = server.data / "pg_hba.conf"
    lines = [f"local all {r} scram-sha-256" for r in password_roles]
    hba.write_text("\n".join([*lines, "local all all peer", ""]))
    try:
        server._as_postgres(
            [str(bindir / "pg_ctl"), "-D", str(server.data), "-l", str(base / "log"), "-w", "-t", "60",
             "-o", f"-c listen_addresses='' -k {server.socket_dir} -c fsync=off -c full_page_writes=off",
             "start"]
        )  # fmt: skip
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def for_tests(name: str, password_roles: tuple[str, ...] = ()) -> Iterator[PgServer]:
    """:func:`running` for a test module: skipped without a server to run (failed in CI, where a
    skip would pass untested); in ``/var/tmp/<name>-<pid>``, which every account can reach (pytest's
    own temporary directory is not: ``postgres`` runs the server, the roles' accounts connect)."""
    why = missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with running(Path("/var/tmp") / f"{name}-{os.getpid()}", password_roles) as server:
        yield server
