"""Who owns what the runtime writes: root owns the code, the app's account only the directories
``[app] writable`` names; a code tree that account can write to fails validation, naming the fix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.runtime import operations, state, validate
from tests.unit.runtime_fixtures import USER, Server, add, fake_server

APP_UID, APP_GID = 4242, 4343

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another account needs root")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for srv in fake_server(tmp_path, monkeypatch):
        # the app runs as an account of its own (the fixture's default is the test's own)
        (srv.root / "etc/passwd").write_text(
            f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:{APP_UID}:{APP_GID}::/opt/app:/usr/sbin/nologin\n"
        )
        (srv.root / "etc/group").write_text(f"root:x:0:\n{USER}:x:{APP_GID}:\n")
        srv.settings["app"]["writable"] = ["data"]
        yield srv


def owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def first_install(server: Server) -> None:
    ctx = server.ctx
    manifest = server.package(
        "1.0.0",
        [add("app.py", b"print('hi')\n"), add("static/site.css", b"body {}\n"), add("data/seed.txt", b"x\n")],
        bases=(),
        full=True,
    )
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def test_a_first_install_gives_the_app_only_its_writable_directories(server: Server) -> None:
    first_install(server)
    root = server.app_root
    assert owner(root) == (0, 0, 0o755)
    assert owner(root / "app.py")[:2] == (0, 0)
    assert owner(root / "static")[:2] == (0, 0)
    assert owner(root / "static/site.css")[:2] == (0, 0)
    assert owner(root / "data") == (APP_UID, APP_GID, 0o750)
    assert owner(root / "data/seed.txt")[:2] == (APP_UID, APP_GID)
    assert validate.check_permissions(server.ctx).ok, validate.check_permissions(server.ctx).problems


def test_a_code_tree_the_app_can_write_fails_validation_with_the_fix(server: Server) -> None:
    first_install(server)
    os.chown(server.app_root, APP_UID, APP_GID)  # as a server deployed by hand often is

    result = validate.check_permissions(server.ctx)

    assert not result.ok
    [problem] = result.problems
    assert f"{server.app_root}: the app's account ({USER}) can write to its code" in problem
    assert f"fix: chown -R root:root {server.app_root}" in problem
    assert f"chown -R {USER}:{USER} {server.app_root}/data" in problem
