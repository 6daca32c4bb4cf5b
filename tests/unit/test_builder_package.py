"""The package's file tree, written from a plan made of plain data (no git, no dpkg-deb)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from debian.changelog import Changelog
from debian.deb822 import Deb822

from nesop_deb import __version__
from nesop_deb.builder.git import Commit
from nesop_deb.builder.package import deb_name, write_tree
from nesop_deb.builder.plan import BuildPlan
from nesop_deb.config import loads as config_loads
from nesop_deb.manifest import Action, FileEntry, Manifest, MigrationEntry
from nesop_deb.manifest import loads as manifest_loads
from nesop_deb.render import render
from nesop_deb.shims import MAINTAINER_SCRIPTS

EPOCH = 1736240400
CONFIG = config_loads(
    """
[app]
name = "shop"
root = "/srv/shop"
writable = ["data"]
[package]
maintainer = "Shop Ops <ops@shop.example>"
[migrations]
database = "sqlite:////srv/shop/data/shop.db"
"""
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_plan(files: dict[str, tuple[bytes, int]], *, version: str = "1.0.1", extra: int = 0) -> BuildPlan:
    entries = [
        FileEntry(p, Action.MODIFY, sha(d), len(d), mode, sha(b"old " + d)) for p, (d, mode) in files.items()
    ]
    entries.append(FileEntry("current", Action.ADD, sha(b"static"), 6, 0o644, None, None, "static"))
    entries.append(FileEntry("gone.css", Action.DELETE, None, 0, None, sha(b"gone")))
    entries += [FileEntry(f"many/f{i:03}.txt", Action.ADD, sha(b"x"), 1, 0o644, None) for i in range(extra)]
    migration = MigrationEntry(
        "0002_stock", "0002_stock.sql", sha(b"m"), True, "0002_stock.rollback.sql", sha(b"r")
    )
    manifest = Manifest(
        package="shop-update",
        version=version,
        bases=("1.0.0",),
        full=False,
        source_commit="a" * 40,
        since_commit="b" * 40,
        since_ref="v1.0.0",
        builder_version=__version__,
        created=EPOCH,
        config=CONFIG.to_dict(),
        files=tuple(sorted(entries, key=lambda e: e.path)),
        migrations=(migration,),
    )
    payload = {p: d for p, (d, _) in files.items()}
    payload["current"] = b"static"
    payload.update({f"many/f{i:03}.txt": b"x" for i in range(extra)})
    commits = [  # as git log lists them: newest first
        Commit("2" * 40, "Ann", "ann@example.com", EPOCH, "Add stock"),
        Commit("1" * 40, "Ann", "ann@example.com", EPOCH - 10, "Fix the cart total"),
    ]
    return BuildPlan(
        CONFIG,
        manifest,
        payload,
        {"0002_stock.sql": b"m", "0002_stock.rollback.sql": b"r"},
        commits,
        EPOCH,
    )


FILES = {"server.py": (b"print('v2')\n", 0o644), "bin/run": (b"#!/bin/sh\nexec true\n", 0o755)}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def tree(tmp_path: Path, plan: BuildPlan, mask: int = 0o022) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    with umask(mask):
        write_tree(plan, root)
    return root


def test_layout(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
    assert found == [
        "DEBIAN/control",
        "DEBIAN/md5sums",
        "DEBIAN/postinst",
        "DEBIAN/postrm",
        "DEBIAN/preinst",
        "DEBIAN/prerm",
        "usr/share/doc/shop-update/changelog.gz",
        "usr/share/doc/shop-update/copyright",
        "usr/share/lintian/overrides/shop-update",
        "usr/share/shop-update/migrations/0002_stock.rollback.sql",
        "usr/share/shop-update/migrations/0002_stock.sql",
        "usr/share/shop-update/payload/bin/run",
        "usr/share/shop-update/payload/current",
        "usr/share/shop-update/payload/server.py",
        "usr/share/shop-update/update_manifest.json",
    ]
    share = root / "usr/share/shop-update"
    assert (share / "payload/server.py").read_bytes() == b"print('v2')\n"
    assert (share / "payload/current").is_symlink()
    assert os.readlink(share / "payload/current") == "static"
    assert not (share / "payload/gone.css").exists()
    assert manifest_loads((share / "update_manifest.json").read_text()) == make_plan(FILES).manifest


def test_modes_and_mtimes_ignore_the_umask(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES), mask=0o077)
    modes = {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink()
    }
    assert modes["usr/share/shop-update/payload/bin/run"] == 0o755
    assert modes["usr/share/shop-update/payload/server.py"] == 0o644
    assert modes["usr/share/shop-update/update_manifest.json"] == 0o644
    for script in MAINTAINER_SCRIPTS:
        assert modes[f"DEBIAN/{script}"] == 0o755
    assert modes["DEBIAN/control"] == modes["DEBIAN/md5sums"] == 0o644
    assert all(mode == 0o755 for p, mode in modes.items() if (root / p).is_dir())
    assert {p.lstat().st_mtime for p in [root, *root.rglob("*")]} == {EPOCH}


def test_md5sums_cover_every_regular_file_outside_debian(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    lines = (root / "DEBIAN/md5sums").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    regular = {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.relative_to(root).as_posix().startswith("DEBIAN")
    }
    assert listed == regular
    assert lines == sorted(lines, key=lambda ln: ln.split("  ", 1)[1])


def test_control(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    ctl = Deb822((root / "DEBIAN/control").read_text())
    assert ctl["Package"] == "shop-update"
    assert ctl["Version"] == "1.0.1"
    assert ctl["Architecture"] == "all"
    assert ctl["Maintainer"] == "Shop Ops <ops@shop.example>"
    assert ctl["Pre-Depends"] == f"nesop-deb (>= {__version__}), python3"
    assert ctl["Section"] == "admin" and ctl["Priority"] == "optional"
    assert int(ctl["Installed-Size"]) > 0
    synopsis, *body = ctl["Description"].split("\n")
    assert synopsis == "update of shop to 1.0.1 (from 1.0.0)"
    text = "\n".join(body)
    for path in ("bin/run", "server.py", "current", "gone.css"):
        assert path in text
    assert "migration 0002_stock" in text
    assert all(len(line) <= 80 for line in body)


def test_long_descriptions_are_cut(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES, extra=100))
    description = Deb822((root / "DEBIAN/control").read_text())["Description"]
    assert "many/f000.txt" in description
    assert "many/f099.txt" not in description
    assert "... and " in description.splitlines()[-1]


def test_changelog_is_gzip_without_name_or_time(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    raw = (root / "usr/share/doc/shop-update/changelog.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\0\0\0\0"  # MTIME
    assert raw[3] & 0x08 == 0  # no FNAME
    changelog = Changelog(gzip.decompress(raw).decode())
    assert changelog.package == "shop-update" and str(changelog.version) == "1.0.1"
    text = str(changelog)
    assert "Fix the cart total (1111111111)" in text and "Add stock (2222222222)" in text
    assert text.index("Fix the cart total") < text.index("Add stock")  # oldest first
    assert "Shop Ops <ops@shop.example>" in text
    assert "Tue, 07 Jan 2025 09:00:00 +0000" in text


def test_scripts(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    for script in ("preinst", "postinst", "prerm"):
        text = (root / "DEBIAN" / script).read_text()
        assert text.startswith("#!/usr/bin/python3 -I\n")
        assert f'SCRIPT = "{script}"' in text and 'PACKAGE = "shop-update"' in text
        assert 'VERSION = "1.0.1"' in text
        compile(text, script, "exec")
    postrm = (root / "DEBIAN/postrm").read_text()
    assert postrm.startswith("#!/bin/sh\n") and "/var/lib/shop-update" in postrm


DEFAULT_RUNTIME = Path("/opt/venvs/nesop-deb/bin/python3")


def _shim(tmp_path: Path, script: str) -> list[str]:
    """A maintainer script as the builder renders it, and how dpkg would run it."""
    template = "postrm.sh.j2" if script == "postrm" else "maintscript.py.j2"
    text = render(template, builder_version=__version__, script=script, package="shop-update",
                  version="1.0.1", manifest="")  # fmt: skip
    path = tmp_path / script
    path.write_text(text)
    path.chmod(0o755)
    action = ["remove"] if script == "postrm" else ["upgrade", "1.0.0"]
    return ["sh", str(path), *action] if script == "postrm" else [str(path), *action]  # its own #! line


@pytest.mark.skipif(DEFAULT_RUNTIME.exists(), reason="a shim run here would reach the installed runtime")
@pytest.mark.parametrize("script", ["preinst", "postrm"])
def test_nothing_in_apt_s_environment_chooses_root_s_interpreter(tmp_path: Path, script: str) -> None:
    """The shims run the runtime they name: an environment variable (sudo -E passes a user's on)
    can neither pick another interpreter nor put code in front of the shim's own imports."""
    ran = tmp_path / "ran"
    fake = tmp_path / "fake-runtime"
    fake.write_text(f'#!/bin/sh\necho "$@" > {ran}\n')
    fake.chmod(0o755)
    (tmp_path / "sitecustomize.py").write_text(f"open({str(ran)!r}, 'w').write('sitecustomize')\n")
    env = {
        "PATH": os.environ["PATH"],
        "NESOP_DEB_RUNTIME": str(fake),
        "NESOP_DEB_TEST_RUNTIME_OPT_IN": "1",
        "PYTHONPATH": str(tmp_path),
    }
    result = subprocess.run(_shim(tmp_path, script), env=env, capture_output=True, text=True, check=False)
    assert not ran.exists(), result.stderr
    if script == "postrm":
        assert result.returncode == 0  # no runtime: remove leaves the app as it is
    else:
        assert result.returncode == 1
        assert f"the nesop-deb runtime ({DEFAULT_RUNTIME}) is missing" in result.stderr


def test_copyright_and_overrides(tmp_path: Path) -> None:
    root = tree(tmp_path, make_plan(FILES))
    text = (root / "usr/share/doc/shop-update/copyright").read_text()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert "Copyright: 2025 Shop Ops <ops@shop.example>" in text and "a" * 40 in text
    overrides = (root / "usr/share/lintian/overrides/shop-update").read_text().splitlines()
    tags = [line for line in overrides if line and not line.startswith("#")]
    assert tags and all(t.startswith("shop-update: ") for t in tags)


def test_the_same_plan_writes_the_same_tree(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, tuple[int, float, bytes]]:
        return {
            p.relative_to(root).as_posix(): (
                p.lstat().st_mode,
                p.lstat().st_mtime,
                os.readlink(p).encode() if p.is_symlink() else (b"" if p.is_dir() else p.read_bytes()),
            )
            for p in sorted(root.rglob("*"))
        }

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tree(tmp_path / "a", make_plan(FILES))
    second = tree(tmp_path / "b", make_plan(FILES), mask=0o027)
    assert snapshot(first) == snapshot(second)


def test_deb_name_drops_the_epoch() -> None:
    assert deb_name(make_plan(FILES)) == "shop-update_1.0.1_all.deb"
    assert deb_name(make_plan(FILES, version="2:1.0.1-3")) == "shop-update_1.0.1-3_all.deb"
