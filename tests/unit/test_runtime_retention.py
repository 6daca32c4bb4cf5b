"""Retention: `[backups].keep` backups stay, and never the ones a rollback still needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import backup, manual, operations, retention, state, undo
from tests.unit.runtime_fixtures import APP_V2, Server, fake_server, install_base, modify

KEEP = 2


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def _content(n: int) -> bytes:
    return APP_V2 if n == 1 else f"print('v{n}')\n".encode()


def _apply_series(server: Server, count: int) -> None:
    """Apply 1.0.1 .. 1.0.<count>, each changing app.py."""
    for n in range(1, count + 1):
        previous = b"print('v1')\n" if n == 1 else _content(n - 1)
        manifest = server.package(
            f"1.0.{n}", [modify("app.py", previous, _content(n))], bases=(f"1.0.{n - 1}",)
        )
        ctx = server.ctx
        operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def test_retention_keeps_keep_backups_and_what_rollback_needs(server: Server) -> None:
    server.settings["backups"]["keep"] = KEEP
    install_base(server)
    assert (server.app_root / "app.py").read_bytes() == b"print('v1')\n", "fixture base changed"
    manual_dir = manual.manual_backup(server.ctx, "before-the-series")

    _apply_series(server, 6)  # more updates than `keep`

    names = [b.name for b in backup.list_backups(server.ctx)]
    applied = state.load(server.ctx).applied
    needed = {a.backup for a in applied[-2:] if a.backup is not None}
    assert needed <= set(names), "the backups of the live version and the one before it are kept"
    assert manual_dir.name in names, "the newest manual backup is kept"
    assert len(names) == len(needed | {manual_dir.name}) >= KEEP
    pre_update = [n for n in names if n.startswith("pre_update_")]
    assert sorted(pre_update) == sorted(needed)

    # what was kept is enough to go back one version, and then the next
    undo.undo_above(server.ctx, "1.0.5")
    assert (server.app_root / "app.py").read_bytes() == _content(5)
    live = state.load(server.ctx).applied[-1]
    assert live.version == "1.0.5"
    assert live.backup in [b.name for b in backup.list_backups(server.ctx)]
    retention.prune(server.ctx)
    assert live.backup in [b.name for b in backup.list_backups(server.ctx)], "still needed: never pruned"


def test_prune_never_goes_below_keep(server: Server) -> None:
    server.settings["backups"]["keep"] = 10
    install_base(server)
    _apply_series(server, 4)
    assert retention.prune(server.ctx) == []
    assert len(backup.list_backups(server.ctx)) == 4


def test_space_an_undo_could_not_give_back_goes_with_the_next_prune(server: Server) -> None:
    install_base(server)
    ctx = server.ctx
    ctx.backups_dir.mkdir(parents=True, exist_ok=True)
    stale = ctx.backups_dir / ".reserve-pre_update_1.0.1_20260101T000000Z"
    stale.write_bytes(b"\0" * 4096)
    state.write_journal(ctx, {"kind": "apply", "version": "1.0.1", "steps": ["stage"]})

    retention.prune(ctx)
    assert stale.exists(), "a transaction in flight may still need it"

    state.clear_journal(ctx)
    retention.prune(ctx)
    assert not stale.exists()
