"""`nesop-deb inspect`, `verify` (on good and tampered packages) and `init` (through to `make deb`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.config import load as load_config

from .conftest import Built
from .helpers import BIN, NESOP_DEB, Repo, control_fields, package_manifest, run_tool

pytestmark = pytest.mark.integration


def repack(deb: Path, work: Path, change: Callable[[Path], None]) -> Path:
    """Unpack ``deb`` with dpkg-deb, let ``change`` edit the tree, pack it again."""
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", deb, tree], check=True)
    change(tree)
    out = work / deb.name
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, out], check=True, capture_output=True)
    return out


def test_inspect_text(built: Callable[..., Built], session_env: dict[str, str]) -> None:
    b = built("v1.0.3")
    outcome = run_tool([NESOP_DEB, "inspect", b.deb], session_env)
    assert outcome.returncode == 0, outcome.stderr
    manifest, _ = package_manifest(b.deb, b.package)
    lines = outcome.stdout.splitlines()
    assert lines[0].split() == ["package:", b.package, b.version]
    assert lines[1].split() == ["applies", "to:", "1.0.2"]
    assert "/opt/nesop-store" in outcome.stdout and "nesop-store.service" in outcome.stdout
    assert manifest["source"]["commit"] in outcome.stdout
    assert control_fields(b.deb)["Pre-Depends"] in outcome.stdout
    for f in manifest["files"]:
        assert any(line.split()[:2] == [f["action"], f["path"]] for line in lines), f["path"]
    for m in manifest["migrations"]:
        assert any(line.strip().startswith(f"{m['id']}  reversible") for line in lines)
    assert lines[-1].split() == ["scripts:", "postinst,", "postrm,", "preinst,", "prerm"]


def test_inspect_json_is_the_manifest(built: Callable[..., Built], session_env: dict[str, str]) -> None:
    b = built("v1.0.2")
    outcome = run_tool([NESOP_DEB, "inspect", "--json", b.deb], session_env)
    assert outcome.returncode == 0, outcome.stderr
    _, inside = package_manifest(b.deb, b.package)
    assert json.loads(outcome.stdout) == json.loads(inside)
    assert outcome.stdout == inside.decode()


def test_inspect_full_install(built: Callable[..., Built], session_env: dict[str, str]) -> None:
    outcome = run_tool([NESOP_DEB, "inspect", built("v1.0.0", "--full").deb], session_env)
    assert outcome.returncode == 0
    assert "applies to: any (full install)" in outcome.stdout


def test_verify_a_good_package(built: Callable[..., Built], session_env: dict[str, str]) -> None:
    for b in (built("v1.0.3"), built("v1.0.0", "--full")):
        outcome = run_tool([NESOP_DEB, "verify", b.deb], session_env)
        assert outcome.returncode == 0, outcome.stderr
        manifest, _ = package_manifest(b.deb, b.package)
        shipped = sum(1 for f in manifest["files"] if f["action"] != "delete")
        migrations = len(manifest["migrations"])
        assert (
            outcome.last_line
            == f"{b.deb}: ok ({shipped} payload files, {migrations} migrations match the manifest)"
        )


def _append(rel: str) -> Callable[[Path], None]:
    def change(tree: Path) -> None:
        path = tree / rel
        path.write_bytes(path.read_bytes() + b"\n# injected\n")

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_append("usr/share/nesop-store-update/payload/store.py"), "store.py: sha256 does not match"),
        (
            lambda t: (t / "usr/share/nesop-store-update/payload/extra.py").write_text("evil()\n"),
            "extra.py: in the payload but not in the manifest",
        ),
        (
            lambda t: (t / "usr/share/nesop-store-update/payload/store.py").unlink(),
            "store.py: missing from the payload",
        ),
        (
            _append("usr/share/nesop-store-update/migrations/0002_product_stock.sql"),
            "migration 0002_product_stock.sql: sha256 does not match",
        ),
    ],
    ids=["edited", "added", "removed", "migration"],
)
def test_verify_a_tampered_package(
    built: Callable[..., Built],
    session_env: dict[str, str],
    tmp_path: Path,
    change: Callable[[Path], None],
    problem: str,
) -> None:
    b = built("v1.0.3")
    tampered = repack(b.deb, tmp_path, change)
    outcome = run_tool([NESOP_DEB, "verify", tampered], session_env)
    assert outcome.returncode == 1, outcome
    lines = outcome.error_lines
    assert f"{tampered}: {problem}" in lines[0]
    assert lines[-1] == f"nesop-deb: error: {tampered}: 1 problem(s) found; do not install this package"
    assert "ok (" not in outcome.stdout


def test_inspect_and_verify_refuse_what_is_not_an_update(tmp_path: Path, session_env: dict[str, str]) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"!<arch>\nnot really\n")
    for command in ("inspect", "verify"):
        outcome = run_tool([NESOP_DEB, command, junk], session_env)
        assert outcome.returncode == 2
        assert outcome.error_lines == [outcome.stderr.strip()]
        assert outcome.stderr.startswith(f"nesop-deb: error: {junk}: not a Debian package")
        missing = run_tool([NESOP_DEB, command, tmp_path / "nope.deb"], session_env)
        assert missing.returncode == 2 and "nope.deb: no such file" in missing.stderr


def _edit_manifest(package: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(tree: Path) -> None:
        path = tree / f"usr/share/{package}/update_manifest.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def test_inspect_escapes_what_the_package_says(
    built: Callable[..., Built], session_env: dict[str, str], tmp_path: Path
) -> None:
    b = built("v1.0.3")
    # a title change, a bell and a screen clear hidden in a field inspect prints
    hostile = "v1.0.2\x1b]0;owned\x07\x1b[2J"
    deb = repack(b.deb, tmp_path, _edit_manifest(b.package, lambda d: d["source"].update(since_ref=hostile)))
    outcome = run_tool([NESOP_DEB, "inspect", deb], session_env)
    assert outcome.returncode == 0, outcome.stderr
    assert "\x1b" not in outcome.stdout and "\x07" not in outcome.stdout
    assert " since v1.0.2\\x1b]0;owned\\x07\\x1b[2J\n" in outcome.stdout


def test_inspect_refuses_a_control_character_in_a_manifest_path(
    built: Callable[..., Built], session_env: dict[str, str], tmp_path: Path
) -> None:
    b = built("v1.0.3")

    def change(data: dict[str, Any]) -> None:
        data["files"][0]["path"] += "\x1b[2J"

    deb = repack(b.deb, tmp_path, _edit_manifest(b.package, change))
    for command in ("inspect", "verify"):
        outcome = run_tool([NESOP_DEB, command, deb], session_env)
        assert outcome.returncode == 2, outcome
        assert outcome.error_lines == [outcome.stderr.strip()]
        line = outcome.error_lines[0]
        assert line.startswith(f"nesop-deb: error: {deb}: update manifest: files[0].path: unsafe path: "), (
            line
        )
        assert "contains the control character '\\x1b'" in line and "\x1b" not in line
        assert outcome.stdout == ""


def test_inspect_refuses_a_package_that_is_not_an_update(tmp_path: Path, session_env: dict[str, str]) -> None:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: hello\nVersion: 1.0\nArchitecture: all\nMaintainer: A <a@b.c>\nDescription: hi\n"
    )
    deb = tmp_path / "hello.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, deb], check=True, capture_output=True)
    outcome = run_tool([NESOP_DEB, "inspect", deb], session_env)
    assert outcome.returncode == 2
    assert "not a nesop-deb update package" in outcome.stderr


# --- init ------------------------------------------------------------------------------------


def test_init_writes_a_valid_config_and_make_deb_builds(
    make_repo: Callable[..., Repo], env: dict[str, str], tmp_path: Path
) -> None:
    repo = make_repo("my_app", config=None)
    outcome = run_tool(
        [
            NESOP_DEB,
            "init",
            "-C",
            repo.path,
            "--maintainer",
            "Dev Team <dev@example.com>",
            "--user",
            "www-data",
        ],
        env,
    )
    assert outcome.returncode == 0, outcome.stderr
    config_file = repo.path / "nesop-deb.toml"
    assert sorted(p.name for p in repo.path.iterdir() if p.name != ".git") == [
        ".gitignore",
        "Makefile",
        "nesop-deb.mk",
        "nesop-deb.toml",
    ]
    assert (repo.path / ".gitignore").read_text() == "/dist/\n"  # the packages are not committed
    raw = tomllib.loads(config_file.read_text())
    assert raw["app"]["name"] == "my-app" and raw["app"]["root"] == "/opt/my-app"
    assert raw["app"]["user"] == "www-data"
    assert raw["package"]["maintainer"] == "Dev Team <dev@example.com>"
    config = load_config(config_file)
    assert config.package.name == "my-app-update"
    assert (repo.path / "Makefile").read_text() == "include nesop-deb.mk\n"
    assert "\ndeb:\n\t$(strip $(NESOP_DEB) build " in (repo.path / "nesop-deb.mk").read_text()

    # a second init keeps what is there, unless forced
    again = run_tool([NESOP_DEB, "init", "-C", repo.path, "--name", "other"], env)
    assert again.returncode == 2
    assert again.error_lines == [
        f"nesop-deb: error: {config_file} already exists; edit it, or pass --force to overwrite it"
    ]
    assert tomllib.loads(config_file.read_text())["app"]["name"] == "my-app"
    forced = run_tool(
        [
            NESOP_DEB,
            "init",
            "-C",
            repo.path,
            "--name",
            "my-app",
            "--force",
            "--maintainer",
            "Dev <dev@example.com>",
        ],
        env,
    )
    assert forced.returncode == 0, forced.stderr
    assert tomllib.loads(config_file.read_text())["package"]["maintainer"] == "Dev <dev@example.com>"

    # the app, committed and tagged: `make deb-full` then `make deb` build packages
    repo.write("app.py", "print('hello')\n")
    repo.write("templates/index.html", "<p>hello</p>\n")
    repo.commit("My app 1.0.0", tag="v1.0.0")
    make_env = {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MAKEFLAGS": ""}
    make = shutil.which("make")
    assert make is not None
    first = run_tool([make, "deb-full"], make_env, cwd=repo.path)
    assert first.returncode == 0, first.stdout + first.stderr
    full = repo.path / "dist/full/my-app-update_1.0.0_all.deb"
    assert first.last_line == str(full) and full.is_file()
    manifest, _ = package_manifest(full, "my-app-update")
    assert manifest["full"] is True
    assert {f["path"] for f in manifest["files"]} == {"app.py", "templates/index.html"}

    repo.write("app.py", "print('hello again')\n")
    repo.commit("My app 1.0.1", tag="v1.0.1")
    second = run_tool([make, "deb"], make_env, cwd=repo.path)
    assert second.returncode == 0, second.stdout + second.stderr
    update = repo.path / "dist/my-app-update_1.0.1_all.deb"
    assert second.last_line == str(update)
    manifest, _ = package_manifest(update, "my-app-update")
    assert manifest["bases"] == ["1.0.0"] and [f["path"] for f in manifest["files"]] == ["app.py"]
    assert control_fields(update)["Maintainer"] == "Dev <dev@example.com>"


def test_init_keeps_an_existing_makefile(make_repo: Callable[..., Repo], env: dict[str, str]) -> None:
    repo = make_repo("app", config=None)
    (repo.path / "Makefile").write_text("all:\n\t@true\n")
    outcome = run_tool([NESOP_DEB, "init", "-C", repo.path, "--maintainer", "A <a@b.c>"], env)
    assert outcome.returncode == 0, outcome.stderr
    assert (repo.path / "Makefile").read_text() == "all:\n\t@true\n"
    assert "add `include nesop-deb.mk`" in outcome.stdout


def test_init_takes_the_maintainer_from_the_repository(
    make_repo: Callable[..., Repo], env: dict[str, str], tmp_path: Path
) -> None:
    repo = make_repo("app", config=None)
    repo.git("config", "user.name", "Repo Owner")
    repo.git("config", "user.email", "owner@example.com")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outcome = run_tool([NESOP_DEB, "init", "-C", repo.path], env, cwd=elsewhere)
    assert outcome.returncode == 0, outcome.stderr
    config = load_config(repo.path / "nesop-deb.toml")
    assert config.package.maintainer == "Repo Owner <owner@example.com>"
    assert config.app.name == "app"


def test_init_falls_back_to_debian_variables(make_repo: Callable[..., Repo], env: dict[str, str]) -> None:
    repo = make_repo("app", config=None)
    outcome = run_tool(
        [NESOP_DEB, "init", "-C", repo.path],
        {**env, "DEBFULLNAME": "Deb Packager", "DEBEMAIL": "deb@example.com"},
    )
    assert outcome.returncode == 0, outcome.stderr
    assert load_config(repo.path / "nesop-deb.toml").package.maintainer == "Deb Packager <deb@example.com>"
