"""The interface every database engine of the runtime implements, and what they share.

An update needs six things from the app's database: a snapshot taken while the old app serves,
a cheap check after the stop that nothing was committed since (:meth:`Held.unchanged`), the
migrations (yoyo-migrations, :mod:`.migrations`), their undo, a restore of the snapshot, and a
health check. :class:`Database` is that interface; a new engine is one module implementing it
(see :mod:`.sqlite` and :mod:`.postgresql`) and one line in :func:`nesop_deb.runtime.database.of`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from nesop_deb.errors import NesopError
from nesop_deb.runtime import owner as owner_
from nesop_deb.runtime.safefs import Tree

Owner = tuple[int, int] | None  # (uid, gid) to work as; None: this process's own


class DatabaseError(NesopError):
    """The database could not be read, copied, restored or checked."""


class MigrationError(NesopError):
    """A migration failed (its own transaction was rolled back by the database)."""


class Held(Protocol):
    """A snapshot taken while the app ran, and the way to tell whether it still holds."""

    sha256: str
    size: int

    def unchanged(self) -> bool:
        """Whether the database is still exactly what the snapshot holds (False whenever that
        cannot be shown); releases what the check held."""

    def close(self) -> None: ...


class Database(ABC):
    """One app's database, as its settings name it."""

    kind: ClassVar[str]  # the URL scheme
    snapshot_file: ClassVar[str]  # the snapshot's name in a backup
    errors: ClassVar[tuple[type[BaseException], ...]]  # what a failed read raises, besides ours

    def __init__(self, url: str, owner: Owner) -> None:
        self.url = url  # as the settings give it (never with a secret)
        self.owner = owner  # who the database work runs as (see :func:`as_owner`)

    @property
    @abstractmethod
    def migration_url(self) -> str:
        """The URL yoyo-migrations connects with."""

    @property
    def source(self) -> str:
        """What a backup records as the snapshot's source."""
        return self.url

    @abstractmethod
    def exists(self) -> bool:
        """Whether there is a database to snapshot (an app never started may have none yet)."""

    @abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether the database has a table ``name`` (in its default schema), read without
        changing anything (yoyo's own connection would create its lock table)."""

    @abstractmethod
    def snapshot(self, dest: Tree, name: str) -> str:
        """A consistent copy into ``dest/name`` while the app may write; its sha256."""

    @abstractmethod
    def snapshot_held(self, dest: Tree, name: str) -> Held:
        """:meth:`snapshot`, keeping what :meth:`Held.unchanged` needs."""

    @abstractmethod
    def restore(self, backup: Tree, name: str, keep_current_as: str | None) -> None:
        """Put the snapshot ``backup/name`` back (the app is stopped) in one step: all of it or
        nothing. ``keep_current_as``: first copy the current database there."""

    @abstractmethod
    def check(self) -> str:
        """The engine's own health check: 'ok', or what is wrong."""


def as_owner(owner: Owner, fn: Callable[[], list[str]], what: str = "the database work") -> list[str]:
    """Run ``fn`` as ``owner`` (the app's account) in a forked child; its result.

    SQLite creates and opens the database's journal, WAL and shared-memory files by path, in a
    directory the app's account can write to: as root it would follow any link planted there.
    As the owner it can reach only what that account already can, and every file it creates is
    the owner's without a chown. PostgreSQL's peer authentication maps the same account to its
    role. See :mod:`nesop_deb.runtime.owner` for the deadline. Errors come back as
    :class:`MigrationError`.
    """
    if owner is None or owner == (os.geteuid(), os.getegid()):
        return fn()

    def work(channel: owner_.Channel) -> None:  # pragma: no cover - runs in the child
        try:
            result: dict[str, Any] = {"ok": fn()}
        except BaseException as exc:  # everything goes back to root
            result = {"error": str(exc)}
        channel.send(json.dumps(result).encode())

    child = owner_.Child(owner, work, what)
    try:
        result = json.loads(child.recv())
    except owner_.OwnerError as exc:
        raise MigrationError(str(exc)) from None
    except ValueError:
        raise MigrationError(f"the process running as uid {owner[0]} ended without a result") from None
    finally:
        child.close()
    if "error" in result:
        raise MigrationError(str(result["error"]))
    return [str(i) for i in result["ok"]]
