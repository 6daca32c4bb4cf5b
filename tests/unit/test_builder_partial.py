"""A partial package on plain data: what it leaves out of its range, and how its manifest says so."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from nesop_deb.builder.git import Change, TreeEntry
from nesop_deb.builder.migrations import is_migration_file
from nesop_deb.builder.plan import describe, left_behind, select_files
from nesop_deb.errors import UsageError
from nesop_deb.manifest import Action, FileEntry, LeftBehind, Manifest, ManifestError, loads

EXCLUDE = ("docs/**",)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(files: dict[str, bytes], blobs: dict[str, bytes]) -> dict[str, TreeEntry]:
    entries = {}
    for path, data in files.items():
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blobs[blob] = data
        entries[path] = TreeEntry(path, "100644", blob)
    return entries


BLOBS: dict[str, bytes] = {}
BASE = tree(
    {"server.py": b"v1", "VERSION": b"1.0.0\n", "old.js": b"js", "gone.css": b"css", "docs/a.md": b"a"}, BLOBS
)
HEAD = tree(
    {"server.py": b"v2", "VERSION": b"1.0.1\n", "new.js": b"js", "cart.svg": b"svg", "docs/a.md": b"b"}, BLOBS
)
CHANGES = [
    Change("M", "server.py"),
    Change("M", "VERSION"),
    Change("R", "new.js", "old.js"),
    Change("D", "gone.css"),
    Change("A", "cart.svg"),
    Change("M", "docs/a.md"),  # excluded: never ships, so never left behind
]


def test_left_behind_lists_every_change_of_the_range_that_is_not_written() -> None:
    files = select_files(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, ("server.py",))
    assert [f.path for f in files] == ["server.py"]
    got = left_behind(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, files)
    assert got == [
        LeftBehind("VERSION", sha(b"1.0.0\n"), sha(b"1.0.1\n")),
        LeftBehind("cart.svg", None, sha(b"svg")),
        LeftBehind("gone.css", sha(b"css"), None),
        LeftBehind("new.js", None, sha(b"js")),
        LeftBehind("old.js", sha(b"js"), None),
    ]


def test_a_whole_range_leaves_nothing_behind() -> None:
    files = select_files(CHANGES, HEAD, BASE, BLOBS, EXCLUDE)
    assert left_behind(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, files) == []
    # naming either side of a rename ships it whole
    files = select_files(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, ("old.js",))
    assert [f.path for f in files] == ["new.js"]
    assert {lb.path for lb in left_behind(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, files)} == {
        "VERSION",
        "cart.svg",
        "gone.css",
        "server.py",
    }


def test_a_named_file_removed_by_exclude_is_an_error() -> None:
    with pytest.raises(UsageError, match=r"--files docs/a.md: \[files\] exclude removes it"):
        select_files(CHANGES, HEAD, BASE, BLOBS, EXCLUDE, ("docs/a.md",))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("migrations/0002_x.sql", True),
        ("migrations/0002_x.rollback.sql", True),
        ("migrations/README.md", False),
        ("migrations/old/0002_x.sql", False),
        ("server.py", False),
    ],
)
def test_migration_files(path: str, expected: bool) -> None:
    assert is_migration_file(path, "migrations") is expected


def _manifest(**changes: object) -> Manifest:
    m = Manifest(
        package="demo-update",
        version="1.0.1",
        bases=("1.0.0",),
        full=False,
        source_commit="a" * 40,
        since_commit="b" * 40,
        since_ref="v1.0.0",
        builder_version="0.1.0",
        created=0,
        config={"app": {"name": "demo", "root": "/opt/demo", "service": "demo.service"}},
        files=(FileEntry("server.py", Action.MODIFY, sha(b"v2"), 2, 0o644, sha(b"v1")),),
        left_behind=(LeftBehind("VERSION", sha(b"1.0.0\n"), sha(b"1.0.1\n")),),
    )
    return replace(m, **changes)  # type: ignore[arg-type]


def test_the_manifest_carries_what_was_left_out() -> None:
    m = _manifest()
    data = json.loads(m.to_json())
    assert data["left_behind"] == [
        {"path": "VERSION", "base_sha256": sha(b"1.0.0\n"), "release_sha256": sha(b"1.0.1\n")}
    ]
    assert loads(m.to_json()) == m
    # a whole package writes no such key: its manifest reads as it always did
    assert "left_behind" not in json.loads(_manifest(left_behind=()).to_json())
    lines = describe(m)
    assert lines[0].endswith("0 migration(s), 1 left out (partial)")
    assert lines[-1] == "! VERSION (left out: stays as the base has it)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "../etc/x", "base_sha256": None, "release_sha256": "0" * 64}, "unsafe path"),
        ({"path": "x", "base_sha256": "nope", "release_sha256": None}, "base_sha256 is not a sha256"),
        ({"path": "x", "base_sha256": None, "release_sha256": None}, "absent both before and after"),
        ({"path": "server.py", "base_sha256": "0" * 64, "release_sha256": None}, "'server.py' appears twice"),
        ("VERSION", "left_behind[0] is not an object"),
    ],
)
def test_a_bad_left_behind_entry_is_refused(entry: object, message: str) -> None:
    data = json.loads(_manifest().to_json())
    data["left_behind"] = [entry]
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace("[", r"\[")):
        loads(json.dumps(data))
