"""Config files (``[files].config``): local edits are kept, the new version lands beside them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import apply, history, operations, state, transaction
from tests.unit.runtime_fixtures import (
    CONFIG_V1,
    CONFIG_V2,
    Server,
    add,
    changes_101,
    delete,
    fake_server,
    install_base,
    leftovers,
    release_101,
    tree,
)

EDITED = b"DEBUG = True  # edited on this server\n"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def apply_now(server: Server) -> None:
    ctx = server.ctx
    operations.run_apply(
        ctx, apply.load_installed_manifest(ctx.package, ctx.root), ctx.share, state.load(ctx)
    )


def test_an_edited_config_file_is_kept_and_the_new_one_written_beside_it(server: Server) -> None:
    install_base(server)
    config = server.app_root / "config.py"
    config.write_bytes(EDITED)
    release_101(server)

    apply_now(server)

    assert config.read_bytes() == EDITED
    new = server.app_root / "config.py.nesop-new"
    assert new.read_bytes() == CONFIG_V2
    assert new.stat().st_mode & 0o7777 == 0o644
    assert history.read(server.ctx.history_file)[-1]["kept_config"] == ["config.py"]
    assert state.load(server.ctx).applied[-1].kept_config == ["config.py"]
    assert (server.app_root / "app.py").read_bytes() != b""  # the rest was applied
    assert leftovers(server.root) == []


def test_an_unedited_config_file_is_replaced(server: Server) -> None:
    install_base(server)
    release_101(server)

    apply_now(server)

    assert (server.app_root / "config.py").read_bytes() == CONFIG_V2
    assert not (server.app_root / "config.py.nesop-new").exists()
    assert history.read(server.ctx.history_file)[-1]["kept_config"] == []


def test_a_config_file_already_at_the_new_version_is_not_kept(server: Server) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(CONFIG_V2)
    release_101(server)

    apply_now(server)

    assert (server.app_root / "config.py").read_bytes() == CONFIG_V2
    assert history.read(server.ctx.history_file)[-1]["kept_config"] == []


def test_an_edited_config_file_the_update_deletes_is_kept(server: Server) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(EDITED)
    changes = [c for c in changes_101() if c.entry.path != "config.py"] + [delete("config.py", CONFIG_V1)]
    server.package("1.0.1", changes)

    apply_now(server)

    assert (server.app_root / "config.py").read_bytes() == EDITED
    assert history.read(server.ctx.history_file)[-1]["kept_config"] == ["config.py"]


def test_an_added_config_file_over_a_local_one_is_kept(server: Server) -> None:
    install_base(server)
    (server.app_root / ".env.production").write_bytes(b"SECRET=local\n")
    server.settings["files"]["config"] = ["config.py", ".env.production"]
    server.package("1.0.1", [add(".env.production", b"SECRET=shipped\n")])

    apply_now(server)

    assert (server.app_root / ".env.production").read_bytes() == b"SECRET=local\n"
    assert (server.app_root / ".env.production.nesop-new").read_bytes() == b"SECRET=shipped\n"


def test_a_failed_update_removes_the_new_config_version(server: Server) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(EDITED)
    before = tree(server.app_root)
    release_101(server)
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed):
        apply_now(server)

    assert tree(server.app_root) == before
    assert not (server.app_root / "config.py.nesop-new").exists()
    assert leftovers(server.root) == []


def test_a_leftover_nesop_new_from_an_earlier_update_comes_back_on_failure(server: Server) -> None:
    install_base(server)
    (server.app_root / "config.py").write_bytes(EDITED)
    (server.app_root / "config.py.nesop-new").write_bytes(b"# from 1.0.0\n")
    before = tree(server.app_root)
    release_101(server)
    server.systemd.fail_starts = 1

    with pytest.raises(transaction.TransactionFailed):
        apply_now(server)

    assert tree(server.app_root) == before
