"""The store on PostgreSQL, in a booted Debian with Debian's PostgreSQL server (15 on Debian 12,
17 on Debian 13) started by systemd: the same transaction as on SQLite.

- an update with a migration under a steady stream of writes: none acknowledged is lost;
- a migration that fails: nothing of it left, the old app healthy, every row kept;
- an apt rollback across the schema change, keeping the rows written after the update;
- a failing update whose migration has no rollback: the dump is restored, in one transaction;
- SIGKILL while migrating, then dpkg --configure -a.
Each checks the end state: one whole version served, the schema and yoyo's record, the rows, dpkg.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from . import faults, pgstore, store
from .conftest import ContainerFactory
from .releases import every_release
from .test_load import _acknowledged, writing
from .testbed import Container

STATE_DIR = f"/var/lib/{store.PACKAGE}"
ORDERS_STATUS = "orders.status"  # the column 1.3.1's migration 0006 adds
MIGRATIONS_130 = ["0001_initial", "0002_product_stock", "0003_product_categories", "0004_newsletter",
                  "0005_order_notes"]  # fmt: skip


@pytest.fixture(scope="session")
def pg_repo(example_repo: store.ExampleRepo, tmp_path_factory: pytest.TempPathFactory) -> pgstore.PgRepo:
    return pgstore.make_repo(example_repo, tmp_path_factory.mktemp("pg"))


def broken(pg: pgstore.PgRepo, name: str, migration: str, rollback: str | None, store_edit: bool) -> str:
    """A 1.3.2 on top of pg/1.3.1: migration 0007 (``rollback`` its rollback, None: none), and
    with ``store_edit`` code that needs a column no migration adds (/health answers 503)."""
    edits = {"migrations-postgresql/0007_gift_cards.sql": migration}
    if rollback is not None:
        edits["migrations-postgresql/0007_gift_cards.rollback.sql"] = rollback
    if store_edit:
        code = pg.read("pg/1.3.1", "store.py")
        wanted = '"note", "status"),'
        assert wanted in code, "store.py no longer lists the orders columns this test extends"
        edits["store.py"] = code.replace(wanted, '"note", "status", "gift_card"),', 1)
    return pg.commit(f"pg/broken-{name}", "pg/1.3.1", edits, f"Gift cards ({name})")


def assert_whole(box: Container, pg: pgstore.PgRepo, ref: str, version: str) -> None:
    """``version`` served from ``ref``'s tree, installed in dpkg's eyes, nothing pending."""
    assert store.health(box)["version"] == version
    store.assert_tree(box, pg.repo, ref)
    assert store.dpkg_status(box) == ("ii", version)
    assert not box.path(store.JOURNAL).exists()


def register(box: Container, n: int) -> list[str]:
    written = store.register_customers(box, n)
    assert len(written) == n
    return written


@every_release
def test_an_update_under_writes_a_failed_migration_and_an_apt_rollback(
    new_container: ContainerFactory,
    toolchain_deb: Path,
    pg_repo: pgstore.PgRepo,
    suite: str,
    tmp_path: Path,
) -> None:
    box, pg = new_container(), pg_repo
    server_version = pgstore.deploy(box, toolchain_deb, pg, suite)
    assert server_version.startswith({"bookworm": "15.", "trixie": "17."}[suite])
    assert pgstore.schema(box)["migrations"] == MIGRATIONS_130
    before = register(box, 5)

    # 1.3.1 adds orders.status, while a client writes every few milliseconds
    with writing(box, tmp_path) as acks:
        result = store.apt_install(box, pg.update(suite))
        assert result.returncode == 0, result.stdout + result.stderr
    assert_whole(box, pg, "v1.3.1", "1.3.1")
    assert ORDERS_STATUS in pgstore.schema(box)["columns"]
    assert pgstore.schema(box)["migrations"] == [*MIGRATIONS_130, "0006_shipping_status"]
    written_during = _acknowledged(acks)
    assert len(written_during) > 50
    lost = (set(before) | written_during) - pgstore.customer_emails(box)
    assert lost == set(), f"{len(lost)} acknowledged writes were lost"
    log = box.path(f"{store.APP_ROOT}/logs/update.log").read_text()
    assert "database copied before the stop" in log, log[-3000:]
    backups = sorted(box.path(f"{store.APP_ROOT}/backups").glob("pre_update_1.3.1_*/database.pgdump"))
    assert len(backups) == 1 and backups[0].read_bytes()[:5] == b"PGDMP"

    # 1.3.2's migration fails half-way: its transaction takes everything back
    after = register(box, 3)
    failing = broken(
        pg,
        "migration",
        "CREATE TABLE gift_cards (code text PRIMARY KEY);\n"
        "INSERT INTO gift_cards SELECT code FROM vouchers;\n",
        "DROP TABLE gift_cards;\n",
        store_edit=False,
    )
    schema, data = pgstore.schema(box), pgstore.rows(box)
    result = store.apt_install(box, pg.build(suite, failing, "--version", "1.3.2", "--since", "v1.3.1"))
    assert result.returncode != 0
    assert "update to 1.3.2 FAILED at migrate" in result.stdout + result.stderr
    assert 'relation "vouchers" does not exist' in result.stdout + result.stderr
    assert (pgstore.schema(box), pgstore.rows(box)) == (schema, data), "the failed migration left something"
    assert store.health(box)["version"] == "1.3.1"
    store.assert_tree(box, pg.repo, "v1.3.1")
    assert store.dpkg_status(box) == ("iF", "1.3.2")
    last = pgstore.history(box)[-1]
    assert (last["version"], last["status"], last["failed_step"]) == ("1.3.2", "failed", "migrate")
    assert (last["undo_errors"], last["old_app_healthy"]) == ([], True)

    # back to 1.3.0 the Debian way: 0006's rollback drops the column, every row stays
    late = register(box, 3)
    box.run(["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.3.0"], timeout=300)
    assert_whole(box, pg, "v1.3.0", "1.3.0")
    assert ORDERS_STATUS not in pgstore.schema(box)["columns"]
    assert pgstore.schema(box)["migrations"] == MIGRATIONS_130
    assert {*before, *after, *late, *written_during} <= pgstore.customer_emails(box)
    rollback = pgstore.history(box)[-1]
    assert (rollback["action"], rollback["status"]) == ("rollback", "success")
    assert "migrations rolled back: 0006_shipping_status" in " ".join(rollback["notes"])

    # what an operator runs next
    check = box.run(["nesop-update", "validate", "--check", "database"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 migrations recorded" not in check.stdout and "5 migrations recorded" in check.stdout
    made = box.run(["nesop-update", "backup"], check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    listed = box.run(["nesop-update", "list-backups"]).stdout
    assert any(line.startswith("manual_1.3.0_") and "+ database" in line for line in listed.splitlines()), (
        listed
    )
    manual = sorted(box.path(f"{store.APP_ROOT}/backups").glob("manual_1.3.0_*/database.pgdump"))
    assert len(manual) == 1 and manual[0].read_bytes()[:5] == b"PGDMP"


@pytest.mark.fault("step fails", "health", ends_as="old version whole, every row, iF; the dump restored")
def test_a_failed_update_without_a_rollback_migration_restores_the_dump(
    new_container: ContainerFactory, toolchain_deb: Path, pg_repo: pgstore.PgRepo, suite: str
) -> None:
    box, pg = new_container(), pg_repo
    pgstore.deploy(box, toolchain_deb, pg, suite)
    assert store.apt_install(box, pg.update(suite)).returncode == 0
    register(box, 5)
    failing = broken(
        pg,
        "health",
        "CREATE TABLE gift_cards (code text PRIMARY KEY, cents integer NOT NULL);\n"
        "INSERT INTO gift_cards VALUES ('WELCOME', 500);\n",
        None,
        store_edit=True,
    )
    schema, data = pgstore.schema(box), pgstore.rows(box)

    result = store.apt_install(box, pg.build(suite, failing, "--version", "1.3.2", "--since", "v1.3.1"))

    assert result.returncode != 0
    assert "update to 1.3.2 FAILED at health" in result.stdout + result.stderr
    assert (pgstore.schema(box), pgstore.rows(box)) == (schema, data), "the restore is not the snapshot"
    assert store.health(box)["version"] == "1.3.1"
    assert store.dpkg_status(box) == ("iF", "1.3.2")
    last = pgstore.history(box)[-1]
    assert (last["failed_step"], last["undo_errors"], last["old_app_healthy"]) == ("health", [], True)
    assert last["database_undo"].startswith("snapshot restored (the replaced database is kept as ")
    kept = last["database_undo"].split(" kept as ", 1)[1].rstrip(")")
    assert box.path(kept).read_bytes()[:5] == b"PGDMP", "the replaced database is not kept beside the backup"
    assert register(box, 1)


@pytest.mark.fault("SIGKILL", "migrate", ends_as="new version whole after dpkg --configure -a (PostgreSQL)")
def test_sigkill_while_migrating_then_configure_a(
    new_container: ContainerFactory, toolchain_deb: Path, pg_repo: pgstore.PgRepo, suite: str
) -> None:
    box, pg = new_container(), pg_repo
    pgstore.deploy(box, toolchain_deb, pg, suite)
    rows = register(box, 5)
    deb = pg.update(suite)
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    ready: Callable[[], bool] = faults.journal_at(box, store.JOURNAL, "migrate")
    apt.pause_when(STATE_DIR, ready, "its migrate step")

    apt.kill()  # apt, dpkg and the maintainer script, in the middle of the migrate step

    assert store.dpkg_status(box)[0] in ("iF", "iU")
    box.run(["dpkg", "--configure", "-a"], timeout=300)
    assert_whole(box, pg, "v1.3.1", "1.3.1")
    assert pgstore.schema(box)["migrations"] == [*MIGRATIONS_130, "0006_shipping_status"]
    assert ORDERS_STATUS in pgstore.schema(box)["columns"]
    assert set(rows) <= pgstore.customer_emails(box)
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""


@pytest.mark.fault(
    "power loss", "migrate", ends_as="old version served after boot, then configure -a applies (PostgreSQL)"
)
def test_power_loss_while_migrating_is_recovered_at_boot_after_the_server(
    new_container: ContainerFactory, toolchain_deb: Path, pg_repo: pgstore.PgRepo, suite: str
) -> None:
    """The boot's recovery runs before the app starts and after PostgreSQL (the generator orders
    it so for an app on PostgreSQL): it rolls the interrupted update back on the server's data."""
    box, pg = new_container(), pg_repo
    pgstore.deploy(box, toolchain_deb, pg, suite)
    rows = register(box, 5)
    deb = pg.update(suite)
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    apt.pause_when(STATE_DIR, faults.journal_at(box, store.JOURNAL, "migrate"), "its migrate step")

    box.kill_hard()  # every process of the machine at once, PostgreSQL's included
    apt.untrace()
    box.boot()

    recover = f"nesop-update-recover@{store.UNIT}"
    assert box.run(["systemctl", "is-active", recover], check=False).stdout.strip() == "active"
    order = box.run(["systemctl", "show", "-p", "After", recover]).stdout
    assert "postgresql.service" in order, order
    box.wait_http(store.HEALTH, timeout=60)
    assert store.health(box)["version"] == "1.3.0"
    store.assert_tree(box, pg.repo, "v1.3.0")
    assert pgstore.schema(box)["migrations"] == MIGRATIONS_130
    assert ORDERS_STATUS not in pgstore.schema(box)["columns"]
    assert set(rows) <= pgstore.customer_emails(box)
    last = pgstore.history(box)[-1]
    assert (last["action"], last["status"], last.get("at_boot")) == ("recover", "interrupted", True), last

    result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_whole(box, pg, "v1.3.1", "1.3.1")
    assert ORDERS_STATUS in pgstore.schema(box)["columns"]
    assert set(rows) <= pgstore.customer_emails(box)
