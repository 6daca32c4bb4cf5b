"""``update_manifest.json``: round trips, and every malformed or unsafe manifest is refused."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from nesop_deb.config import loads as config_loads
from nesop_deb.manifest import FORMAT, Action, FileEntry, Manifest, ManifestError, MigrationEntry, loads


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CONFIG = config_loads(
    '[app]\nname = "shop"\nroot = "/srv/shop"\n[package]\nmaintainer = "Shop Ops <ops@shop.example>"\n'
).to_dict()


def sample() -> Manifest:
    return Manifest(
        package="shop-update",
        version="1.0.5",
        bases=("1.0.4",),
        full=False,
        source_commit="a" * 40,
        since_commit="b" * 40,
        since_ref="v1.0.4",
        builder_version="0.1.0",
        created=1736154000,
        config=CONFIG,
        files=(
            FileEntry("bin/run", Action.MODIFY, sha("run2"), 4, 0o755, sha("run1")),
            FileEntry("current", Action.ADD, sha("v2"), 2, 0o644, None, None, "releases/v2"),
            FileEntry("old.css", Action.DELETE, None, 0, None, sha("old")),
            FileEntry(
                "static/new name ü.js", Action.RENAME, sha("js2"), 3, 0o644, sha("js1"), "static/old.js"
            ),
        ),
        migrations=(
            MigrationEntry(
                "0002_stock", "0002_stock.sql", sha("m2"), True, "0002_stock.rollback.sql", sha("r2")
            ),
            MigrationEntry("0003_index", "0003_index.sql", sha("m3"), False),
        ),
        config_files=("config.py",),
    )


def test_round_trip() -> None:
    m = sample()
    text = m.to_json()
    assert loads(text) == m
    assert loads(text.encode()) == m
    assert loads(text).to_json() == text


def test_json_layout_is_the_contract() -> None:
    data = json.loads(sample().to_json())
    assert data["format"] == FORMAT == 1
    assert data["bases"] == ["1.0.4"]
    assert data["source"] == {
        "commit": "a" * 40,
        "since_commit": "b" * 40,
        "since_ref": "v1.0.4",
        "created": 1736154000,
    }
    assert data["config"]["app"]["root"] == "/srv/shop"
    first = data["files"][0]
    assert set(first) == {
        "path",
        "action",
        "sha256",
        "size",
        "mode",
        "preimage_sha256",
        "renamed_from",
        "link_target",
    }
    assert first["action"] == "modify" and first["mode"] == 0o755
    assert data["files"][3]["renamed_from"] == "static/old.js"
    assert data["migrations"][0] == {
        "id": "0002_stock",
        "file": "0002_stock.sql",
        "sha256": sha("m2"),
        "reversible": True,
        "rollback_file": "0002_stock.rollback.sql",
        "rollback_sha256": sha("r2"),
    }


def test_json_is_deterministic_and_utf8() -> None:
    text = sample().to_json()
    assert text == sample().to_json()
    assert text.endswith("}\n")
    assert "new name ü.js" in text  # not \u escaped
    keys = list(json.loads(text))
    assert keys == sorted(keys)


def test_counts() -> None:
    assert sample().counts() == {"add": 1, "modify": 1, "delete": 1, "rename": 1}


def test_ships_payload() -> None:
    assert [f.ships_payload for f in sample().files] == [True, True, False, True]


def _data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample().to_json())
    return data


def _set(data: dict[str, Any], where: str, value: Any) -> None:
    keys: list[Any] = [int(k) if k.isdigit() else k for k in where.split(".")]
    target: Any = data
    for k in keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("format", 2, "format 2 is not supported"),
        ("format", _DELETE, "format None is not supported"),
        ("package", _DELETE, "lacks 'package'"),
        ("version", 105, "manifest.version has the wrong type (int)"),
        ("full", "no", "manifest.full has the wrong type"),
        ("bases", [1], "bases must be version strings"),
        ("source", _DELETE, "lacks 'source'"),
        ("source.created", "today", "source.created has the wrong type"),
        ("files", {}, "manifest.files has the wrong type"),
        ("files.0", "bin/run", "files[0] is not an object"),
        ("files.0.path", "/etc/passwd", "files[0].path: unsafe path"),
        ("files.0.path", "../x", "files[0].path: unsafe path"),
        ("files.0.path", "bin//run", "path 'bin//run' is not normalised"),
        ("files.0.path", 5, "files[0].path is not a path"),
        ("files.0.action", "chmod", "files[0].action 'chmod' is unknown"),
        ("files.0.sha256", "abc", "files[0].sha256 is not a sha256"),
        ("files.0.sha256", "A" * 64, "files[0].sha256 is not a sha256"),
        ("files.0.preimage_sha256", None, "a modify needs preimage_sha256"),
        ("files.2.preimage_sha256", None, "a delete needs preimage_sha256"),
        ("files.0.mode", "755", "files[0].mode must be permission bits"),
        ("files.0.mode", True, "files[0].mode must be permission bits"),
        ("files.0.mode", 0o100644, "files[0].mode must be permission bits"),
        ("files.0.mode", 0o4755, "is setuid, setgid or world-writable"),
        ("files.0.mode", 0o2755, "is setuid, setgid or world-writable"),
        ("files.0.mode", 0o777, "is setuid, setgid or world-writable"),
        ("files.0.size", -1, "files[0].size must be a non-negative integer"),
        ("files.0.renamed_from", "bin/old", "renamed_from only goes with a rename"),
        ("files.3.renamed_from", None, "files[3].renamed_from is not a path"),
        ("files.3.renamed_from", "../static/old.js", "files[3].renamed_from: unsafe path"),
        ("files.1.link_target", "/etc/shadow", "symlink target '/etc/shadow' leaves the app root"),
        ("files.1.link_target", "../../x", "symlink target '../../x' leaves the app root"),
        ("files.3.path", "bin/run", "'bin/run' appears twice"),
        ("files.3.renamed_from", "old.css", "'old.css' appears twice"),
        ("migrations.0.id", 2, "migrations[0].id has the wrong type"),
        ("migrations.0.file", "sub/0002_stock.sql", "migration files live directly in migrations/"),
        ("migrations.0.file", "../0002_stock.sql", "migrations[0].file: unsafe path"),
        ("migrations.0.sha256", None, "migrations[0].sha256 is not a sha256"),
        ("migrations.0.reversible", "yes", "migrations[0].reversible has the wrong type"),
        ("migrations.0.rollback_file", "/tmp/x.sql", "rollback_file: unsafe path"),
        ("migrations.0.rollback_sha256", "0", "rollback_sha256 is not a sha256"),
        ("config_files", ["../etc/x"], "config_files: unsafe path"),
    ],
)
def test_invalid_manifests_are_refused(where: str, value: Any, expected: str) -> None:
    data = _data()
    _set(data, where, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(ManifestError) as info:
        loads(json.dumps(data))
    assert expected in str(info.value)


@pytest.mark.parametrize("text", ["", "{", "[]", '"x"', b"\xff\xfe"])
def test_not_json_or_not_an_object(text: str | bytes) -> None:
    with pytest.raises(ManifestError, match="update manifest"):
        loads(text)


def test_unknown_format_says_to_upgrade() -> None:
    data = _data()
    data["format"] = 99
    with pytest.raises(ManifestError) as info:
        loads(json.dumps(data))
    assert info.value.hint is not None and "upgrade nesop-deb" in info.value.hint


def test_a_full_install_manifest() -> None:
    m = Manifest(
        package="shop-update",
        version="1.0.0",
        bases=(),
        full=True,
        source_commit="c" * 40,
        since_commit=None,
        since_ref=None,
        builder_version="0.1.0",
        created=0,
        config=CONFIG,
        files=(FileEntry("a", Action.ADD, sha("a"), 1, 0o644, None),),
    )
    again = loads(m.to_json())
    assert again == m and again.full and again.bases == () and again.since_commit is None
