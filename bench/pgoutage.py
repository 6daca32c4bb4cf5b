"""Benchmark 9: the outage of an update with a migration as the database grows, on PostgreSQL
and on SQLite.

Two servers of the host's Debian release run the example store at 1.3.0: one on SQLite, one on
Debian's PostgreSQL (started by systemd in the container; the store's account connects by peer
authentication). For each database size (10 MiB and 1 GiB by default) the database is grown
with customers, orders and order lines, and then, ``runs`` times: a bare ``systemctl restart``
(the baseline), the update to 1.3.1 (migration 0006 adds a column) and the apt rollback to 1.3.0
(its down-migration drops it), each timed and watched by the health poller.

The store takes its listening socket from systemd (since 1.2.0): while it is stopped, requests
wait in the socket's queue instead of failing, and the poller's probes (0.25 s timeout) see the
outage in steps of their timeout. So the outage here is read from the container's journal, from
systemd's ``Stopping`` of the store to its ``Listening at:`` line (server.service_phases); the
poller's is reported beside it.

What should hold: the snapshot of the database (``pg_dump -Fc`` on PostgreSQL, SQLite's online
backup) is taken in the ``backup`` step, before the stop, while the old app serves; after the stop
``snapshot-db`` only asks whether anything was committed since. So the ``backup`` step grows with
the database and the outage does not: the largest database's median outage at most
scaling.FLAT times the smallest's (+ noise).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import dbfill
from bench.assets import MIB
from bench.common import Goal, Stat, say, size, table
from bench.scaling import FLAT, NOISE_S
from bench.server import OpResult, Server
from tests.e2e import pgstore, store
from tests.e2e.testbed import Container, host_suite

ENGINES = ("postgresql", "sqlite")
BASE, UPDATE = "1.3.0", "1.3.1"
SIZES_MIB = (10, 1024)
KEPT = "database unchanged since the copy taken before the stop"  # update.log, snapshot-db


@dataclass(frozen=True)
class Packages:
    toolchain: Path
    suite: str
    full: dict[str, Path]  # engine → --full package of BASE
    update: dict[str, Path]  # engine → the update to UPDATE


@dataclass
class Point:
    engine: str
    db_bytes: int  # as asked for
    db_actual: int = 0  # the grown database's size (pg_database_size, SQLite's pages)
    restart: list[OpResult] = field(default_factory=list)
    update: list[OpResult] = field(default_factory=list)
    rollback: list[OpResult] = field(default_factory=list)

    def kept(self) -> int:
        """Updates whose copy taken before the stop became the snapshot (nothing committed since)."""
        return sum(bool(op.lines(KEPT)) for op in self.update)


def build(work: Path, toolchain: Path, suite: str | None = None) -> Packages:
    """The store's history, its PostgreSQL branch (tests/e2e/pgstore.py) and the four packages."""
    suite = suite or host_suite() or "bookworm"
    work.mkdir(parents=True, exist_ok=True)
    if not toolchain.is_file():
        raise FileNotFoundError(f"{toolchain}: build it first with `make package`")
    own = work / toolchain.name  # a `make package` meanwhile cannot swap it mid-benchmark
    own.write_bytes(toolchain.read_bytes())
    example = store.ExampleRepo.create(work)
    pg = pgstore.make_repo(example, work)
    target = pgstore.python_for(suite)
    return Packages(
        own,
        suite,
        full={
            "sqlite": example.build(f"v{BASE}", "--full", *target, name=f"sqlite-full-{BASE}"),
            "postgresql": pg.full(suite),
        },
        update={
            "sqlite": example.build(f"v{UPDATE}", *target, name=f"sqlite-{UPDATE}"),
            "postgresql": pg.update(suite),
        },
    )


def _grow(server: Server, engine: str, target: int) -> int:
    """The store stopped, its database grown to ``target`` bytes, started again; the size."""
    server.stop_service()
    if engine == "sqlite":
        grown = dbfill.grow(server.box.path(store.DB), target)
        server.chown_app(f"{store.APP_ROOT}/data")
    else:
        grown = dbfill.grow_postgresql(lambda statements: pgstore.sql(server.box, statements), target)
    server.start_service()
    return grown


def _prepare(engine: str) -> Callable[[Container], object] | None:
    return pgstore.prepare if engine == "postgresql" else None


def measure(packages: Packages, sizes_mib: list[int], runs: int) -> list[Point]:
    results: list[Point] = []
    for engine in ENGINES:
        with Server(
            packages.toolchain, packages.full[engine], packages.suite, prepare=_prepare(engine)
        ) as server:
            for mib in sorted(sizes_mib):  # the database only grows
                say(f"{engine}: a database of {size(mib * MIB)}")
                point = Point(engine, mib * MIB)
                point.db_actual = _grow(server, engine, mib * MIB)
                for _ in range(runs):
                    point.restart.append(server.restart())
                    point.update.append(server.install(packages.update[engine]))
                    point.rollback.append(server.rollback(BASE))
                results.append(point)
    return results


# -- the report ----------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _step_ms(ops: list[OpResult], step: str, block: str = "apply ") -> str:
    return f"{_median([op.steps(block).get(step, 0.0) for op in ops]) * 1000:.0f}"


def down(op: OpResult) -> float:
    """From systemd's ``Stopping`` to the app's listening line, in the journal (the poller's
    outage when the journal did not show both)."""
    service = op.service
    if "at_stopping" in service and "at_listening" in service:
        return service["at_listening"] - service["at_stopping"]
    return op.outage_s


def _down(ops: list[OpResult]) -> Stat:
    return Stat.of(down(op) for op in ops)


def _outage(ops: list[OpResult]) -> Stat:
    return Stat.of(op.outage_s for op in ops)


def _name(engine: str) -> str:
    return {"postgresql": "PostgreSQL", "sqlite": "SQLite"}[engine]


def _row(p: Point) -> list[str]:
    return [
        f"{_name(p.engine)}, {size(p.db_actual or p.db_bytes)}",
        _down(p.restart).millis(),
        _step_ms(p.update, "backup"),
        _step_ms(p.update, "snapshot-db"),
        _step_ms(p.update, "migrate"),
        f"{p.kept()} of {len(p.update)}",
        _down(p.update).millis(),
        _outage(p.update).millis(),
        Stat.of(op.wall for op in p.rollback).seconds(2),
        _down(p.rollback).millis(),
    ]


def markdown(results: list[Point], runs: int) -> str:
    header = [
        "database",
        "bare restart: outage",
        "backup (copy before the stop)",
        "snapshot-db (after it)",
        "migrate",
        "copy kept",
        f"update {BASE} → {UPDATE}: outage",
        "(poller)",
        f"apt rollback to {BASE}",
        "rollback outage",
    ]
    return (
        f"Step columns: median of {runs} run(s), in milliseconds, from update.log. Outage: median "
        "(min–max), from systemd's `Stopping` of the store to its `Listening at:` line in the "
        "container's journal; (poller): the longest run of failed probes, which with the store's "
        "socket unit counts 0.25 s probe timeouts, not refused connections. Copy kept: the updates "
        "whose copy taken before the stop became the snapshot, nothing having been committed "
        "since.\n\n" + table(header, map(_row, results))
    )


def _ends(results: list[Point], engine: str) -> tuple[Point, Point] | None:
    points = sorted((p for p in results if p.engine == engine), key=lambda p: p.db_bytes)
    return (points[0], points[-1]) if len(points) >= 2 else None


def _flat(small: Point, large: Point) -> tuple[bool, str]:
    a, b = _down(small.update).median, _down(large.update).median
    backup = [_median([op.steps("apply ").get("backup", 0.0) for op in p.update]) for p in (small, large)]
    detail = (
        f"outage {a * 1000:.0f} ms at {size(small.db_actual)} → {b * 1000:.0f} ms at {size(large.db_actual)} "
        f"({b / a:.2f}x; limit {FLAT:g}x + {NOISE_S * 1000:.0f} ms), while the copy before the stop went "
        f"{backup[0]:.2f} → {backup[1]:.2f} s; copy kept in {large.kept()} of {len(large.update)} updates"
    )
    return b <= a * FLAT + NOISE_S, detail


def goals(results: list[Point]) -> list[Goal]:
    out: list[Goal] = []
    for engine in ENGINES:
        ends = _ends(results, engine)
        if ends is None:
            continue
        met, detail = _flat(*ends)
        small, large = ends
        out.append(
            Goal(
                f"{_name(engine)}: the migrating update's outage stays flat from "
                f"{size(small.db_bytes)} to {size(large.db_bytes)} of database",
                met,
                detail + " (§9)",
            )
        )
    return out


def why(results: list[Point]) -> str:
    """What the numbers say: the copy's rate before the stop, what the outage would be without it."""
    ends = _ends(results, "postgresql")
    if ends is None:
        return ""
    small, large = ends

    def backup(p: Point) -> float:
        return _median([op.steps("apply ").get("backup", 0.0) for op in p.update])

    mib = (large.db_actual - small.db_actual) / MIB
    rate = mib / max(backup(large) - backup(small), 1e-9)
    return (
        "\nWhy: `pg_dump -Fc` of the store's database runs in the `backup` step while the old app "
        f"serves: {rate:.0f} MiB/s here ({backup(small):.2f} s at {size(small.db_actual)}, "
        f"{backup(large):.2f} s at {size(large.db_actual)}). After the stop, `snapshot-db` reads "
        "the server's transaction ids (`pg_current_snapshot()`) and keeps the dump when none "
        "committed since it began; a second dump, after the stop, happens only when one did (any "
        "database of the cluster counts: the ids are the cluster's), and would add the dump's time "
        f"to the outage: {backup(large):.1f} s at {size(large.db_actual)}. The migration is one "
        "`ALTER TABLE … ADD COLUMN` with a constant default, which PostgreSQL records in the "
        "catalog without rewriting the table, so `migrate` "
        "does not grow either; a migration that rewrites a table (a volatile default, a type change) "
        "adds its own time to the outage, on any engine." + _sqlite_rollback(results) + "\n"
    )


def _sqlite_rollback(results: list[Point]) -> str:
    ends = _ends(results, "sqlite")
    if ends is None:
        return ""
    small, large = ends
    a, b = (_down(p.rollback).median for p in ends)
    undo = [_median([op.steps("roll back").get("undo", 0.0) for op in p.rollback]) for p in ends]
    return (
        " SQLite's update behaves the same way (its online backup copies the file before the stop, "
        "`PRAGMA data_version` answers after it). Its rollback is another matter: SQLite's "
        "`DROP COLUMN` rewrites the table, inside the outage, so the rollback's outage went from "
        f"{a * 1000:.0f} ms at {size(small.db_actual)} to {b * 1000:.0f} ms at {size(large.db_actual)} "
        f"(`undo` {undo[0]:.2f} → {undo[1]:.2f} s), where PostgreSQL's drops the column from the "
        "catalog only."
    )
