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
        # names and versions the runtime passes to dpkg, apt and its logs
        ("package", "Shop_Update", "package 'Shop_Update' is not a valid Debian package name"),
        ("package", "shop-update\n", "package 'shop-update\\n' is not a valid Debian package name"),
        ("package", "../../etc", "is not a valid Debian package name"),
        ("version", "1.0 5", "version '1.0 5' is not a valid Debian version"),
        ("version", "1.0.5\n", "version '1.0.5\\n' is not a valid Debian version"),
        ("version", "abc", "version 'abc' is not a valid Debian version"),
        ("bases", ["1.0.4; rm -rf /"], "bases entry '1.0.4; rm -rf /' is not a valid Debian version"),
        # control characters, in every path the runtime reads (C0, DEL and C1 alike)
        (
            "files.0.path",
            "bin/r\x1b[2Jun",
            "files[0].path: unsafe path: 'bin/r\\x1b[2Jun' contains the control",
        ),
        ("files.0.path", "bin/run\t", "contains the control character '\\t'"),
        ("files.0.path", "bin/run\x7f", "contains the control character '\\x7f'"),
        ("files.0.path", "bin/run\x9b", "contains the control character '\\x9b'"),
        ("files.3.renamed_from", "static/old\n.js", "files[3].renamed_from: unsafe path"),
        ("files.1.link_target", "releases/v2\x07", "symlink target 'releases/v2\\x07' contains a control"),
        ("migrations.0.file", "0002_st\x1bock.sql", "migrations[0].file: unsafe path"),
        ("migrations.0.rollback_file", "0002_stock.rollback\r.sql", "rollback_file: unsafe path"),
        ("config_files", ["config\x1b.py"], "config_files: unsafe path"),
        ("config.files.config", ["config.py\x00"], "config.files.config[0]: unsafe path"),
        ("config.files.config", ["/etc/passwd"], "config.files.config[0]: unsafe path"),
        ("config.files.config", "config.py", "config.files.config is not a list of paths"),
        ("config.app.unit_file", "deploy/shop\x1b.service", "config.app.unit_file: unsafe path"),
        ("config.app.unit_file", "/etc/systemd/system/x.service", "config.app.unit_file: unsafe path"),
        ("config.app.unit_file", 5, "config.app.unit_file is not a path"),
        # migrations are SQL, named after their id
        (
            "migrations.0.file",
            "0002_stock.py",
            "migrations[0].file '0002_stock.py': only SQL migrations (.sql)",
        ),
        ("migrations.0.rollback_file", "0002_stock.rollback.py", "only SQL migrations (.sql) are supported"),
        ("migrations.0.file", "0009_other.sql", "migrations[0].file '0009_other.sql' does not match the id"),
        (
            "migrations.0.rollback_file",
            "0003_index.rollback.sql",
            "rollback_file '0003_index.rollback.sql' does",
        ),
        # how long an update waits for the app
        ("config.health.timeout", float("nan"), "config.health.timeout nan must be a number of seconds"),
        ("config.health.timeout", float("inf"), "config.health.timeout inf must be"),
        ("config.health.timeout", float("-inf"), "config.health.timeout -inf must be"),
        ("config.health.timeout", -1, "config.health.timeout -1 must be"),
        ("config.health.timeout", 0, "config.health.timeout 0 must be"),
        ("config.health.timeout", 3600.5, "above 0 and at most 3600"),
        ("config.health.timeout", "60", "config.health.timeout '60' must be"),
        ("config.health.timeout", True, "config.health.timeout True must be"),
        ("config.health", [], "config.health is not an object"),
        # who and where root works
        ("config.app.root", "/etc", "config.app.root '/etc' must be an absolute"),
        ("config.app.root", "/etc/shop", "config.app.root '/etc/shop' is a system directory"),
        ("config.app.root", "/usr/local/shop", "is a system directory"),
        ("config.app.root", "/var/lib/dpkg/info", "is a system directory"),
        ("config.app.root", "opt/shop", "must be an absolute"),
        ("config.app.root", "/opt/../etc/x", "must be an absolute"),
        ("config.app.root", "/opt/shop/", "must be an absolute"),
        ("config.app.root", "/opt/sh\x1bop", "contains a control character"),
        ("config.app.root", 5, "config.app.root 5 is not a path"),
        ("config.app.user", "../root", "config.app.user '../root' is not a valid account name"),
        ("config.app.group", "Root Group", "is not a valid account name"),
        ("config.app.service", "shop.service; rm -rf /", "is not a systemd service name"),
        ("config.app.service", "shop", "is not a systemd service name"),
        ("config.app.name", "../shop", "is not a valid app name"),
    ],
)
def test_invalid_manifests_are_refused(where: str, value: Any, expected: str) -> None:
    data = _data()
    _set(data, where, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(ManifestError) as info:
        loads(json.dumps(data))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("config.health.timeout", 0.5),
        ("config.health.timeout", 3600),
        ("config.health", {}),  # the runtime's default applies
        ("config.app.unit_file", "deploy/shop.service"),
        ("config.app.root", "/srv/www/shop"),
        ("config.app.user", "www-data"),
        ("version", "2:1.0.5~rc1-3"),
        ("bases", ["1.0.4", "1.0.4+hotfix1"]),
    ],
)
def test_valid_edges_are_accepted(where: str, value: Any) -> None:
    data = _data()
    _set(data, where, copy.deepcopy(value))
    m = loads(json.dumps(data))
    assert m.package == "shop-update"


def test_a_control_character_in_an_error_is_escaped() -> None:
    data = _data()
    data["files"][0]["path"] = "x\x1b]0;owned\x07"
    with pytest.raises(ManifestError) as info:
        loads(json.dumps(data))
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)  # quoted with repr()


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


def test_a_chain_of_links_that_leaves_the_root_is_refused() -> None:
    """Each link stays inside on its own; through each other they reach the root's parent."""
    data = json.loads(sample().to_json())
    link = {"action": "add", "sha256": "a" * 64, "size": 2, "mode": 0o644, "preimage_sha256": None,
            "renamed_from": None}  # fmt: skip
    data["files"] += [
        {**link, "path": "static/a", "link_target": ".."},
        {**link, "path": "static/b", "link_target": "a/.."},
    ]
    with pytest.raises(
        ManifestError, match=r"symlink static/b -> a/\.\. leaves the app root through other links"
    ):
        loads(json.dumps(data))
