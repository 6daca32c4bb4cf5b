"""What an update ships, decided on plain data: select_files, select_migrations, --files, describe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nesop_deb.builder.git import Change, TreeEntry
from nesop_deb.builder.migrations import MIGRATION_NAME
from nesop_deb.builder.plan import (
    describe,
    full_files,
    normalise_files_option,
    select_files,
    select_migrations,
)
from nesop_deb.errors import BuildError, ExitCode, UsageError
from nesop_deb.manifest import Action, FileEntry, Manifest

EXCLUDE = ("tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tree:
    """A git tree as the builder reads it: path -> entry, blob sha -> content."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.entries: dict[str, TreeEntry] = {}

    def add(self, path: str, data: bytes, mode: str = "100644") -> Tree:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.blobs[blob] = data
        self.entries[path] = TreeEntry(path, mode, blob)
        return self


def trees() -> tuple[Tree, Tree]:
    blobs: dict[str, bytes] = {}
    return Tree(blobs), Tree(blobs)


def by_path(entries: list[FileEntry]) -> dict[str, FileEntry]:
    return {e.path: e for e in entries}


def test_add_modify_delete() -> None:
    base, head = trees()
    base.add("server.py", b"v1").add("old.css", b"old").add("keep.txt", b"same")
    head.add("server.py", b"v2").add("new.js", b"new", "100755").add("keep.txt", b"same")
    changes = [Change("M", "server.py"), Change("A", "new.js"), Change("D", "old.css")]
    files = select_files(changes, head.entries, base.entries, head.blobs, EXCLUDE)
    assert [f.path for f in files] == ["new.js", "old.css", "server.py"]  # sorted
    got = by_path(files)
    assert got["server.py"] == FileEntry("server.py", Action.MODIFY, sha(b"v2"), 2, 0o644, sha(b"v1"))
    assert got["new.js"] == FileEntry("new.js", Action.ADD, sha(b"new"), 3, 0o755, None)
    assert got["old.css"] == FileEntry("old.css", Action.DELETE, None, 0, None, sha(b"old"))


def test_mode_only_change_is_a_modification() -> None:
    base, head = trees()
    base.add("run.sh", b"#!/bin/sh\n")
    head.add("run.sh", b"#!/bin/sh\n", "100755")
    [entry] = select_files([Change("M", "run.sh")], head.entries, base.entries, head.blobs, ())
    assert entry.action is Action.MODIFY and entry.mode == 0o755
    assert entry.sha256 == entry.preimage_sha256


def test_rename_keeps_the_preimage_of_the_old_path() -> None:
    base, head = trees()
    base.add("scripts/old.js", b"js1")
    head.add("scripts/new.js", b"js2")
    changes = [Change("R", "scripts/new.js", "scripts/old.js")]
    [entry] = select_files(changes, head.entries, base.entries, head.blobs, EXCLUDE)
    assert entry == FileEntry(
        "scripts/new.js", Action.RENAME, sha(b"js2"), 3, 0o644, sha(b"js1"), "scripts/old.js"
    )


def test_renames_across_the_exclude_boundary() -> None:
    base, head = trees()
    base.add("docs/tool.py", b"t").add("lib/helper.py", b"h").add("docs/a.md", b"a")
    head.add("lib/tool.py", b"t").add("tests/helper.py", b"h").add("docs/b.md", b"a")
    changes = [
        Change("R", "lib/tool.py", "docs/tool.py"),  # into what ships: an addition
        Change("R", "tests/helper.py", "lib/helper.py"),  # out of it: a deletion of the old path
        Change("R", "docs/b.md", "docs/a.md"),  # excluded on both sides: nothing
    ]
    got = by_path(select_files(changes, head.entries, base.entries, head.blobs, EXCLUDE))
    assert set(got) == {"lib/tool.py", "lib/helper.py"}
    assert got["lib/tool.py"] == FileEntry("lib/tool.py", Action.ADD, sha(b"t"), 1, 0o644, None)
    assert got["lib/helper.py"] == FileEntry("lib/helper.py", Action.DELETE, None, 0, None, sha(b"h"))


def test_excluded_changes_are_dropped() -> None:
    base, head = trees()
    base.add("tests/t.py", b"1").add("docs/gone.md", b"g")
    head.add("tests/t.py", b"2").add("pkg/__pycache__/m.pyc", b"c").add("nesop-deb.toml", b"x")
    changes = [
        Change("M", "tests/t.py"),
        Change("A", "pkg/__pycache__/m.pyc"),
        Change("A", "nesop-deb.toml"),
        Change("D", "docs/gone.md"),
    ]
    assert select_files(changes, head.entries, base.entries, head.blobs, EXCLUDE) == []


def test_symlinks_inside_ship_with_their_target() -> None:
    base, head = trees()
    head.add("static/current", b"v2", "120000").add("static/v2/app.js", b"js")
    changes = [Change("A", "static/current"), Change("A", "static/v2/app.js")]
    got = by_path(select_files(changes, head.entries, base.entries, head.blobs, ()))
    link = got["static/current"]
    assert link.link_target == "v2" and link.sha256 == sha(b"v2") and link.action is Action.ADD
    assert got["static/v2/app.js"].link_target is None


@pytest.mark.parametrize(("path", "target"), [("link", "/etc/passwd"), ("a/link", "../../x")])
def test_symlinks_leaving_the_repository_are_refused(path: str, target: str) -> None:
    base, head = trees()
    head.add(path, target.encode(), "120000")
    with pytest.raises(BuildError) as info:
        select_files([Change("A", path)], head.entries, base.entries, head.blobs, ())
    assert info.value.exit_code is ExitCode.USAGE
    assert f"symlink {path} -> {target} points outside the repository" in str(info.value)
    assert "exclude it in [files].exclude" in str(info.value)


def test_a_chain_of_symlinks_leaving_the_repository_is_refused() -> None:
    """Each stays inside alone; through each other they reach the repository's parent."""
    base, head = trees()
    head.add("static/a", b"..", "120000").add("static/b", b"a/..", "120000")
    changes = [Change("A", "static/a"), Change("A", "static/b")]
    with pytest.raises(BuildError) as info:
        select_files(changes, head.entries, base.entries, head.blobs, ())
    assert "symlink static/b -> a/.. leads outside the app through other symlinks" in str(info.value)


def test_an_excluded_symlink_leaving_the_repository_is_ignored() -> None:
    # the refusal's own hint says to exclude it: that must then work
    base, head = trees()
    head.add("docs/passwd", b"/etc/passwd", "120000").add("app.py", b"x")
    changes = [Change("A", "docs/passwd"), Change("A", "app.py")]
    got = select_files(changes, head.entries, base.entries, head.blobs, EXCLUDE)
    assert [f.path for f in got] == ["app.py"]


def test_submodules_are_refused_unless_excluded() -> None:
    base, head = trees()
    head.entries["vendor/lib"] = TreeEntry("vendor/lib", "160000", "c" * 40)  # a commit: no blob
    with pytest.raises(BuildError, match="vendor/lib is a git submodule; exclude it"):
        select_files([Change("A", "vendor/lib")], head.entries, base.entries, head.blobs, ())
    assert (
        select_files([Change("A", "vendor/lib")], head.entries, base.entries, head.blobs, ("vendor/**",))
        == []
    )


def test_only_narrows_to_paths_and_directories() -> None:
    base, head = trees()
    for p in ("server.py", "static/a.js", "static/b.js", "config.py"):
        base.add(p, b"1")
        head.add(p, b"2")
    changes = [Change("M", p) for p in head.entries]
    got = select_files(changes, head.entries, base.entries, head.blobs, (), ("server.py",))
    assert [f.path for f in got] == ["server.py"]
    got = select_files(changes, head.entries, base.entries, head.blobs, (), ("static", "config.py"))
    assert [f.path for f in got] == ["config.py", "static/a.js", "static/b.js"]
    got = select_files(changes, head.entries, base.entries, head.blobs, (), (".",))
    assert len(got) == 4


def test_only_matches_either_side_of_a_rename() -> None:
    base, head = trees()
    base.add("old.js", b"x")
    head.add("new.js", b"x")
    changes = [Change("R", "new.js", "old.js")]
    for only in (("old.js",), ("new.js",)):
        [entry] = select_files(changes, head.entries, base.entries, head.blobs, (), only)
        assert entry.action is Action.RENAME


def test_only_names_an_unknown_path() -> None:
    base, head = trees()
    head.add("server.py", b"x")
    with pytest.raises(UsageError) as info:
        select_files([Change("A", "server.py")], head.entries, base.entries, head.blobs, (), ("serv.py",))
    assert "--files serv.py: no such file in the repository" in str(info.value)
    assert info.value.hint is not None


def test_only_ships_a_named_file_that_did_not_change_as_head_has_it() -> None:
    base, head = trees()
    base.add("server.py", b"x").add("a.py", b"1")
    head.add("server.py", b"x", "100755").add("a.py", b"2")
    got = select_files([Change("M", "a.py")], head.entries, base.entries, head.blobs, (), ("server.py",))
    assert got == [FileEntry("server.py", Action.MODIFY, sha(b"x"), 1, 0o755, sha(b"x"))]


def test_full_files_ships_every_included_file_as_an_addition() -> None:
    _, head = trees()
    head.add("server.py", b"s").add("run.sh", b"r", "100755").add("tests/t.py", b"t").add(
        "nesop-deb.toml", b"c"
    )
    got = full_files(head.entries, head.blobs, EXCLUDE, ())
    assert [(f.path, f.action, f.mode, f.preimage_sha256) for f in got] == [
        ("run.sh", Action.ADD, 0o755, None),
        ("server.py", Action.ADD, 0o644, None),
    ]


@pytest.mark.parametrize(
    ("name", "mid", "rollback"),
    [
        ("0001_initial.sql", "0001_initial", None),
        ("0002_add_stock.rollback.sql", "0002_add_stock", ".rollback"),
        ("0003_x.py", "0003_x", None),
        ("0004_a.b-c.sql", "0004_a.b-c", None),
    ],
)
def test_migration_names(name: str, mid: str, rollback: str | None) -> None:
    m = MIGRATION_NAME.match(name)
    assert m is not None and m.group("id") == mid and m.group("rollback") == rollback


@pytest.mark.parametrize("name", ["1_x.sql", "0001.sql", "0001_x.txt", "README.md", "00001_x.sql"])
def test_not_migration_names(name: str) -> None:
    assert MIGRATION_NAME.match(name) is None


def migration_trees() -> tuple[Tree, Tree]:
    base, head = trees()
    for t in (base, head):
        t.add("migrations/0001_initial.sql", b"create table a(x);")
        t.add("migrations/0001_initial.rollback.sql", b"drop table a;")
        t.add("server.py", b"s")
    head.add("migrations/0002_stock.sql", b"alter table a add stock;")
    head.add("migrations/0002_stock.rollback.sql", b"alter table a drop stock;")
    head.add("migrations/0003_index.sql", b"create index i on a(x);")
    head.add("migrations/README.md", b"how to")
    head.add("migrations/old/0009_archived.sql", b"-- not in the directory itself")
    return base, head


def test_added_migrations_with_and_without_rollback() -> None:
    base, head = migration_trees()
    added = [p for p in head.entries if p not in base.entries]
    entries, contents = select_migrations(
        [Change("A", p) for p in added], head.entries, base.entries, head.blobs, "migrations", False
    )
    assert [(m.id, m.file, m.reversible, m.rollback_file) for m in entries] == [
        ("0002_stock", "0002_stock.sql", True, "0002_stock.rollback.sql"),
        ("0003_index", "0003_index.sql", False, None),
    ]
    assert entries[0].sha256 == sha(b"alter table a add stock;")
    assert entries[0].rollback_sha256 == sha(b"alter table a drop stock;")
    assert entries[1].rollback_sha256 is None
    assert set(contents) == {"0002_stock.sql", "0002_stock.rollback.sql", "0003_index.sql"}


def test_full_ships_every_migration() -> None:
    _, head = migration_trees()
    entries, contents = select_migrations([], head.entries, {}, head.blobs, "migrations/", True)
    assert [m.id for m in entries] == ["0001_initial", "0002_stock", "0003_index"]
    assert "0001_initial.rollback.sql" in contents and "old/0009_archived.sql" not in contents


def test_a_rollback_added_later_makes_a_released_migration_reversible_only_by_file() -> None:
    base, head = trees()
    base.add("migrations/0002_stock.sql", b"m")
    head.add("migrations/0002_stock.sql", b"m").add("migrations/0002_stock.rollback.sql", b"r")
    entries, _ = select_migrations(
        [Change("A", "migrations/0002_stock.rollback.sql")],
        head.entries,
        base.entries,
        head.blobs,
        "migrations",
        False,
    )
    assert entries == []  # the migration itself is not new: nothing to run


@pytest.mark.parametrize(
    "change",
    [
        Change("M", "migrations/0001_initial.sql"),
        Change("D", "migrations/0001_initial.sql"),
        Change("R", "migrations/0001_renamed.sql", "migrations/0001_initial.sql"),
    ],
)
def test_a_released_migration_must_not_change(change: Change) -> None:
    base, head = migration_trees()
    head.add("migrations/0001_renamed.sql", b"create table a(x);")
    with pytest.raises(BuildError) as info:
        select_migrations([change], head.entries, base.entries, head.blobs, "migrations", False)
    assert "migrations/0001_initial.sql was changed after it was released" in str(info.value)
    assert "add a new one" in str(info.value)


def test_editing_a_rollback_file_is_allowed() -> None:
    base, head = migration_trees()
    change = Change("M", "migrations/0001_initial.rollback.sql")
    assert select_migrations([change], head.entries, base.entries, head.blobs, "migrations", False) == (
        [],
        {},
    )


def test_python_migrations_are_refused_with_a_fix() -> None:
    base, head = trees()
    head.add("migrations/0002_data.py", b"steps = []")
    with pytest.raises(BuildError) as info:
        select_migrations(
            [Change("A", "migrations/0002_data.py")],
            head.entries,
            base.entries,
            head.blobs,
            "migrations",
            False,
        )
    assert "migrations/0002_data.py: Python migrations are not supported" in str(info.value)
    assert "migrations/0002_data.sql" in str(info.value)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        (
            "0002_data.rollback.py",
            "write it as migrations/0002_data.rollback.sql",
        ),  # not skipped as a rollback
        ("helpers.py", "move it out of migrations/"),  # not named like a migration: still refused
        ("0002_data.PY", "move it out of migrations/"),  # any case
    ],
)
def test_every_python_file_among_the_migrations_is_refused(name: str, fix: str) -> None:
    base, head = trees()
    head.add("migrations/0002_data.sql", b"create table d(x);").add(f"migrations/{name}", b"steps = []")
    changes = [Change("A", "migrations/0002_data.sql"), Change("A", f"migrations/{name}")]
    for full in (False, True):
        with pytest.raises(BuildError) as info:
            select_migrations(changes, head.entries, base.entries, head.blobs, "migrations", full)
        message = str(info.value)
        assert message.startswith(f"migrations/{name}: Python migrations are not supported; "), message
        assert "only SQL migrations are" in message and fix in message
        assert info.value.exit_code is ExitCode.USAGE


def test_a_python_file_leaving_the_migrations_is_not_refused() -> None:
    base, head = trees()
    base.add("migrations/0001_initial.sql", b"create table a(x);").add("migrations/helpers.py", b"x = 1")
    head.add("migrations/0001_initial.sql", b"create table a(x);")
    got = select_migrations(
        [Change("D", "migrations/helpers.py")], head.entries, base.entries, head.blobs, "migrations", False
    )
    assert got == ([], {})


def test_normalise_files_option(tmp_path: Path) -> None:
    app = tmp_path.resolve()
    (app / "static").mkdir()
    got = normalise_files_option(["server.py", "./static/", str(app / "static/a.js"), ".", "a//b"], app)
    assert got == ("server.py", "static", "static/a.js", ".", "a/b")


@pytest.mark.parametrize("item", ["../x", "a/../../x", "/etc/passwd"])
def test_normalise_files_option_refuses_paths_leaving_the_app(tmp_path: Path, item: str) -> None:
    with pytest.raises(UsageError) as info:
        normalise_files_option([item], tmp_path.resolve())
    assert f"--files {item}: the path leaves the repository" in str(info.value)


def test_describe() -> None:
    m = Manifest(
        package="shop-update",
        version="1.0.2",
        bases=("1.0.1",),
        full=False,
        source_commit="a" * 40,
        since_commit="b" * 40,
        since_ref="v1.0.1",
        builder_version="0.1.0",
        created=0,
        config={},
        files=(
            FileEntry("a.js", Action.ADD, sha(b"a"), 1, 0o644, None),
            FileEntry("b.css", Action.DELETE, None, 0, None, sha(b"b")),
            FileEntry("c.js", Action.RENAME, sha(b"c"), 1, 0o644, sha(b"c"), "old/c.js"),
            FileEntry("d.py", Action.MODIFY, sha(b"d"), 1, 0o644, sha(b"e")),
        ),
    )
    assert describe(m) == [
        "shop-update 1.0.2 (from 1.0.1): 1 added, 1 modified, 1 renamed, 1 deleted, 0 migration(s)",
        "+ a.js",
        "- b.css",
        "> c.js (from old/c.js)",
        "~ d.py",
    ]
