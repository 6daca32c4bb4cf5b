"""The test bed's PostgreSQL: installed in every container but started only by the tests that ask
(postgres.start_postgresql); then the app's account reaches its database with peer authentication
over the local socket, and the server behaves as a Debian server does across restarts and boots."""

from __future__ import annotations

import pytest

from . import postgres
from .conftest import ContainerFactory
from .releases import every_release
from .testbed import CommandError


@every_release
def test_postgresql_waits_until_asked_then_serves_the_apps_account_by_peer(
    new_container: ContainerFactory, suite: str
) -> None:
    box = new_container()
    major = postgres.POSTGRESQL_MAJOR[suite]

    # An ordinary boot: the cluster exists but nothing of PostgreSQL runs.
    assert postgres.cluster_version(box) == major
    assert box.run(["pg_lsclusters", "--no-header"]).stdout.split()[3] == "down"
    assert box.run(["systemctl", "is-active", postgres.unit(major)], check=False).stdout.strip() == "inactive"
    assert (
        box.run(["systemctl", "is-enabled", "postgresql.service"], check=False).stdout.strip() == "disabled"
    )
    assert box.run(["pgrep", "-x", "postgres"], check=False).returncode == 1
    assert not postgres.is_ready(box)

    version = postgres.start_postgresql(box)

    assert version.startswith(f"{major}."), version
    assert box.run(["systemctl", "is-active", postgres.unit(major)]).stdout.strip() == "active"
    assert postgres.psql(box, "SHOW server_encoding") == "UTF8"

    url = postgres.create_app_database(box)

    assert url == "postgresql:///nesop_store?host=/var/run/postgresql"
    assert box.run(["id", "-gn", "nesop"]).stdout.strip() == "nesop"
    # Once more changes nothing.
    assert postgres.create_app_database(box) == url
    owner = postgres.psql(
        box, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'nesop_store'"
    )
    assert owner == "nesop"
    rows = postgres.psql(
        box,
        """
        SELECT current_user;
        CREATE TABLE customer (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
        INSERT INTO customer (email) VALUES ('ada@example.org');
        SELECT id, email FROM customer;
        SELECT tableowner FROM pg_tables WHERE tablename = 'customer';
        """,
        user="nesop",
        db=url,
    )
    assert rows.splitlines() == ["nesop", "1|ada@example.org", "nesop"]
    # Peer authentication: another OS account cannot connect as the app's role.
    with pytest.raises(CommandError) as refused:
        postgres.psql(box, "SELECT 1", user="postgres", db=url + "&user=nesop")
    assert 'Peer authentication failed for user "nesop"' in refused.value.stderr, refused.value.stderr


@every_release
def test_postgresql_survives_a_restart_and_comes_back_at_boot(
    new_container: ContainerFactory, suite: str
) -> None:
    box = new_container()
    major = postgres.POSTGRESQL_MAJOR[suite]
    postgres.start_postgresql(box)
    url = postgres.create_app_database(box)
    postgres.psql(
        box, "CREATE TABLE note (body text); INSERT INTO note VALUES ('kept')", user="nesop", db=url
    )
    before = box.service_main_pid(postgres.unit(major))
    assert before > 0

    box.run(["systemctl", "restart", "postgresql.service"])
    postgres.wait_ready(box)

    after = box.service_main_pid(postgres.unit(major))
    assert after > 0 and after != before
    assert postgres.psql(box, "SELECT body FROM note", user="nesop", db=url) == "kept"

    box.poweroff()
    box.boot()
    postgres.wait_ready(box)

    assert box.run(["systemctl", "is-active", postgres.unit(major)]).stdout.strip() == "active"
    assert postgres.psql(box, "SELECT body FROM note", user="nesop", db=url) == "kept"
