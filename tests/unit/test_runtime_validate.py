"""``nesop-update validate``: each of the seven checks on a good and a broken server, custom checks."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nesop_deb.errors import UsageError
from nesop_deb.runtime import history, operations, state, validate
from tests.unit.runtime_fixtures import (
    UNIT,
    Server,
    db_dump,
    fake_server,
    install_base,
    release_101,
    walk_with_ghosts,
)

SEVEN = ["files", "service", "database", "web", "permissions", "config", "history"]


class Validated:
    """A server at 1.0.1 whose health endpoint answers what ``code`` says."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.code = 200
        install_base(server)
        server.serve_health(lambda: self.code)
        ctx = server.ctx
        operations.run_apply(ctx, release_101(server), ctx.share, state.load(ctx))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


@pytest.fixture
def app(server: Server) -> Validated:
    return Validated(server)


def only_real(problems: list[str]) -> list[str]:
    """Root-only state and backups can only be owned by root when the tests run as root."""
    return [p for p in problems if os.getuid() == 0 or "must be root-only" not in p]


def test_a_good_server_passes_all_seven(app: Validated) -> None:
    results = validate.run(app.server.ctx)
    assert [r.name for r in results] == SEVEN
    for r in results:
        assert only_real(r.problems) == [], r
        if r.name != "permissions" or os.getuid() == 0:
            assert r.ok, r
    assert json.loads(json.dumps([r.to_dict() for r in results]))[0]["name"] == "files"


def _missing_file(app: Validated) -> None:
    (app.server.app_root / "static/js/new.js").unlink()


def _should_be_deleted(app: Validated) -> None:
    (app.server.app_root / "lib/util.py").write_bytes(b"back again\n")


def _service_down(app: Validated) -> None:
    app.server.systemd.units[UNIT].active = "inactive"
    app.server.systemd.units[UNIT].sub = "dead"


def _migration_not_recorded(app: Validated) -> None:
    app.server.sql("DELETE FROM _yoyo_migration WHERE migration_id = '0002_orders'")


def _database_gone(app: Validated) -> None:
    app.server.db.unlink()


def _web_down(app: Validated) -> None:
    app.code = 503


def _world_writable(app: Validated) -> None:
    (app.server.app_root / "app.py").chmod(0o666)


def _unparsable_config(app: Validated) -> None:
    (app.server.app_root / "config.py").write_bytes(b"def broken(:\n")


def _failed_history(app: Validated) -> None:
    history.append(
        app.server.ctx, {"action": "apply", "version": "1.0.2", "status": "failed", "failed_step": "health",
                         "reason": "HTTP 503"},
    )  # fmt: skip


def _pending_journal(app: Validated) -> None:
    state.write_journal(app.server.ctx, {"kind": "apply", "version": "1.0.2", "steps": ["record"]})


BROKEN: list[tuple[str, Callable[[Validated], None], str]] = [
    ("files", _missing_file, "static/js/new.js: missing"),
    ("files", _should_be_deleted, "lib/util.py: should have been deleted"),
    ("service", _service_down, "demo.service is inactive/dead"),
    ("database", _migration_not_recorded, "migrations of applied versions not recorded: 0002_orders"),
    ("database", _database_gone, "app.db does not exist"),
    ("web", _web_down, "HTTP 503"),
    ("permissions", _world_writable, "app.py: world-writable"),
    ("config", _unparsable_config, "config.py: invalid syntax"),
    ("history", _failed_history, "health: HTTP 503"),
    ("history", _pending_journal, "run `nesop-update recover`"),
]


@pytest.mark.parametrize(
    ("check", "breaks", "expected"), BROKEN, ids=[f"{c}-{b.__name__.strip('_')}" for c, b, _ in BROKEN]
)
def test_each_check_finds_its_problem(
    app: Validated, check: str, breaks: Callable[[Validated], None], expected: str
) -> None:
    breaks(app)
    [result] = validate.run(app.server.ctx, [check])
    assert result.name == check
    assert not result.ok
    assert expected in " | ".join([result.summary, *result.problems])


def test_web_requests_the_configured_pages_too(app: Validated) -> None:
    (good,) = validate.run(app.server.ctx, ["web"])
    assert good.ok and good.summary.endswith(": HTTP 200"), good  # no pages configured

    app.server.configure(pages=["/cart", "http://127.0.0.1:1/admin"])
    (web,) = validate.run(app.server.ctx, ["web"])

    assert not web.ok
    assert web.summary.endswith("; 2 pages and 0 assets they load checked"), web
    assert len(web.problems) == 1 and web.problems[0].startswith("http://127.0.0.1:1/admin: no answer"), web


def test_a_waiting_nesop_new_file_is_reported(app: Validated) -> None:
    (app.server.app_root / "config.py.nesop-new").write_bytes(b"DEBUG = False\n")
    [result] = validate.run(app.server.ctx, ["config"])
    assert not result.ok
    assert "merge it" in result.problems[0]


def test_custom_checks_run_from_checks_d(app: Validated) -> None:
    d = validate.custom_dir(app.server.ctx)
    d.mkdir(parents=True)
    passing, failing = d / "10-ok", d / "20-cart"
    passing.write_text('#!/bin/sh\necho "app root is $NESOP_APP_ROOT"\n')
    failing.write_text('#!/bin/sh\necho "cart: $NESOP_APP_NAME has an empty cart" >&2\nexit 1\n')
    (d / "README").write_text("not executable: not a check\n")
    for p in (passing, failing):
        p.chmod(0o755)

    assert validate.names(app.server.ctx) == [*SEVEN, "10-ok", "20-cart"]
    ok, bad = validate.run(app.server.ctx, ["10-ok", "20-cart"])

    assert (ok.name, ok.ok, ok.summary) == ("10-ok", True, f"app root is {app.server.app_root}")
    assert (bad.name, bad.ok, bad.summary) == ("20-cart", False, "cart: demo has an empty cart")


def test_an_unknown_check_is_a_usage_error(app: Validated) -> None:
    with pytest.raises(UsageError, match="--check nope: no such check") as err:
        validate.run(app.server.ctx, ["files", "nope"])
    assert "choose from files, service" in str(err.value)


def test_before_any_update_the_checks_still_answer(server: Server) -> None:
    install_base(server)
    results = {r.name: r for r in validate.run(server.ctx, ["files", "history", "database", "config"])}
    assert results["files"].ok
    assert results["history"].summary == "no update recorded yet"
    assert results["database"].ok
    assert results["config"].ok


def test_validate_does_not_touch_a_database_yoyo_never_managed(server: Server) -> None:
    install_base(server, yoyo=False)
    before = db_dump(server.db)
    [result] = validate.run(server.ctx, ["database"])
    assert result.ok
    assert "0 migrations recorded" in result.summary
    assert db_dump(server.db) == before


def test_a_config_file_too_large_is_a_problem_not_read(app: Validated) -> None:
    with open(app.server.app_root / "config.py", "r+b") as fh:
        fh.truncate(256 << 20)  # sparse: costs the app's account no disk, root's reader 256 MiB
    tracemalloc.start()
    try:
        [result] = validate.run(app.server.ctx, ["config"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.problems == [
        "config.py: larger than 4 MiB, too large to check; shrink it or take it out of [files] config"
    ]
    assert peak < 16 << 20, f"validate held {peak >> 20} MiB"


NESTED = {
    "settings.json": b"[" * 100_000,
    "settings.toml": b"a = " + b"[" * 100_000,
    "settings.py": b"x = " + b"-" * 100_000 + b"1\n",  # CPython 3.11: MemoryError; later: may differ
}


@pytest.mark.parametrize("name", NESTED)
def test_a_deeply_nested_config_file_is_a_problem_not_a_crash(app: Validated, name: str) -> None:
    app.server.settings["files"]["config"].append(name)
    (app.server.app_root / name).write_bytes(NESTED[name])

    [result] = validate.run(app.server.ctx, ["config"])

    assert not result.ok
    [problem] = result.problems
    assert problem.startswith(f"{name}: "), problem
    if not name.endswith(".py"):
        assert problem == f"{name}: nested too deeply to parse (RecursionError); flatten it"


def test_files_removed_during_the_permissions_walk_are_skipped(
    app: Validated, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghosts = walk_with_ghosts(monkeypatch)
    (app.server.app_root / "app.py").chmod(0o666)

    [result] = validate.run(app.server.ctx, ["permissions"])

    assert ghosts
    assert "app.py: world-writable" in result.problems
    assert not any("gone" in p for p in result.problems), result.problems
