"""Benchmark 4: what each step of the transaction costs as the app grows.

One server; for each app shape (assets of 10 MB to 1 GB, a database of 1 MB to 500 MB) it applies
1.0.1 (one file), 1.0.2 (frontend: several files, no migration), 1.0.3 (a migration), then rolls
back to 1.0.0, ``runs`` times, and reads each step's duration from update.log.

What should hold: backup and apply-files follow the files the update touches, so they stay flat
as the assets grow; the database copy (only for updates with migrations, in the backup step,
before the stop) follows the database's size, and the outage does not unless the app wrote
between that copy and the stop.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench import assets, dbfill
from bench.assets import MIB
from bench.common import Goal, Stat, say, size, table
from bench.releases import BASE, Packages
from bench.server import OpResult, Server
from tests.e2e import store

MEDIA = f"{store.APP_ROOT}/assets/media"  # where the extra assets go on the server
FLAT = 2.0  # "flat": the largest app's median step at most this many times the smallest's (+ noise)
NOISE_S = 0.010


@dataclass
class Point:
    assets_bytes: int
    db_bytes: int  # as asked for; the grown database is a little larger
    db_actual: int = 0
    one_file: list[OpResult] = field(default_factory=list)
    frontend: list[OpResult] = field(default_factory=list)
    migration: list[OpResult] = field(default_factory=list)
    rollback: list[OpResult] = field(default_factory=list)
    backup_one_file: list[int] = field(default_factory=list)
    backup_migration: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{size(self.assets_bytes)} + {size(self.db_actual or self.db_bytes)}"


def points(asset_mib: list[int], db_mib: list[int]) -> list[tuple[int, int]]:
    """The assets sweep at the smallest database, then the database sweep at the smallest assets."""
    shapes = [(a * MIB, db_mib[0] * MIB) for a in asset_mib]
    shapes += [(asset_mib[0] * MIB, d * MIB) for d in db_mib[1:]]
    return shapes


def _shape(server: Server, source: Path, assets_bytes: int, db_bytes: int) -> int:
    """Give the app ``assets_bytes`` of extra assets and a database of ``db_bytes``; return its size."""
    server.stop_service()
    server.remove(MEDIA)
    assets.fill(server.box.path(MEDIA), source, assets_bytes)
    db = dbfill.grow(server.box.path(store.DB), db_bytes)
    server.chown_app(f"{store.APP_ROOT}/data")  # the grown database is the store's; the assets root's
    server.start_service()
    return db


def measure(
    packages: Packages, work: Path, asset_mib: list[int], db_mib: list[int], runs: int
) -> list[Point]:
    source = work / "asset-source"
    if not source.exists():
        assets.generate(source, 24 * MIB)
    results: list[Point] = []
    shapes = points(asset_mib, db_mib)
    with Server(packages.toolchain, packages.full) as server:
        for assets_bytes, db_bytes in sorted(shapes, key=lambda s: (s[1], s[0])):  # the DB only grows
            say(f"scaling: assets {size(assets_bytes)}, database {size(db_bytes)}")
            point = Point(assets_bytes, db_bytes)
            point.db_actual = _shape(server, source, assets_bytes, db_bytes)
            for _ in range(runs):
                point.one_file.append(server.install(packages.updates["1.0.1"]))
                point.backup_one_file.append(server.newest_backup_bytes())
                point.frontend.append(server.install(packages.updates["1.0.2"]))
                point.migration.append(server.install(packages.updates["1.0.3"]))
                point.backup_migration.append(server.newest_backup_bytes())
                point.rollback.append(server.rollback(BASE))
            results.append(point)
    return sorted(results, key=lambda p: shapes.index((p.assets_bytes, p.db_bytes)))


def _step(op: OpResult, step: str, block: str = "apply ") -> float:
    return op.steps(block).get(step, 0.0)


def _ms(ops: list[OpResult], step: str, block: str = "apply ") -> str:
    return f"{statistics.median(_step(op, step, block) for op in ops) * 1000:.0f}"


def _outage(ops: list[OpResult]) -> Stat:
    return Stat.of(op.outage_s for op in ops)


def _median(values: list[float]) -> float:
    return statistics.median(values)


ONE_FILE_STEPS = ("stage", "backup", "stop", "apply-files", "start", "health", "commit")
MIGRATION_STEPS = ("backup", "stop", "snapshot-db", "apply-files", "migrate", "start")


def _one_file_row(p: Point) -> list[str]:
    return [
        p.label,
        *(_ms(p.one_file, s) for s in ONE_FILE_STEPS),
        f"{_median([op.block('apply ') for op in p.one_file]):.2f} s",
        _outage(p.one_file).millis(),
        size(statistics.median(p.backup_one_file)),
    ]


def _migration_row(p: Point) -> list[str]:
    rest = [op.outage_s - _step(op, "snapshot-db") - _step(op, "migrate") for op in p.migration]
    return [
        p.label,
        *(_ms(p.migration, s) for s in MIGRATION_STEPS),
        f"{_median([op.block('apply ') for op in p.migration]):.2f} s",
        _outage(p.migration).millis(),
        f"{_median(rest) * 1000:.0f}",
        size(statistics.median(p.backup_migration)),
    ]


def _rollback_row(p: Point) -> list[str]:
    applies = sum(_median([op.wall for op in ops]) for ops in (p.one_file, p.frontend, p.migration))
    return [
        p.label,
        f"{applies:.2f} s",
        Stat.of(op.wall for op in p.rollback).seconds(2),
        _ms(p.rollback, "undo", "roll back"),
        _outage(p.rollback).millis(),
    ]


def markdown(results: list[Point], runs: int) -> str:
    app = "app (extra assets + database)"
    one = table(
        [app, *ONE_FILE_STEPS, "transaction", "outage", "backup size"],
        [_one_file_row(p) for p in results],
    )
    mig = table(
        [app, *MIGRATION_STEPS, "transaction", "outage", "outage − snapshot − migrate", "backup size"],
        [_migration_row(p) for p in results],
    )
    back = table(
        [app, "apply 1.0.1, 1.0.2, 1.0.3 (apt, sum)", "rollback to 1.0.0 (apt)", "undo steps", "outage"],
        [_rollback_row(p) for p in results],
    )
    return (
        f"Step columns: median of {runs} run(s), in milliseconds, from update.log. Outage: median "
        "(min–max) from the host poller. Backup size: the backup directory the transaction wrote.\n\n"
        "#### One-file update (1.0.0 → 1.0.1)\n\n"
        + one
        + "\n#### Update with a migration (1.0.2 → 1.0.3)\n\n"
        + mig
        + "\n#### Rollback of three versions (1.0.3 → 1.0.0, down-migration included)\n\n"
        + back
    )


def _sweep(results: list[Point]) -> list[Point]:
    """The assets sweep: the points at the smallest database."""
    smallest = min(p.db_bytes for p in results)
    return [p for p in results if p.db_bytes == smallest]


def _flat(results: list[Point], kind: str, step: str) -> tuple[bool, str]:
    """Does ``step`` stay flat from the smallest to the largest assets?"""
    small, large = _sweep(results)[0], _sweep(results)[-1]
    a = _median([_step(op, step) for op in getattr(small, kind)])
    b = _median([_step(op, step) for op in getattr(large, kind)])
    detail = f"{kind.replace('_', '-')} {step} {a * 1000:.0f} → {b * 1000:.0f} ms"
    return b <= a * FLAT + NOISE_S, detail


def goals(results: list[Point]) -> list[Goal]:
    checks = [_flat(results, k, s) for k in ("one_file", "migration") for s in ("backup", "apply-files")]
    small, large = _sweep(results)[0], _sweep(results)[-1]
    b_small = statistics.median(small.backup_one_file)
    b_large = statistics.median(large.backup_one_file)
    same_backup = b_large <= b_small * 1.5 + 4096
    return [
        Goal(
            "Scaling: backup and apply-files follow the touched files, not the app",
            all(ok for ok, _ in checks) and same_backup,
            f"assets {size(small.assets_bytes)} → {size(large.assets_bytes)}: "
            + "; ".join(detail for _, detail in checks)
            + f"; one-file backup {size(b_small)} → {size(b_large)}",
        )
    ]
