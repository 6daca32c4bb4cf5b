"""The PostgreSQL benchmark's bookkeeping: the flat-outage goal per engine, the table, the SQL of
a fill batch, and its options in `bench/run.py`. Nothing here imports the plotting library."""

from __future__ import annotations

import sys

import pytest

from bench import dbfill, pgoutage, run
from bench.assets import MIB
from bench.poller import Outage
from bench.server import Block, OpResult

KEPT_LOG = f"2026-12-02T01:00:00+0000 INFO     {pgoutage.KEPT} (1024.0 MiB): kept\n"


def op(outage: float, backup: float = 0.1, kept: bool = True, label: str = "apply 1.3.1") -> OpResult:
    steps = {"backup": backup, "stop": 0.05, "snapshot-db": 0.004, "migrate": 0.02, "start": 0.2}
    return OpResult(
        label=label,
        wall=outage + backup + 1.0,
        outage=Outage(0.5, 0.5 + outage, 10),
        blocks=[Block(label, sum(steps.values()), steps)],
        log=KEPT_LOG if kept else "",
        # the journal: Stopping at 0.45 s, the app listening 50 ms after the poller's first success
        service={"at_stopping": 0.45, "at_listening": 0.55 + outage},
    )


def point(engine: str, mib: int, outage: float, backup: float, kept: bool = True) -> pgoutage.Point:
    p = pgoutage.Point(engine, mib * MIB, db_actual=mib * MIB + 123_456)
    p.restart = [op(0.30, label="systemctl restart") for _ in range(3)]
    p.update = [op(outage + d, backup, kept) for d in (-0.01, 0.0, 0.02)]
    p.rollback = [op(0.4, label="roll back") for _ in range(3)]
    return p


def test_an_outage_that_does_not_follow_the_database_meets_the_goal_on_each_engine() -> None:
    results = [
        point("postgresql", 10, 0.35, 0.2),
        point("postgresql", 1024, 0.37, 14.0),
        point("sqlite", 10, 0.33, 0.05),
        point("sqlite", 1024, 0.34, 3.0),
    ]

    goals = pgoutage.goals(results)

    assert [g.met for g in goals] == [True, True]
    assert goals[0].name.startswith(
        "PostgreSQL: the migrating update's outage stays flat from 10.0 MiB to 1.00 GiB"
    )
    assert "outage 450 ms at 10.1 MiB → 470 ms at 1.00 GiB" in goals[0].detail
    assert "0.20 → 14.00 s" in goals[0].detail and "copy kept in 3 of 3 updates" in goals[0].detail


def test_an_outage_that_grows_with_the_database_misses_it() -> None:
    # the dump taken again after the stop, every time: the outage carries it
    results = [point("postgresql", 10, 0.35, 0.2), point("postgresql", 1024, 14.5, 14.0, kept=False)]

    (goal,) = pgoutage.goals(results)

    assert not goal.met
    assert "copy kept in 0 of 3 updates" in goal.detail


def test_one_size_gives_no_goal_and_the_table_has_a_row_per_engine_and_size() -> None:
    assert pgoutage.goals([point("postgresql", 10, 0.35, 0.2)]) == []
    results = [point("postgresql", 10, 0.35, 0.2), point("sqlite", 10, 0.33, 0.05)]

    text = pgoutage.markdown(results, 3)

    rows = [
        line for line in text.splitlines() if line.startswith("| PostgreSQL") or line.startswith("| SQLite")
    ]
    assert len(rows) == 2
    assert rows[0].startswith(
        "| PostgreSQL, 10.1 MiB | 400 ms (400–400) | 200 | 4 | 20 | 3 of 3 | 450 ms (440–470) "
        "| 350 ms (340–370) |"
    )


def test_the_outage_is_the_pollers_when_the_journal_misses_a_mark() -> None:
    timed = op(0.3)
    timed.service = {"at_stopping": 0.45}

    assert pgoutage.down(timed) == pytest.approx(0.3)
    assert pgoutage.down(op(0.3)) == pytest.approx(0.4)


def test_a_fill_batch_is_one_transaction_of_every_table_then_the_size() -> None:
    sql = dbfill.pg_batch(101, 200)

    assert sql.startswith("BEGIN;\n") and "COMMIT;\nSELECT pg_database_size(current_database());" in sql
    assert sql.count("generate_series(101::bigint, 200)") == 4
    assert [t for t in ("customers", "orders", "order_items") if f"INSERT INTO {t} " in sql] == [
        "customers",
        "orders",
        "order_items",
    ]


def test_run_takes_the_benchmark_by_its_name_or_pg_with_its_own_options() -> None:
    args = run.parse_args(["--only", "pg", "--pg-runs", "2", "--pg-db", "10,200"])

    assert args.only == ["postgresql"] and args.pg_runs == 2 and args.pg_db == [10, 200]
    assert run.parse_args([]).pg_db == list(pgoutage.SIZES_MIB) == [10, 1024]
    with pytest.raises(SystemExit):
        run.parse_args(["--pg-runs", "0"])
    assert "matplotlib" not in sys.modules
