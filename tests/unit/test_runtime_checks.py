"""Preflight: every refusal names what is wrong and leaves the server untouched."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb import __version__, versions
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import backup, checks, history, operations, state
from nesop_deb.runtime.context import AppSettings
from tests.unit.runtime_fixtures import (
    APP_ROOT,
    M2,
    M3,
    UNIT,
    USER,
    Migration,
    Server,
    changes_101,
    db_dump,
    default_settings,
    fake_server,
    install_base,
    release_101,
    tree,
    walk_with_ghosts,
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def applied_stack(server: Server, *manifests: Manifest) -> None:
    """Record versions as applied, the way commit leaves the state (without touching the app)."""
    st = state.load(server.ctx)
    for m in manifests:
        state.record_version(server.ctx, m, server.ctx.share / "migrations")
        st.applied.append(state.Applied(m.version, st.current, None, "2026-01-01T00:00:00Z"))
    state.save(server.ctx, st)


def assert_refused(server: Server, manifest: Manifest, *needles: str) -> None:
    """Both the preinst and the postinst refuse, and nothing on the server changes."""
    before, db_before = tree(server.app_root), db_dump(server.db)
    applied = server.applied()
    with pytest.raises(RefusedError) as preinst:
        operations.preflight(manifest)
    ctx = server.ctx
    with pytest.raises(RefusedError) as postinst:
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    for err in (preinst.value, postinst.value):
        for needle in needles:
            assert needle in str(err)
    assert tree(server.app_root) == before
    assert db_dump(server.db) == db_before
    assert server.applied() == applied
    assert server.systemd.verbs() == []
    assert server.systemd.units[UNIT].active == "active"
    assert state.read_journal(ctx) is None
    last = history.read(ctx.history_file)[-1]
    assert (last["status"], last["failed_step"]) == ("refused", "preflight")


def test_a_clean_server_passes(server: Server) -> None:
    install_base(server)
    manifest = release_101(server)
    operations.preflight(manifest)
    assert checks.preflight(server.ctx, manifest).current is None


def test_base_version_mismatch(server: Server) -> None:
    install_base(server)
    old = server.package("0.9.0", [], bases=())
    applied_stack(server, old)
    manifest = release_101(server)
    assert_refused(server, manifest, "update 1.0.1 needs base 1.0.0 but 0.9.0 is installed", "--since v0.9.0")


def test_drift_a_modified_file(server: Server) -> None:
    install_base(server)
    (server.app_root / "app.py").write_bytes(b"print('hot fix')\n")
    assert_refused(server, release_101(server), f"{server.app_root / 'app.py'} was changed on this server")


def test_drift_a_file_that_should_not_exist(server: Server) -> None:
    install_base(server)
    (server.app_root / "README.md").write_bytes(b"someone else's readme\n")
    assert_refused(server, release_101(server), "README.md was changed", "expected absent or")


def test_drift_a_deleted_preimage(server: Server) -> None:
    install_base(server)
    (server.app_root / "run.sh").unlink()
    assert_refused(server, release_101(server), "run.sh was changed", "sha256 absent")


def test_drift_a_changed_rename_source(server: Server) -> None:
    install_base(server)
    (server.app_root / "lib/old_name.py").write_bytes(b"X = 99\n")
    assert_refused(server, release_101(server), "lib/old_name.py was changed")


def test_drift_counts_every_file(server: Server) -> None:
    install_base(server)
    (server.app_root / "app.py").write_bytes(b"print('hot fix')\n")
    (server.app_root / "lib/util.py").write_bytes(b"changed\n")
    assert_refused(server, release_101(server), "(and 1 more)")


def test_an_edited_config_file_is_not_drift(server: Server) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(b"DEBUG = True\n")
    manifest = release_101(server)
    assert checks.drift(server.ctx, manifest) == []
    operations.preflight(manifest)


def test_not_enough_disk_space(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    install_base(server)
    monkeypatch.setattr(checks, "free_bytes", lambda _path: 3 << 20)
    assert_refused(server, release_101(server), f"{server.app_root}: 3 MiB free, the update needs 17 MiB")


def test_disk_space_counts_what_the_database_holds_in_its_wal(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    app = sqlite3.connect(server.db)
    app.execute("PRAGMA journal_mode=WAL")
    app.execute("PRAGMA wal_autocheckpoint=0")
    app.execute("INSERT INTO items (name) VALUES (?)", ("x" * (4 << 20),))
    app.commit()
    manifest = release_101(server)
    wal = server.db.with_name(server.db.name + "-wal")
    assert wal.stat().st_size > 4 << 20 > server.db.stat().st_size
    files = sum(f.size for f in manifest.files) * 2 + checks.MARGIN
    need = files + server.db.stat().st_size + wal.stat().st_size
    touched = [f.path for f in manifest.files] + [f.renamed_from for f in manifest.files if f.renamed_from]
    need += backup.undo_space(server.ctx, touched, with_db=True)  # the space an undo is sure of
    monkeypatch.setattr(checks, "free_bytes", lambda _path: need - 1)
    assert_refused(server, manifest, f"needs {need >> 20} MiB")
    monkeypatch.setattr(checks, "free_bytes", lambda _path: need)
    checks.disk_space(server.ctx, manifest)
    app.close()


def test_a_package_built_by_a_newer_nesop_deb(server: Server) -> None:
    install_base(server)
    newer = "99.0.0"
    assert versions.compare(newer, __version__) > 0
    manifest = release_101(server, builder_version=newer)
    assert_refused(server, manifest, f"built by nesop-deb {newer}", f"runs nesop-deb {__version__}")


@pytest.mark.parametrize(("key", "value"), [("root", "/opt/elsewhere"), ("service", "other.service")])
def test_an_update_for_another_app_root_or_service(server: Server, key: str, value: str) -> None:
    install_base(server)
    applied_stack(server, server.package("1.0.0", [], bases=()))
    settings = default_settings()
    settings["app"][key] = value
    manifest = release_101(server, settings=settings)
    assert_refused(server, manifest, f"targets app {key} {value!r}", "but 1.0.0 is installed with")


def test_a_changed_migration_that_was_already_applied(server: Server) -> None:
    install_base(server)
    applied_stack(server, server.package("1.0.0", [], [M2], bases=()))
    edited = Migration(M2.id, M2.sql + " -- edited", M2.rollback)
    manifest = server.package("1.0.1", changes_101(), [edited, M3])
    assert_refused(server, manifest, "migration 0002_orders differs from the one already applied")


def test_an_already_applied_version_passes(server: Server) -> None:
    install_base(server)
    manifest = release_101(server)
    ctx = server.ctx
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    (server.app_root / "app.py").write_bytes(b"drift does not matter any more\n")
    operations.preflight(manifest)
    assert checks.preflight(ctx, manifest).current == "1.0.1"


def test_an_update_to_a_missing_app_needs_a_full_package(server: Server) -> None:
    manifest = server.package("1.0.1", changes_101())
    with pytest.raises(RefusedError, match=r"does not exist, and 1\.0\.1 is not a full install"):
        operations.preflight(manifest)
    assert not server.app_root.exists()


def test_a_missing_app_user_is_refused_before_the_stop(server: Server) -> None:
    install_base(server)
    (server.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    before = tree(server.app_root)
    ctx = server.ctx
    with pytest.raises(RefusedError, match="the app's user 'app' does not exist on this server"):
        operations.preflight(release_101(server))  # preinst: dpkg unwinds for free
    with pytest.raises(RefusedError, match="the app's user 'app' does not exist on this server"):
        operations.run_apply(ctx, release_101(server), ctx.share, state.load(ctx))
    assert tree(server.app_root) == before
    assert server.systemd.verbs() == []


def test_settings_come_from_the_manifest() -> None:
    app = AppSettings.from_manifest_config(default_settings())
    assert (app.user, app.group, app.config_files, app.health_url) == ("app", "app", ("config.py",), None)


def test_a_directory_removed_during_the_writable_code_walk_is_skipped(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_base(server)
    # the app runs as its own account here (the fake server's is the test's, root)
    (server.root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:4242:4242::{APP_ROOT}:/usr/sbin/nologin\n"
    )
    (server.root / "etc/group").write_text(f"root:x:0:\n{USER}:x:4242:\n")
    (server.app_root / "lib").chmod(0o777)
    ghosts = walk_with_ghosts(monkeypatch)

    assert checks.writable_code(server.ctx) == ["lib"]
    assert ghosts
