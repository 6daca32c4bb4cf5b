"""`nesop-deb publish` with the real aptly, gpg and gpgv, read back by a real apt client.

The apt client runs with its own state, lists, caches and sources under tmp_path: the host's apt
is neither read nor changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gpgkeys import Key, make_key
from .helpers import NESOP_DEB, Outcome, run_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("aptly") is None, reason="needs aptly (apt-get install aptly)"),
]

DEB_LINE = "deb [signed-by=/etc/apt/keyrings/nesop-deb.asc]"


@pytest.fixture
def key(tmp_path: Path) -> Iterator[Key]:
    made = make_key(tmp_path / "gpg", "nesop test repo <repo@example.com>")
    yield made
    made.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def make_deb(out: Path, version: str, body: str = "", name: str = "demo-update") -> Path:
    root = out.parent / f"build-{out.stem}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: A <a@example.com>\n"
        "Description: a package for the repository tests\n"
    )
    (root / f"usr/share/{name}").mkdir(parents=True)
    (root / f"usr/share/{name}/VERSION").write_text(version + body + "\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", root, out], check=True, capture_output=True)
    shutil.rmtree(root)
    return out


def run_publish(key: Key, env: dict[str, str], repo: Path, *args: str | Path) -> Outcome:
    return run_tool([NESOP_DEB, "publish", "--repo", repo, *args], {**env, "GNUPGHOME": str(key.home)})


def versions(repo: Path, suite: str = "bookworm") -> list[str]:
    packages = (repo / "dists" / suite / "main/binary-all/Packages").read_text()
    return sorted(line.split(": ", 1)[1] for line in packages.splitlines() if line.startswith("Version: "))


def served(repo: Path) -> dict[str, str]:
    """Every file of the repository but aptly's database, by content."""
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".aptly/db" not in str(p.relative_to(repo)) and p.name != "lock"
    }


def in_release_verifies(repo: Path, tmp_path: Path, suite: str = "bookworm") -> bool:
    ring = tmp_path / "check-key.gpg"
    armoured = repo / "nesop-deb-archive-keyring.asc"
    subprocess.run(
        ["gpg", "--batch", "--yes", "--dearmor", "--output", ring, armoured], check=True, capture_output=True
    )
    result = subprocess.run(
        ["gpgv", "--homedir", tmp_path, "--keyring", ring, repo / "dists" / suite / "InRelease"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


class AptClient:
    """apt-get with its own sources, state and caches below ``base``."""

    def __init__(self, base: Path, deb_line: str, key: Path) -> None:
        self.base = base
        for sub in ("lists/partial", "cache/archives/partial", "etc", "keyrings"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        keyring = base / "keyrings/nesop-deb.asc"
        shutil.copyfile(key, keyring)
        (base / "etc/sources.list").write_text(
            deb_line.replace("/etc/apt/keyrings/nesop-deb.asc", str(keyring)) + "\n"
        )
        (base / "status").write_text("")

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        options = {
            "Dir::State": self.base,
            "Dir::State::Lists": self.base / "lists",
            "Dir::State::status": self.base / "status",
            "Dir::Cache": self.base / "cache",
            "Dir::Etc::SourceList": self.base / "etc/sources.list",
            "Dir::Etc::SourceParts": "-",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "-",
            "APT::Sandbox::User": "root",
            "Debug::NoLocking": "1",
        }
        argv = ["apt-get", *[a for k, v in options.items() for a in ("-o", f"{k}={v}")], *args]
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)

    def installed(self, name: str, version: str) -> None:
        (self.base / "status").write_text(
            f"Package: {name}\nStatus: install ok installed\nArchitecture: all\nVersion: {version}\n"
            "Maintainer: A <a@example.com>\nDescription: x\n"
        )


def test_three_versions_are_kept_and_apt_installs_and_downgrades_from_them(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    debs = {v: make_deb(tmp_path / f"demo-update_{v}_all.deb", v) for v in ("1.0.4", "1.0.5", "1.0.6")}
    first = run_publish(key, env, repo, "--sign", "repo@example.com", "--suite", "bookworm", debs["1.0.4"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "added demo-update 1.0.4 (all) to bookworm"
    for version in ("1.0.5", "1.0.6"):
        outcome = run_publish(key, env, repo, debs[version])
        assert outcome.returncode == 0, outcome.stderr
    assert versions(repo) == ["1.0.4", "1.0.5", "1.0.6"]
    assert outcome.last_line == f"{DEB_LINE} file://{repo}/ bookworm main"
    assert f"key: {repo}/nesop-deb-archive-keyring.asc" in outcome.stdout
    assert os.stat(debs["1.0.6"]).st_nlink == 1  # aptly linked a copy, not the caller's file
    assert in_release_verifies(repo, tmp_path)

    apt = AptClient(tmp_path / "apt", outcome.last_line, repo / "nesop-deb-archive-keyring.asc")
    update = apt.run("update", "-o", "APT::Update::Error-Mode=any")
    assert update.returncode == 0, update.stdout + update.stderr
    listed = apt.run("install", "--simulate", "demo-update=1.0.6")
    assert listed.returncode == 0, listed.stderr
    assert "Inst demo-update (1.0.6 " in listed.stdout
    apt.installed("demo-update", "1.0.6")
    down = apt.run("install", "--simulate", "--allow-downgrades", "demo-update=1.0.4")
    assert down.returncode == 0, down.stderr
    assert "Inst demo-update [1.0.6] (1.0.4 " in down.stdout
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    download = apt.run("download", "demo-update=1.0.4", cwd=fetched)
    assert download.returncode == 0, download.stderr
    assert (fetched / "demo-update_1.0.4_all.deb").read_bytes() == debs["1.0.4"].read_bytes()


def test_apt_refuses_the_repository_with_another_key(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    outcome = run_publish(key, env, repo, "--sign", key.fingerprint, "--suite", "bookworm",
                          make_deb(tmp_path / "a.deb", "1.0.4"))  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    other = make_key(tmp_path / "gpg-other", "Someone Else <else@example.com>")
    try:
        apt = AptClient(
            tmp_path / "apt", outcome.last_line, other.export(tmp_path / "other.asc", armour=True)
        )
    finally:
        other.close()
    update = apt.run("update", "-o", "APT::Update::Error-Mode=any")
    assert update.returncode == 100
    assert "NO_PUBKEY" in update.stdout + update.stderr


def test_publishing_the_same_file_again_changes_nothing(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    deb = make_deb(tmp_path / "a.deb", "1.0.5")
    assert run_publish(key, env, repo, "--sign", key.fingerprint, "--suite", "bookworm", deb).returncode == 0
    before = served(repo)
    again = run_publish(key, env, repo, deb)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "already there: demo-update 1.0.5 (all) in bookworm"
    assert served(repo) == before


def test_other_content_under_a_published_version_is_refused_and_changes_nothing(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    published = make_deb(tmp_path / "a.deb", "1.0.5")
    assert (
        run_publish(key, env, repo, "--sign", key.fingerprint, "--suite", "bookworm", published).returncode
        == 0
    )
    before = served(repo)
    other = make_deb(tmp_path / "b.deb", "1.0.5", body=" rebuilt")
    outcome = run_publish(key, env, repo, other)
    assert outcome.returncode == 3
    assert outcome.stderr == (
        f"nesop-deb: error: {other}: demo-update 1.0.5 (all) is already published with other content; "
        "build a new version; servers that installed the published one would never get this one\n"
    )
    assert served(repo) == before
    assert versions(repo) == ["1.0.5"]


def test_a_failed_signing_leaves_the_old_publish_valid(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    first = run_publish(key, env, repo, "--sign", key.fingerprint, "--suite", "bookworm",
                        make_deb(tmp_path / "a.deb", "1.0.4"))  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = served(repo)
    # the key expires (gpg's clock moves on): it is still listed, but gpg cannot sign with it
    key.close()
    subprocess.run(
        ["gpg", "--batch", "--quick-set-expire", key.fingerprint, "2030-01-01"],
        env=key.env, capture_output=True, check=True,
    )  # fmt: skip
    (key.home / "gpg.conf").write_text("faked-system-time 20991231T000000\n")
    outcome = run_publish(key, env, repo, make_deb(tmp_path / "b.deb", "1.0.5"))
    assert outcome.returncode == 1
    assert "publishing bookworm failed, nothing of it changed: ERROR: unable to publish" in outcome.stderr
    assert "gpg: signing failed" in outcome.stderr
    assert served(repo) == before  # no Release.tmp, no new pool file, the same indexes and state
    assert versions(repo) == ["1.0.4"]
    assert in_release_verifies(repo, tmp_path)
    (key.home / "gpg.conf").unlink()
    subprocess.run(["gpg", "--batch", "--quick-set-expire", key.fingerprint, "0"],
                   env=key.env, capture_output=True, check=True)  # fmt: skip
    retry = run_publish(key, env, repo, tmp_path / "b.deb")
    assert retry.returncode == 0, retry.stderr
    assert versions(repo) == ["1.0.4", "1.0.5"]
    assert in_release_verifies(repo, tmp_path)


def test_a_repository_without_a_key_is_refused(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    outcome = run_publish(key, env, repo, "--suite", "bookworm", make_deb(tmp_path / "a.deb", "1.0.4"))
    assert outcome.returncode == 3
    assert outcome.stderr.startswith(f"nesop-deb: error: {repo}: no signing key for this repository; ")
    assert "gpg --quick-gen-key" in outcome.stderr
    assert not repo.exists()


def test_every_suite_gets_the_update_and_each_release_its_toolchain(
    key: Key, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    update = make_deb(tmp_path / "u.deb", "1.0.5")
    first = run_publish(
        key, env, repo, "--sign", key.fingerprint, "--suite", "bookworm", "--suite", "trixie", update
    )
    assert first.returncode == 0, first.stderr
    toolchain = tmp_path / "t.deb"
    root = tmp_path / "t"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: nesop-deb\nVersion: 0.1.0+deb13u1\nArchitecture: amd64\nMaintainer: A <a@example.com>\n"
        "Description: toolchain\n"
    )
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", root, toolchain], check=True, capture_output=True)
    outcome = run_publish(key, env, repo, toolchain)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.splitlines()[0] == "added nesop-deb 0.1.0+deb13u1 (amd64) to trixie"
    assert outcome.stdout.splitlines()[-2:] == [
        f"{DEB_LINE} file://{repo}/ bookworm main",
        f"{DEB_LINE} file://{repo}/ trixie main",
    ]
    amd64 = {
        s: (repo / "dists" / s / "main/binary-amd64/Packages").read_text() for s in ("bookworm", "trixie")
    }
    assert "Package: nesop-deb\n" in amd64["trixie"] and "Package: nesop-deb\n" not in amd64["bookworm"]
    assert all("Package: demo-update\n" in text for text in amd64.values())
    assert in_release_verifies(repo, tmp_path, "bookworm") and in_release_verifies(repo, tmp_path, "trixie")
