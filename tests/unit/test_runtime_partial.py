"""A partial update on the server: what it leaves behind is recorded, the next regular update
accepts those files as they were left (no drift, no force), and the record follows what is live."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import LeftBehind, Manifest
from nesop_deb.runtime import checks, operations, state, undo
from tests.unit.runtime_fixtures import (
    APP_V1,
    APP_V2,
    BASE_FILES,
    Change,
    Server,
    add,
    fake_server,
    install_base,
    modify,
    sha,
    tree,
)

V0, V1, V2 = b"1.0.0\n", b"1.0.1\n", b"1.0.2\n"
JS1, JS2 = b"let cart = 1;\n", b"let cart = 2;\n"
PAGE0, PAGE2 = b"<p>shop</p>\n", b"<p>shop, v2</p>\n"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


def deployed(server: Server) -> None:
    """1.0.0 by hand, with a VERSION file and a page."""
    install_base(server)
    server.write_tree({"VERSION": V0, "page.html": PAGE0})


def package(
    server: Server,
    version: str,
    changes: Sequence[Change],
    left: Sequence[LeftBehind] = (),
    bases: Sequence[str] = ("1.0.0",),
) -> Manifest:
    """An unpacked package; ``left``: what its build left out (a partial package)."""
    manifest = replace(server.package(version, changes, bases=bases), left_behind=tuple(left))
    (server.ctx.share / "update_manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def partial_101(server: Server) -> Manifest:
    """The range 1.0.0..1.0.1 changes app.py and VERSION and adds lib/cart.js; only app.py ships."""
    left = [LeftBehind("VERSION", sha(V0), sha(V1)), LeftBehind("lib/cart.js", None, sha(JS1))]
    return package(server, "1.0.1", [modify("app.py", APP_V1, APP_V2)], left)


def release_102(server: Server) -> Manifest:
    """Built from v1.0.1 (the release, not what the partial update left): VERSION and the script
    change from 1.0.1's content."""
    changes = [modify("VERSION", V1, V2), modify("lib/cart.js", JS1, JS2), modify("page.html", PAGE0, PAGE2)]
    return package(server, "1.0.2", changes, bases=("1.0.1",))


def apply_now(server: Server, manifest: Manifest) -> None:
    ctx = server.ctx
    operations.run_apply(ctx, manifest, ctx.share, state.load(ctx))


def live(server: Server, rel: str) -> bytes | None:
    path = server.app_root / rel
    return path.read_bytes() if path.exists() else None


def test_a_partial_update_records_what_it_left_behind(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    assert (live(server, "app.py"), live(server, "VERSION"), live(server, "lib/cart.js")) == (
        APP_V2,
        V0,
        None,
    )
    assert state.left_behind(server.ctx, "1.0.1") == {"VERSION": sha(V0), "lib/cart.js": None}
    assert state.left_behind(server.ctx, "1.0.0") == {}  # never recorded: nothing known
    assert state.left_behind(server.ctx, None) == {}


def test_the_next_regular_update_applies_and_the_tree_is_the_release(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    manifest = release_102(server)
    assert checks.drift(server.ctx, manifest) == []
    apply_now(server, manifest)
    assert server.applied() == ["1.0.1", "1.0.2"]
    assert (live(server, "VERSION"), live(server, "lib/cart.js"), live(server, "page.html")) == (
        V2,
        JS2,
        PAGE2,
    )
    assert state.left_behind(server.ctx, "1.0.2") == {}  # written since: nothing is behind any more
    assert not (state.version_dir(server.ctx, "1.0.2") / state.LEFT_BEHIND).exists()


def test_only_the_content_it_was_left_at_is_accepted(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    (server.app_root / "VERSION").write_bytes(b"hand-edited\n")
    with pytest.raises(RefusedError, match="VERSION was changed on this server"):
        apply_now(server, release_102(server))
    assert live(server, "page.html") == PAGE0 and server.applied() == ["1.0.1"]


def test_without_the_record_the_left_file_is_drift(server: Server) -> None:
    # the same tree without the record (as before this was kept): refused, as it always was
    deployed(server)
    apply_now(server, partial_101(server))
    (state.version_dir(server.ctx, "1.0.1") / state.LEFT_BEHIND).unlink()
    drift = checks.drift(server.ctx, release_102(server))
    assert [d.path for d in drift] == ["VERSION", "lib/cart.js"]


def test_a_file_the_next_update_does_not_touch_stays_left_behind(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    apply_now(server, package(server, "1.0.2", [modify("page.html", PAGE0, PAGE2)], bases=("1.0.1",)))
    assert state.left_behind(server.ctx, "1.0.2") == {"VERSION": sha(V0), "lib/cart.js": None}
    # a later partial update that leaves VERSION out again keeps the content the server has
    later = package(
        server,
        "1.0.3",
        [add("lib/cart.js", JS2)],
        [LeftBehind("VERSION", sha(V1), sha(b"1.0.3\n"))],
        bases=("1.0.2",),
    )
    apply_now(server, later)
    assert state.left_behind(server.ctx, "1.0.3") == {"VERSION": sha(V0)}


def test_a_full_rebuild_of_the_same_range_applies_over_the_partial_update(server: Server) -> None:
    # the range 1.0.0..1.0.1 shipped whole under another version: app.py is already at its
    # result, VERSION still at its pre-image, lib/cart.js absent; every one of them is accepted
    deployed(server)
    apply_now(server, partial_101(server))
    whole = [modify("app.py", APP_V1, APP_V2), modify("VERSION", V0, V1), add("lib/cart.js", JS1)]
    manifest = package(server, "1.0.1.1", whole, bases=("1.0.0", "1.0.1"))
    assert checks.drift(server.ctx, manifest) == []
    apply_now(server, manifest)
    assert (live(server, "app.py"), live(server, "VERSION"), live(server, "lib/cart.js")) == (APP_V2, V1, JS1)
    assert state.left_behind(server.ctx, "1.0.1.1") == {}


def test_a_rollback_to_the_partial_version_brings_its_record_back(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    tree_101 = tree(server.app_root)
    apply_now(server, release_102(server))
    undo.undo_above(server.ctx, "1.0.1")
    assert tree(server.app_root) == tree_101
    st = state.load(server.ctx)
    assert st.current == "1.0.1"
    assert state.left_behind(server.ctx, st.current) == {"VERSION": sha(V0), "lib/cart.js": None}
    apply_now(server, release_102(server))  # and the release applies again
    assert live(server, "VERSION") == V2


def test_a_failed_partial_update_leaves_no_record(server: Server) -> None:
    deployed(server)
    server.systemd.fail_starts = 1
    with pytest.raises(NesopError, match="step 'start' failed"):
        apply_now(server, partial_101(server))
    assert server.applied() == []
    assert not (state.version_dir(server.ctx, "1.0.1") / state.LEFT_BEHIND).exists()
    assert live(server, "app.py") == BASE_FILES["app.py"]


def test_an_unreadable_record_is_a_state_error(server: Server) -> None:
    deployed(server)
    apply_now(server, partial_101(server))
    path = state.version_dir(server.ctx, "1.0.1") / state.LEFT_BEHIND
    path.write_text(json.dumps({"files": {"VERSION": 5}}))
    with pytest.raises(state.StateError, match="not a map of paths to sha256"):
        state.left_behind(server.ctx, "1.0.1")
