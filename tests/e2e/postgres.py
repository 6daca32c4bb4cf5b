"""PostgreSQL inside a test container: Debian's own server (15 on Debian 12, 17 on Debian 13).

Every base root carries the packages and the cluster their postinst creates (``<version>/main``),
stopped and kept from starting at boot (baseroot.POSTGRESQL_HOOK), so containers that do not use
it pay nothing for it. :func:`start_postgresql` turns the container into an ordinary Debian
PostgreSQL server (the cluster starts now and at every later boot); :func:`create_app_database`
gives the app's account a role and a database it reaches over the local socket with peer
authentication, as the runtime does without ``[migrations] credentials``.
"""

from __future__ import annotations

import re
import time

from .store import APP_ROOT
from .testbed import Container, TestbedError

SOCKET_DIR = "/var/run/postgresql"
CLUSTER = "main"
# The server major version each Debian release ships.
POSTGRESQL_MAJOR: dict[str, str] = {"bookworm": "15", "trixie": "17"}

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def cluster_version(box: Container) -> str:
    """The major version of the container's one cluster (``15``, ``17``)."""
    lines = box.run(["pg_lsclusters", "--no-header"]).stdout.splitlines()
    clusters = [line.split() for line in lines if line.strip()]
    mains = [fields[0] for fields in clusters if len(fields) > 1 and fields[1] == CLUSTER]
    if len(mains) != 1:
        raise TestbedError(f"expected one PostgreSQL cluster named {CLUSTER}, pg_lsclusters says: {lines}")
    return mains[0]


def unit(version: str) -> str:
    """The systemd unit that runs the cluster (Debian's ``postgresql@.service`` instance)."""
    return f"postgresql@{version}-{CLUSTER}.service"


def is_ready(box: Container) -> bool:
    """The server accepts connections on the local socket."""
    return box.run(["pg_isready", "-q", "-h", SOCKET_DIR], check=False).returncode == 0


def wait_ready(box: Container, timeout: float = 60.0) -> None:
    """Poll ``pg_isready`` until the server accepts connections."""
    deadline = time.monotonic() + timeout
    while not is_ready(box):
        if time.monotonic() > deadline:
            journal = box.run(["journalctl", "--no-pager", "-n", "40", "-u", "postgresql@*"], check=False)
            raise TestbedError(f"PostgreSQL did not accept connections in {timeout:.0f} s:\n{journal.stdout}")
        time.sleep(0.1)


def start_postgresql(box: Container, timeout: float = 60.0) -> str:
    """Start the cluster with systemd, as Debian leaves it (start.conf ``auto``,
    ``postgresql.service`` enabled, so it comes back at the next boot); wait until it accepts
    connections; return the server's version (``SHOW server_version``, e.g. ``17.5 (Debian …)``)."""
    version = cluster_version(box)
    box.run(["sed", "-i", "s/^manual$/auto/", f"/etc/postgresql/{version}/{CLUSTER}/start.conf"])
    box.run(["systemctl", "enable", "--quiet", "postgresql.service"])
    # Runs Debian's postgresql-generator again: the cluster is wanted by postgresql.service.
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "start", unit(version), "postgresql.service"], timeout=timeout)
    wait_ready(box, timeout)
    return psql(box, "SHOW server_version")


def psql(box: Container, sql: str, *, user: str = "postgres", db: str | None = None) -> str:
    """Run ``sql`` (any number of statements) with psql as the OS account ``user`` over the local
    socket; ``db`` is a database name or a libpq URL (default: the one named after ``user``).
    Returns the unaligned, tuples-only output; the first failing statement raises CommandError."""
    argv = ["runuser", "-u", user, "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1"]
    if db is not None:
        argv += ["-d", db]
    return box.run([*argv, "-f", "-"], input=sql).stdout.rstrip("\n")


def ensure_account(box: Container, user: str, group: str | None = None, home: str = APP_ROOT) -> None:
    """Create the system group and user if missing, as the runtime does (accounts.py); an existing
    account is left as it is. store.deploy_by_hand creates ``nesop`` itself and refuses an existing
    one: call it before this."""
    group = group or user
    if box.run(["getent", "group", group], check=False).returncode != 0:
        box.run(["groupadd", "--system", group])
    if box.run(["getent", "passwd", user], check=False).returncode != 0:
        box.run(
            [
                "useradd", "--system", "--gid", group, "--home-dir", home,
                "--no-create-home", "--shell", "/usr/sbin/nologin", user,
            ]
        )  # fmt: skip


def database_url(dbname: str) -> str:
    """The libpq URL of ``dbname`` on the local socket: the connecting OS account is the role."""
    return f"postgresql:///{dbname}?host={SOCKET_DIR}"


def create_app_database(box: Container, role: str = "nesop", dbname: str = "nesop_store") -> str:
    """Give the OS account ``role`` (created if missing) a login role of the same name and a
    database it owns; return the URL it connects with (peer authentication, no password).
    Calling it again changes nothing."""
    for name in (role, dbname):
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r}: use a lower-case SQL identifier ([a-z_][a-z0-9_]*)")
    ensure_account(box, role)
    if not psql(box, f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"):
        psql(box, f'CREATE ROLE "{role}" LOGIN')
    if not psql(box, f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"):
        psql(box, f'CREATE DATABASE "{dbname}" OWNER "{role}"')
    return database_url(dbname)


__all__ = [
    "CLUSTER",
    "POSTGRESQL_MAJOR",
    "SOCKET_DIR",
    "cluster_version",
    "create_app_database",
    "database_url",
    "ensure_account",
    "is_ready",
    "psql",
    "start_postgresql",
    "unit",
    "wait_ready",
]
