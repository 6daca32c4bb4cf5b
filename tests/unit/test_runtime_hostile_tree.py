"""The app's account plants links in its own tree; root's update, undo and restore follow none.

Each test plants what a review used to become root with, then runs the real runtime: nothing
outside the app root may change, and the operation either completes or refuses naming the link.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.errors import NesopError
from nesop_deb.runtime import backup, log, manual, operations, safefs, state, transaction, validate
from tests.unit.runtime_fixtures import (
    Server,
    db_dump,
    fake_server,
    install_base,
    release_101,
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A root-owned file outside the app: what every planted link points at."""
    target = tmp_path / "outside" / "secret"
    target.parent.mkdir()
    target.write_bytes(b"root's own\n")
    target.chmod(0o600)
    return target


LINK_TAIL = ": the update runs as root and follows no link it did not make"


def untouched(path: Path) -> tuple[bytes, int, int, int]:
    st = path.lstat()
    return path.read_bytes(), st.st_mode, st.st_uid, st.st_gid


def test_a_restore_does_not_write_through_a_planted_tmp_link(server: Server, outside: Path) -> None:
    install_base(server)
    manual.manual_backup(server.ctx, "known-good")
    (server.app_root / "app.py").write_bytes(b"edited\n")
    before = untouched(outside)
    for rel in ("app.py", "config.py", "lib/util.py"):
        (server.app_root / (rel + safefs.TMP_SUFFIX)).symlink_to(outside)

    manual.restore_backup(server.ctx, "known-good")

    assert untouched(outside) == before
    assert (server.app_root / "app.py").read_bytes() != b"edited\n"


def test_a_failed_update_restores_the_database_without_following_a_planted_link(
    server: Server, outside: Path
) -> None:
    install_base(server)
    rows = db_dump(server.db)
    ctx = server.ctx
    manifest = release_101(server)
    server.systemd.fail_starts = 1  # 0003 has no rollback: the undo restores the snapshot
    (server.db.parent / (server.db.name + safefs.TMP_SUFFIX)).symlink_to(outside)
    before = untouched(outside)

    with pytest.raises(transaction.TransactionFailed):
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))

    assert untouched(outside) == before
    assert db_dump(server.db) == rows


def forge(server: Server, name: str, outside: Path) -> None:
    """What the app's account can do: move root's backups away and plant its own."""
    backups = server.ctx.backups_dir
    backups.rename(backups.with_name("backups.moved"))
    forged = backups / name
    (forged / "files").mkdir(parents=True)
    (forged / "files" / "shell").write_bytes(b"#!/bin/sh\n")
    rel = os.path.relpath(outside, server.app_root)
    entries = [
        {"path": rel, "sha256": "0" * 64, "mode": 0o644, "uid": 0, "gid": 0, "link_target": None},
        {"path": "shell", "sha256": "0" * 64, "mode": 0o4755, "uid": 0, "gid": 0, "link_target": None},
    ]
    data = {"name": name, "created": "x", "files": entries, "absent": [], "database": None}
    (forged / backup.MANIFEST).write_text(json.dumps(data))


def test_forged_backups_are_refused(server: Server, outside: Path) -> None:
    install_base(server)
    manual.manual_backup(server.ctx, "known-good")
    forge(server, "known-good", outside)
    before = untouched(outside)

    with pytest.raises(NesopError, match="backups"):
        manual.restore_backup(server.ctx, "known-good")

    assert untouched(outside) == before
    assert not (server.app_root / "shell").exists()


def test_a_forged_manifest_in_root_s_own_backups_is_refused(server: Server, outside: Path) -> None:
    """Even where the directory is root's, only the manifest root sealed is read back."""
    install_base(server)
    bdir = manual.manual_backup(server.ctx, "known-good")
    data = json.loads((bdir / backup.MANIFEST).read_text())
    data["files"][0]["mode"] = 0o4755
    (bdir / backup.MANIFEST).write_text(json.dumps(data))

    with pytest.raises(NesopError, match="not the one recorded"):
        manual.restore_backup(server.ctx, "known-good")


def test_a_symlinked_backups_dir_is_refused(server: Server, tmp_path: Path) -> None:
    install_base(server)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    shutil.rmtree(server.ctx.backups_dir)
    server.ctx.backups_dir.symlink_to(elsewhere)

    with pytest.raises(NesopError, match="symlink"):
        manual.manual_backup(server.ctx, "x")

    assert list(elsewhere.iterdir()) == []
    assert elsewhere.stat().st_mode & 0o7777 == 0o755


def test_the_update_log_does_not_follow_a_planted_link(server: Server, tmp_path: Path) -> None:
    install_base(server)
    made = tmp_path / "made-by-root"
    server.ctx.logs_dir.mkdir()
    server.ctx.log_file.symlink_to(made)

    with pytest.raises(NesopError, match="symlink"):
        log.setup(server.ctx.log_file)

    assert not made.exists()


def test_the_undo_reserve_does_not_truncate_through_a_link(server: Server, outside: Path) -> None:
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)
    name = backup.new_name("pre_update", manifest.version)
    (ctx.backups_dir / f".reserve-{name}").symlink_to(outside)
    before = untouched(outside)

    backup.reserve(ctx, f".reserve-{name}", 1 << 20)

    assert untouched(outside) == before
    assert (ctx.backups_dir / f".reserve-{name}").stat().st_size == 1 << 20


def test_validate_permissions_does_not_pass_through_a_symlinked_directory(
    server: Server, tmp_path: Path
) -> None:
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    elsewhere = tmp_path / "js-elsewhere"
    shutil.move(server.app_root / "static/js", elsewhere)
    (server.app_root / "static/js").symlink_to(elsewhere)

    result = validate.check_permissions(ctx)

    assert not result.ok
    assert any("static/js" in p and "symlink" in p for p in result.problems), result.problems


def test_backups_and_logs_the_app_account_owns_are_refused_before_any_change(server: Server) -> None:
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)
    os.chmod(ctx.backups_dir, 0o777)  # as good as the app's own

    with pytest.raises(NesopError, match="no other account can write"):
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
    assert server.applied() == []


def test_validate_config_does_not_read_through_a_planted_link(server: Server, outside: Path) -> None:
    install_base(server)
    outside.write_text("[section]\nnot an ini line: root's secret\n")
    (server.app_root / "config.py").unlink()
    (server.app_root / "config.py").symlink_to(outside)

    result = validate.check_config(server.ctx)

    assert not result.ok
    assert result.problems == [f"config.py: {server.app_root}/config.py is a symlink" + LINK_TAIL]
    assert "secret" not in " ".join(result.problems)


@pytest.mark.parametrize("suffix", ["-shm", "-wal", "-journal"])
def test_a_link_beside_the_database_is_refused_before_the_stop(
    server: Server, outside: Path, suffix: str
) -> None:
    install_base(server)
    ctx = server.ctx
    manifest = release_101(server)  # it migrates
    planted = server.db.with_name(server.db.name + suffix)
    planted.unlink(missing_ok=True)
    planted.symlink_to(outside)
    before = untouched(outside)

    with pytest.raises(NesopError, match=f"{planted} is a symlink"):
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))

    assert untouched(outside) == before
    assert server.systemd.verbs().count("stop") == 0, "refused while the app still served"
    assert server.applied() == []


def test_a_file_swapped_during_the_backup_keeps_the_owner_and_mode_of_what_was_copied(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account swaps a root-only file in (rename needs no right on the file) between the
    backup's look at the name and its copy: the copy must not come back with the look's owner
    and mode, which would hand root's content to the account."""
    install_base(server)
    secret = server.app_root / "root-only.env"
    secret.write_bytes(b"PASSWORD=root's\n")
    secret.chmod(0o600)
    real = safefs.Tree.copy_from

    def swap_then_copy(self: safefs.Tree, src: safefs.Tree, src_rel: str, *args: Any, **kw: Any) -> Any:
        if src_rel == "app.py":
            os.replace(secret, server.app_root / "app.py")
        return real(self, src, src_rel, *args, **kw)

    (server.app_root / "app.py").chmod(0o644)
    monkeypatch.setattr(safefs.Tree, "copy_from", swap_then_copy)
    bdir = backup.create_files(server.ctx, "b1", ["app.py"], {"kind": "test"})
    monkeypatch.undo()

    [entry] = backup.read_manifest(server.ctx, bdir)["files"]
    assert entry["mode"] == 0o600, "the mode of the file copied, not of the one looked at"
    backup.restore_files(server.ctx, bdir)
    assert (server.app_root / "app.py").stat().st_mode & 0o777 == 0o600


def test_one_sabotaged_file_does_not_stop_the_restore_of_the_others(server: Server, outside: Path) -> None:
    install_base(server)
    bdir = backup.create_files(server.ctx, "b1", ["app.py", "lib/util.py", "run.sh"], {"kind": "test"})
    for rel in ("app.py", "run.sh"):
        (server.app_root / rel).write_bytes(b"new version\n")
    shutil.rmtree(server.app_root / "lib")
    (server.app_root / "lib").symlink_to(outside.parent)  # planted where a directory was

    with pytest.raises(
        NesopError, match=r"could not restore lib/util.py: .*lib is a symlink.*every other file"
    ):
        backup.restore_files(server.ctx, bdir)

    assert (server.app_root / "app.py").read_bytes() != b"new version\n"
    assert (server.app_root / "run.sh").read_bytes() != b"new version\n"
    assert sorted(p.name for p in outside.parent.iterdir()) == ["secret"]
