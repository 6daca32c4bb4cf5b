"""Which files in ``[migrations] dir`` are migrations, and the names that would never run.

The rule, the same in the guide: ``<dir>/NNNN_name.sql`` (four digits, an underscore, then letters,
digits, ``_``, ``.`` or ``-``; lower-case ``.sql``) is a migration and ``NNNN_name.rollback.sql`` its
undo. Anything else ending in ``.sql`` there, or any SQL file in a subdirectory of it, would ship as
a plain file and never run: the builder refuses it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from nesop_deb.errors import BuildError

MIGRATION_NAME = re.compile(r"^(?P<id>[0-9]{4}_[A-Za-z0-9_.-]+?)(?P<rollback>\.rollback)?\.(?P<ext>sql|py)$")
_LOOSE = re.compile(
    r"^(?P<digits>[0-9]+)[-_ .]*(?P<rest>.*?)(?P<rollback>\.rollback)?\.(?:sql)$", re.IGNORECASE
)


def is_migration_file(path: str, migrations_dir: str) -> bool:
    """A migration (or its rollback) as ``[migrations] dir`` holds them: ``<dir>/NNNN_name.sql``."""
    prefix = migrations_dir.rstrip("/") + "/"
    name = path[len(prefix) :] if path.startswith(prefix) else ""
    return "/" not in name and MIGRATION_NAME.match(name) is not None


def _next_free(prefix: str, tree: Iterable[str]) -> str:
    """The number after the highest migration in ``prefix`` (``0001`` if there is none)."""
    ids = [
        int(m.group("id")[:4])
        for p in tree
        if p.startswith(prefix)
        for m in [MIGRATION_NAME.match(p[len(prefix) :])]
        if m
    ]
    return f"{max(ids, default=0) + 1:04d}"


def _suggestion(name: str, free: str) -> str:
    """A name the rule accepts, close to ``name`` (``003-add tags.SQL`` → ``0003_add_tags.sql``);
    one with no number, or more than four digits, takes the next free number ``free``."""
    m = _LOOSE.match(name)
    if m is None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rsplit(".", 1)[0]).strip("_.-") or "change"
        return f"{free}_{stem}.sql"
    digits = m.group("digits")
    number = digits.rjust(4, "0") if len(digits) <= 4 else free
    rest = re.sub(r"[^A-Za-z0-9_.-]+", "_", m.group("rest")).strip("_.-") or "change"
    return f"{number}_{rest}{'.rollback' if m.group('rollback') else ''}.sql"


def check_names(paths: Iterable[str], migrations_dir: str, tree: Iterable[str] = ()) -> None:
    """Refuse an SQL file below ``[migrations] dir`` that the engine would never run: a name the
    rule does not take, a file in a subdirectory, a rollback with no migration of its own.
    ``tree``: every path at HEAD (for the next free number, and the rollbacks' migrations)."""
    prefix = migrations_dir.rstrip("/") + "/"
    at_head = set(tree)
    free = _next_free(prefix, at_head)
    for path in sorted(paths):
        if not path.startswith(prefix) or not path.lower().endswith(".sql"):
            continue
        name = path[len(prefix) :]
        if "/" in name:
            target = shlex.quote(prefix + _suggestion(name.rsplit("/", 1)[1], free))
            raise BuildError(
                f"{path}: migrations in a subdirectory of {prefix} never run",
                hint=f"move it: git mv {shlex.quote(path)} {target} (or out of {prefix})",
            )
        m = MIGRATION_NAME.match(name)
        if m is None:
            raise BuildError(
                f"{path}: not named NNNN_name.sql, so it would ship as a plain file and never run",
                hint=f"rename it: git mv {shlex.quote(path)} {shlex.quote(prefix + _suggestion(name, free))}",
            )
        own = f"{prefix}{m.group('id')}.sql"
        if m.group("rollback") and at_head and own not in at_head:
            raise BuildError(
                f"{path}: a rollback with no migration {own}, so it would never run",
                hint=f"name it after its migration: {prefix}NNNN_name.rollback.sql for {prefix}NNNN_name.sql",
            )


def refuse_python(prefix: str, name: str) -> None:
    """Refuse a ``.py`` file among the migrations: the runtime applies SQL only (and refuses the rest)."""
    if not name.lower().endswith(".py"):
        return
    m = MIGRATION_NAME.match(name)
    fix = (
        f"write it as {prefix}{m.group('id')}{m.group('rollback') or ''}.sql"
        if m
        else f"move it out of {prefix} (or build with --no-migrations --allow-partial)"
    )
    raise BuildError(
        f"{prefix}{name}: Python migrations are not supported", hint=f"only SQL migrations are: {fix}"
    )


# statements PostgreSQL (and for VACUUM, SQLite) refuses to run inside a transaction block
_OUTSIDE_TRANSACTION = re.compile(
    r"\b(?:(?:CREATE\s+(?:UNIQUE\s+)?|DROP\s+)INDEX\s+CONCURRENTLY|REINDEX\b[^;]*?\bCONCURRENTLY"
    r"|REFRESH\s+MATERIALIZED\s+VIEW\s+CONCURRENTLY|VACUUM|(?:CREATE|DROP)\s+(?:DATABASE|TABLESPACE)"
    r"|ALTER\s+SYSTEM)\b",
    re.IGNORECASE,
)
_NOT_CODE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\$(\w*)\$.*?\$\1\$", re.DOTALL)


def runs_outside_transaction(data: bytes) -> bool:
    """Whether a migration is marked ``-- transactional: false`` (yoyo's directive, in its leading
    comments); its rollback runs the same way."""
    from yoyo.migrations import parse_metadata_from_sql_comments

    directives, _, _ = parse_metadata_from_sql_comments(data.decode("utf-8", "replace"))
    return str(directives.get("transactional", "true")).strip().lower() == "false"


def check_transactional(path: str, data: bytes, marked: bool) -> None:
    """Refuse a statement that cannot run in the transaction each migration runs in, unless the
    migration is ``marked`` (see :func:`runs_outside_transaction`) and holds that statement
    alone: outside a transaction, a failure halfway through several would leave half of them."""
    text = data.decode("utf-8", "replace")
    found = _OUTSIDE_TRANSACTION.search(_NOT_CODE.sub(" ", text))
    if marked:
        import sqlparse

        statements = [s for s in sqlparse.split(text) if _NOT_CODE.sub(" ", s).strip(" ;\n\t")]
        if len(statements) > 1:
            raise BuildError(
                f"{path}: marked transactional: false but holds {len(statements)} statements: a failure"
                " after the first would leave it half applied",
                hint="give each statement that needs no transaction a migration of its own",
            )
    elif found is not None:
        statement = " ".join(found.group(0).split()).upper()
        raise BuildError(
            f"{path}: {statement} cannot run inside a transaction, and every migration runs in one",
            hint='make it a migration of its own whose first line is "-- transactional: false"'
            " (its rollback then runs outside a transaction too)",
        )


__all__ = [
    "MIGRATION_NAME",
    "check_names",
    "check_transactional",
    "is_migration_file",
    "refuse_python",
    "runs_outside_transaction",
]
