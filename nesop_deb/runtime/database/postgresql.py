"""PostgreSQL: a ``pg_dump`` snapshot while the old app serves, a transaction-id check after the
stop, migrations with a lock timeout, and a restore in one transaction.

Who connects: with ``[migrations] credentials`` (a root-only libpq password file) the runtime
itself, with that file; without, the app's account over the local socket (peer
authentication), every tool run as that account. Credentials never travel in the package.

The check after the stop: ``pg_current_snapshot()`` before the dump gives ``xmax``, one past the
newest transaction that had finished (committed or aborted), and the ids still running below it
(none when ``xmin = xmax``). Any transaction that writes gets an id; when one at or above ``xmax``
finishes, ``xmax`` moves past it. One running below ``xmax`` would not move it: then the check
answers "changed" at once. So when none ran below it and ``xmax`` is the same after the stop,
nothing was committed between that reading and the check, and the dump (taken in between) holds
exactly the database. Ids are counted for the whole server: writes to another database there,
or an autovacuum's ANALYZE, only cost a second dump. Sequences advance without an id (``nextval``
logs one only every 32 values, an unlogged sequence never), so the reading also holds a digest
of every sequence's last value: a restore never hands out a number twice.

Every connection root's tools make for a query or the restore sets ``search_path=pg_catalog``:
the role can set its own search_path and shadow an operator, so nothing the runtime decides on
resolves through it (the migrations keep the role's own).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, ClassVar, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from nesop_deb import proc
from nesop_deb.errors import CommandError
from nesop_deb.runtime.database.base import Database, DatabaseError, Owner
from nesop_deb.runtime.safefs import Tree

log = logging.getLogger(__name__)

_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/", "PGCONNECT_TIMEOUT": "10"}
TOOLS_HINT = "install the PostgreSQL client tools of the server's version: apt install postgresql-client"

# Before a restore: drop what the app's role owns outside the system schemas (what a failed
# update may have created is not in the snapshot, so ``pg_restore --clean`` alone would leave it),
# in the same transaction as the restore itself: schemas, tables, views, sequences, routines,
# types and large objects. Not extensions, collations, publications or text-search objects
# (docs/guide.md: they are the database administrator's). Run with search_path=pg_catalog.
_DROP_OWNED = r"""
DO $nesop$
DECLARE
    r record;
    routine text;
    routines text[];
    me oid := (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user);
BEGIN
    PERFORM pg_catalog.lo_unlink(l.oid) FROM pg_catalog.pg_largeobject_metadata l WHERE l.lomowner = me;
    FOR r IN SELECT n.nspname FROM pg_catalog.pg_namespace n
             WHERE n.nspowner = me AND n.nspname <> 'public' AND n.nspname !~ '^pg_'
               AND n.nspname <> 'information_schema'
    LOOP
        EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
    END LOOP;
    FOR r IN SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name,
                    CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                   WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                   ELSE 'TABLE' END AS what
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = me AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
               AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                               WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                 AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
    LOOP
        EXECUTE pg_catalog.format('DROP %s IF EXISTS %s CASCADE', r.what, r.name);
    END LOOP;
    -- the names first, all of them: a routine dropped by an earlier one's CASCADE has no name left
    SELECT pg_catalog.array_agg(p.oid::pg_catalog.regprocedure::text) INTO routines
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE p.proowner = me AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                       WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                         AND d.objid = p.oid AND d.deptype = 'e');
    FOREACH routine IN ARRAY coalesce(routines, '{}') LOOP
        EXECUTE pg_catalog.format('DROP ROUTINE IF EXISTS %s CASCADE', routine);
    END LOOP;
    FOR r IN SELECT pg_catalog.format('%I.%I', n.nspname, t.typname) AS name
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typowner = me
               AND (t.typtype IN ('e', 'd', 'r', 'm')
                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c  -- a composite type of its own
                               WHERE c.oid = t.typrelid AND c.relkind = 'c'))
               AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                               WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                                 AND d.objid = t.oid AND d.deptype IN ('e', 'i'))
    LOOP
        EXECUTE pg_catalog.format('DROP TYPE IF EXISTS %s CASCADE', r.name);
    END LOOP;
END
$nesop$;
"""


def with_args(url: str, **args: str) -> str:
    """``url`` with query parameters added (libpq and psycopg2 read both from the query);
    ``options`` is appended to, not replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in args.items():
        query[key] = f"{query[key]} {value}" if key == "options" and query.get(key) else value
    # not urlunsplit: it drops the "//" of an empty host (postgresql:///db), which libpq needs
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query, quote_via=quote)}"


@dataclass(frozen=True)
class _XidState:
    xmax: int
    quiet: bool  # no transaction was running below xmax
    sequences: str  # every sequence's last value: nextval() takes no transaction id every time


def _xid_state(out: str) -> _XidState:
    xmin, xmax, sequences = out.strip().split("|")
    return _XidState(int(xmax), int(xmin) == int(xmax), sequences)


# compared here, not in SQL: nothing of it resolves through a search_path the role may have set
_XID_QUERY = (
    "SELECT pg_catalog.pg_snapshot_xmin(s)::text, pg_catalog.pg_snapshot_xmax(s)::text,"
    " (SELECT pg_catalog.md5(pg_catalog.string_agg(pg_catalog.format('%I.%I=%s', q.schemaname,"
    " q.sequencename, q.last_value), ',' ORDER BY q.schemaname, q.sequencename))"
    " FROM pg_catalog.pg_sequences q)"
    " FROM pg_catalog.pg_current_snapshot() AS s"
)
# how long a dump or a restore may take before root gives up on it (a tool run as the app's
# account can be stopped by that account: root never waits without a deadline)
TOOL_TIMEOUT = 4 * 3600.0


class PostgresDatabase(Database):
    """A database on a PostgreSQL server (``postgresql://`` libpq URL)."""

    kind = "postgresql"
    snapshot_file = "database.pgdump"
    errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, url: str, owner: Owner, credentials: Path | None, lock_timeout: float) -> None:
        # with a password file, root connects with it; without, the app's account by peer
        super().__init__(url, None if credentials is not None else owner)
        self.credentials = credentials
        self.lock_timeout_ms = max(1, round(lock_timeout * 1000))

    # -- how to connect -------------------------------------------------------------------------

    def _conn_url(self, **extra: str) -> str:
        args = {"application_name": "nesop-update", **extra}
        if self.credentials is not None:
            self._check_credentials()
            args["passfile"] = str(self.credentials)
        return with_args(self.url, **args)

    @property
    def migration_url(self) -> str:
        return self._conn_url(options=f"-c lock_timeout={self.lock_timeout_ms}")

    def _admin_url(self) -> str:
        """The connection of root's own queries and of the restore (see the module's doc)."""
        return self._conn_url(options=f"-c lock_timeout={self.lock_timeout_ms} -c search_path=pg_catalog")

    def _check_credentials(self) -> None:
        """The password file must be root's alone: the app's account must not read or swap it."""
        path = self.credentials
        assert path is not None
        try:
            st = path.lstat()
        except OSError as exc:
            raise DatabaseError(
                f"{path}: cannot read the database credentials ({exc.strerror})",
                hint="create it as root, mode 0600, one libpq password line: host:port:db:user:password",
            ) from None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise DatabaseError(
                f"{path}: the database credentials must be a regular file owned by root, mode 0600"
                f" (it is {'a link' if stat.S_ISLNK(st.st_mode) else oct(stat.S_IMODE(st.st_mode))},"
                f" uid {st.st_uid})",
                hint=f"chown root:root {path} && chmod 0600 {path}",
            )
        # libpq opens it again by its path: no directory on the way may let another account swap
        # an entry (root-owned, and not writable by others unless sticky: /tmp's entries are
        # then their owners' alone)
        for parent in path.parents:
            pst = parent.lstat()
            shared = pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX
            if not stat.S_ISDIR(pst.st_mode) or pst.st_uid != 0 or shared:
                raise DatabaseError(
                    f"{path}: the database credentials must be in directories only root can change"
                    f" ({parent} is {_what(pst)})",
                    hint="keep the file in /etc/nesop-update/ (root:root, mode 0755)",
                )

    def _argv(self, tool: str, *args: str) -> list[str]:
        """A client tool, run as :attr:`owner` when that is not this process."""
        argv = [tool, *args]
        owner = self.owner
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            return [os.fspath(a) for a in proc.as_account(owner[0], owner[1], argv)]
        return argv

    def _run(self, tool: str, *args: str, stdin: bytes | None = None, timeout: float = 3600) -> proc.Result:
        try:
            return proc.run(self._argv(tool, *args), cwd=Path("/"), env=_ENV, stdin=stdin, timeout=timeout)
        except CommandError as exc:
            raise self._failed(tool, exc) from None

    def _failed(self, tool: str, exc: CommandError) -> DatabaseError:
        if exc.returncode == 127:
            return DatabaseError(f"{tool} is not installed", hint=TOOLS_HINT)
        return DatabaseError(f"{self.url}: {tool} failed: {_last_line(exc.stderr)}")

    def _psql(self, sql: str, *, role_path: bool = False) -> str:
        """``sql``'s unaligned output; on root's connection (search_path=pg_catalog) unless
        ``role_path``: then with the role's own search_path (where its migrations put tables)."""
        url = self.migration_url if role_path else self._admin_url()
        return self._run(
            "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, stdin=sql.encode()
        ).out

    # -- the interface --------------------------------------------------------------------------

    def exists(self) -> bool:
        """The database is the server's to keep: it always exists for the runtime (a server that
        cannot be reached fails the snapshot, before the stop)."""
        return True

    def has_table(self, name: str) -> bool:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain table name: {name!r}")
        # the role's current schema is where yoyo keeps its tables; the names compared here
        out = self._psql(
            "SELECT t.tablename FROM pg_catalog.pg_tables t"
            " WHERE t.schemaname OPERATOR(pg_catalog.=) pg_catalog.current_schema()",
            role_path=True,
        )
        return name in out.split()

    def _dump(self, dest: Tree, name: str) -> tuple[str, int]:
        """``pg_dump -Fc`` straight into ``dest/name`` (through a ``.part`` file, never held in
        memory); its sha256 and size."""
        part = name + ".part"
        lock_wait = f"--lock-wait-timeout={self.lock_timeout_ms}"
        argv = self._argv("pg_dump", "-Fc", "--no-sync", lock_wait, "-d", self._conn_url())

        def into_backup(out: IO[bytes]) -> _Hashing:
            reader = _Hashing(out)
            dest.write_new(part, cast(BinaryIO, reader), 0o600)  # a full disk leaves no half copy
            return reader

        try:
            reader = proc.stream(argv, into_backup, cwd=Path("/"), env=_ENV, timeout=TOOL_TIMEOUT)
        except CommandError as exc:
            dest.unlink(part)
            raise self._failed("pg_dump", exc) from None
        dest.replace(part, name)
        return reader.sha256.hexdigest(), reader.size

    def snapshot(self, dest: Tree, name: str) -> str:
        return self._dump(dest, name)[0]

    def snapshot_held(self, dest: Tree, name: str) -> HeldDump:
        before = _xid_state(self._psql(_XID_QUERY))
        digest, size = self._dump(dest, name)
        return HeldDump(self, digest, size, before)

    def restore(self, backup: Tree, name: str, keep_current_as: str | None) -> None:
        if self._is_superuser():
            raise DatabaseError(
                f"{self.url}: will not restore as a superuser role (it would drop what the"
                " superuser owns, system objects included)",
                hint="connect as the role that owns the app's tables (not postgres), see docs/guide.md",
            )
        if keep_current_as is not None:
            self.snapshot(backup, keep_current_as)
        # One transaction, which psql opens and only pg_restore closes: the drop first, then the
        # dump's SQL, and the one COMMIT is the last line pg_restore -1 writes (its -1 also keeps
        # large objects out of transactions of their own). A pg_restore that dies part-way never
        # writes it: psql reaches the end of its input inside the transaction, and the server
        # rolls it back. psql's own -1 would commit at that end, whatever came before.
        load = self._argv(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", "BEGIN", "-c", _DROP_OWNED, "-f", "-", "-d", self._admin_url(),
        )  # fmt: skip
        with backup.open_file(name) as dump:
            try:
                proc.pipeline(
                    self._argv("pg_restore", "--single-transaction", "-f", "-"),
                    load,
                    stdin=dump.fileno(),
                    cwd=Path("/"),
                    env=_ENV,
                    timeout=TOOL_TIMEOUT,
                )
            except CommandError as exc:
                raise self._failed("psql" if exc.argv == load else "pg_restore", exc) from None

    def _is_superuser(self) -> bool:
        return (
            self._psql("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").strip() == "t"
        )

    def check(self) -> str:
        out = self._psql(
            "SELECT pg_catalog.pg_is_in_recovery(), r.rolsuper, current_user"
            " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
        ).strip()
        recovery, superuser, user = out.split("|", 2)
        if recovery == "t":
            return "the server is a standby in recovery: migrations cannot write there"
        if superuser == "t":
            return f"the role {user} is a superuser: the app's database must be owned by a role of its own"
        return "ok"


@dataclass
class HeldDump:
    """A dump taken while the app ran, and the transaction-id reading taken before it."""

    db: PostgresDatabase = field(repr=False)
    sha256: str
    size: int
    before: _XidState

    def unchanged(self) -> bool:
        if not self.before.quiet:
            return False
        try:
            now = _xid_state(self.db._psql(_XID_QUERY))
        except (DatabaseError, ValueError) as exc:
            log.debug("cannot read the transaction ids: %s", exc)
            return False
        return (now.xmax, now.sequences) == (self.before.xmax, self.before.sequences)

    def close(self) -> None:
        """Nothing is held open between the dump and the check."""


class _Hashing:
    """A stream read through once, counting and hashing what passes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.raw.read(n)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk


def _what(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    return f"owned by uid {st.st_uid}, mode {oct(stat.S_IMODE(st.st_mode))}"


def _last_line(stderr: str) -> str:
    """The error itself: the last ``ERROR:``/``FATAL:`` line (psql follows it with context)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if any(k in line for k in ("ERROR:", "FATAL:", "error:"))]
    return (errors or lines or ["no message"])[-1]
