"""Property: whatever links the app's account plants in its tree, an update, its undo and a
restore of its backup change nothing outside the app root (they complete, or refuse)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nesop_deb.errors import NesopError
from nesop_deb.runtime import history, manual, operations, state
from tests.unit.runtime_fixtures import DB_REL, Server, fake_server, install_base, release_101

# where an attacker's link meets the runtime: the names it writes, renames, chowns or reads
POSITIONS = (
    "app.py",
    "app.py.nesop-tmp",
    "config.py.nesop-tmp",
    "config.py.nesop-new",
    "lib",
    "lib/new_name.py",
    "lib/new_name.py.nesop-tmp",
    "static",
    "static/js",
    "README.md.nesop-tmp",
    "uploads",
    "uploads/README.txt.nesop-tmp",
    f"{DB_REL}.nesop-tmp",
    f"{DB_REL}-shm",
    f"{DB_REL}-wal",
    f"{DB_REL}-journal",
    "backups",
    "logs",
    "logs/update.log",
    "logs/update_history.json",
)


def fingerprint(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Everything below ``root``: kind and mode, owner, and content or link target."""
    found: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st_ = p.lstat()
            if p.is_symlink():
                body: bytes | str | None = os.readlink(p)
            elif p.is_file():
                body = p.read_bytes()
            else:
                body = None
            found[str(p.relative_to(root))] = (st_.st_mode, st_.st_uid, st_.st_gid, body)
    return found


def plant_all(server: Server, where: set[str], target: Path) -> None:
    """A link at each place, except below another planted link (that would write outside)."""
    for rel in sorted(where):
        if not any(rel.startswith(other + "/") for other in where):
            plant(server, rel, target)


def plant(server: Server, rel: str, target: Path) -> None:
    p = server.app_root / rel
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


@given(
    where=st.sets(st.sampled_from(POSITIONS), min_size=1, max_size=5),
    to_dir=st.booleans(),
    fail=st.booleans(),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_planted_links_never_reach_outside_the_app_root(
    tmp_path_factory: pytest.TempPathFactory, where: set[str], to_dir: bool, fail: bool
) -> None:
    tmp = tmp_path_factory.mktemp("links")
    outside = tmp / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"root's own\n")
    (outside / "secret").chmod(0o600)
    (outside / "dir").chmod(0o755)
    target = outside / ("dir" if to_dir else "secret")
    with pytest.MonkeyPatch.context() as mp:
        servers = fake_server(tmp, mp)
        server = next(servers)
        try:
            install_base(server)
            ctx = server.ctx
            manifest = release_101(server)
            before = fingerprint(outside)
            server.systemd.fail_starts = 1 if fail else 0
            plant_all(server, where, target)
            with contextlib.suppress(NesopError):
                operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))
            assert fingerprint(outside) == before
            try:
                entries = history.entries(ctx)
            except NesopError:  # logs/ is a link: refused, and nothing was applied
                entries = []
            done = [e for e in entries if e.get("status") == "success" and e.get("backup")]
            if done:  # then restore the backup it took, through the same links planted again
                plant_all(server, where, target)
                with contextlib.suppress(NesopError):
                    manual.restore_backup(ctx, str(done[-1]["backup"]))
                assert fingerprint(outside) == before
        finally:
            for _ in servers:  # runs the fixture's clean-up
                pass
