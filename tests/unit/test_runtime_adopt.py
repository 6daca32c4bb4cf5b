"""An app deployed by hand, before its first package: found from its config, adopted, checked
file by file; and its first update afterwards works as on a server never adopted."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nesop_deb.errors import ConfigError, RefusedError, UsageError
from nesop_deb.runtime import adopt, apps, backup, lock, manual, operations, state, validate
from nesop_deb.runtime.context import AppSettings
from tests.unit.runtime_fixtures import (
    APP,
    APP_ROOT,
    DB_REL,
    PACKAGE,
    UNIT,
    USER,
    Server,
    fake_server,
    install_base,
    release_101,
)

CONFIG = f"""\
[app]
name = "{APP}"
root = "{APP_ROOT}"
user = "{USER}"
group = "{USER}"
service = "{UNIT}"
writable = ["data", "uploads"]

[package]
name = "{PACKAGE}"
maintainer = "Demo <ops@example.com>"

[files]
config = ["config.py"]

[migrations]
database = "sqlite:///{APP_ROOT}/{DB_REL}"

[health]
timeout = 2
"""


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from fake_server(tmp_path, monkeypatch)


@pytest.fixture
def deployed(server: Server) -> Server:
    """1.0.0 deployed by hand, its data directories named as the config names them."""
    server.settings["app"]["writable"] = ["data", "uploads"]
    install_base(server)
    (server.app_root / "uploads/photo.jpg").write_bytes(b"jpeg")
    return server


def write_config(server: Server, text: str = CONFIG) -> Path:
    path = server.root / "etc/nesop-deb/demo.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def adopted(server: Server) -> Path:
    path = write_config(server)
    adopt.adopt(apps.select(None, path), path)
    return path


def files_problems(server: Server) -> list[str]:
    [result] = validate.run(server.ctx, ["files"])
    assert result.ok == (not result.problems), result
    return result.problems


# --- finding the app ----------------------------------------------------------------------------


def test_before_adoption_no_app_is_managed_but_the_config_names_one(deployed: Server) -> None:
    with pytest.raises(UsageError, match="no app is managed") as err:
        apps.select(None)
    assert "--config FILE" in str(err.value) and "adopt" in str(err.value)

    ctx = apps.select(None, write_config(deployed))

    assert ctx == deployed.ctx
    assert apps.select(APP, write_config(deployed)) == ctx
    with pytest.raises(UsageError, match=r"--app other: .* describes demo"):
        apps.select("other", write_config(deployed))


def test_the_installed_package_settings_win_over_a_config(deployed: Server) -> None:
    release_101(deployed)  # unpacked: the package is installed
    text = CONFIG.replace("timeout = 2", "timeout = 9")

    ctx = apps.select(None, write_config(deployed, text))

    assert ctx.app.health_timeout == 2.0


def test_a_bad_config_is_refused_by_name(deployed: Server) -> None:
    missing = deployed.root / "nowhere.toml"
    with pytest.raises(ConfigError, match=f"--config {missing}: no such file"):
        apps.select(None, missing)
    broken = write_config(deployed, CONFIG.replace("[app]", "[app\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        apps.select(None, broken)
    typo = write_config(deployed, CONFIG.replace("writable", "writeable"))
    with pytest.raises(ConfigError, match=r"unknown key app\.writeable"):
        apps.select(None, typo)
    fifo = deployed.root / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        apps.select(None, fifo)  # and root did not wait on it


def test_a_config_the_apps_account_can_change_is_refused(deployed: Server) -> None:
    (deployed.root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:4242:4242::{APP_ROOT}:/usr/sbin/nologin\n"
    )
    (deployed.root / "etc/group").write_text(f"root:x:0:\n{USER}:x:4242:\n")
    path = write_config(deployed)
    assert apps.select(None, path).app.name == APP  # root's: fine

    os.chown(path, 4242, 4242)
    with pytest.raises(RefusedError, match="someone other than root can change it"):
        apps.select(None, path)
    # what the file says of the app's account does not matter: it could say anything
    path.write_text(path.read_text().replace(f'user = "{USER}"', 'user = "root"'))
    with pytest.raises(RefusedError, match="someone other than root can change it"):
        apps.select(None, path)
    os.chown(path, 0, 0)
    path.chmod(0o666)
    with pytest.raises(RefusedError, match="can change it"):
        apps.select(None, path)
    path.chmod(0o644)
    os.chown(path.parent, 4242, 4242)  # the account could put another file in its place
    with pytest.raises(RefusedError, match="can change it"):
        apps.select(None, path)


def test_settings_go_to_the_record_and_back() -> None:
    from nesop_deb.config import loads

    settings = AppSettings.from_config(loads(CONFIG))

    assert AppSettings.from_manifest_config(settings.to_config()) == settings
    assert settings.writable == ("data", "uploads") and settings.config_files == ("config.py",)


# --- adopting -----------------------------------------------------------------------------------


def test_adopt_records_the_app_and_every_file_of_it_for_root_only(deployed: Server) -> None:
    config = adopted(deployed)
    ctx = deployed.ctx

    assert apps.managed() == [ctx]
    assert apps.select(None) == ctx  # no --config needed any more
    record = adopt.recorded(ctx)
    assert record is not None and record.config_file == str(config) and record.root == APP_ROOT
    base = adopt.baseline(ctx)
    assert base is not None
    assert sorted(r for r, e in base.entries.items() if e.kind != "dir") == [
        "app.py", "config.py", "latest.css", "lib/keep.py", "lib/old_name.py", "lib/util.py", "run.sh",
        "static/site.css",
    ]  # fmt: skip
    assert base.entries["latest.css"].kind == "link"
    assert base.entries["run.sh"].sha256 is not None and base.entries["run.sh"].mode == 0o644
    assert record.files == 8
    for d in (ctx.state_dir, state.adoption_dir(ctx)):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in (state.ADOPTION, state.ADOPTED_FILES):
        assert stat.S_IMODE((state.adoption_dir(ctx) / name).stat().st_mode) == 0o600


def test_adoption_records_no_version(deployed: Server) -> None:
    adopted(deployed)
    assert state.load(deployed.ctx).current is None
    assert not (deployed.ctx.state_dir / "state.json").exists()


def test_adopt_refuses_what_is_not_an_app_and_records_nothing(server: Server) -> None:
    server.settings["app"]["writable"] = ["data", "uploads"]
    path = write_config(server)
    with pytest.raises(RefusedError, match="is not a directory: there is no app to adopt"):
        adopt.adopt(apps.select(None, path), path)

    install_base(server)
    state.write_journal(server.ctx, {"kind": "apply", "version": "1.0.1"})
    with pytest.raises(RefusedError, match=r"interrupted apply of 1\.0\.1 is pending"):
        adopt.adopt(apps.select(None, path), path)
    state.clear_journal(server.ctx)

    (server.app_root / "lib/bad\nname.py").write_bytes(b"x")
    with pytest.raises(RefusedError, match="control character") as err:
        adopt.adopt(apps.select(None, path), path)
    assert "nothing was recorded" in str(err.value)
    assert adopt.recorded(server.ctx) is None
    assert apps.managed() == []


def test_adopt_follows_no_link_and_enters_no_planted_directory(deployed: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret/key").write_bytes(b"root's secret")
    (deployed.app_root / "lib/elsewhere").symlink_to(outside / "secret")
    fifo = deployed.app_root / "static/pipe"
    os.mkfifo(fifo)

    adopted(deployed)
    base = adopt.baseline(deployed.ctx)

    assert base is not None
    assert base.entries["lib/elsewhere"].kind == "link"
    assert not any(r.startswith("lib/elsewhere/") for r in base.entries)
    assert base.entries["static/pipe"].kind == "other" and base.entries["static/pipe"].sha256 is None


def test_an_interrupted_adoption_is_reported_not_trusted(deployed: Server) -> None:
    adopted(deployed)
    path = state.adoption_dir(deployed.ctx) / state.ADOPTED_FILES
    data = json.loads(path.read_text())
    data["time"] = "1999-01-01T00:00:00Z"  # a newer tree was written, its record was not
    path.write_text(json.dumps(data))

    [result] = validate.run(deployed.ctx, ["files"])

    assert not result.ok
    assert "an adoption was interrupted" in result.summary and "adopt` again" in result.summary


# --- the files check ----------------------------------------------------------------------------


def test_after_adoption_the_files_check_covers_every_file(deployed: Server) -> None:
    adopted(deployed)
    [good] = validate.run(deployed.ctx, ["files"])
    assert good.ok and good.summary.startswith("8 files checked by sha256 as adopted "), good

    root = deployed.app_root
    (root / "lib/keep.py").write_bytes(b"KEEP = False\n")
    (root / "lib/util.py").unlink()
    (root / "static/site.css").unlink()
    (root / "static/site.css").symlink_to("/etc/shadow")
    (root / "lib/planted.py").write_bytes(b"import os\n")
    (root / "uploads/new.jpg").write_bytes(b"data: not checked")
    deployed.sql("INSERT INTO items (name) VALUES ('plum')")

    problems = files_problems(deployed)

    assert [p.split(":")[0] for p in problems] == [
        "lib/keep.py",
        "lib/util.py",
        "static/site.css",
        "lib/planted.py",
    ]
    assert problems[0].startswith("lib/keep.py: content changed since the adoption of ")
    assert problems[1].startswith("lib/util.py: missing since the adoption of ")
    assert problems[2].startswith("static/site.css: a link, but a file when adopted")
    assert problems[3].endswith("and no update wrote it") and "new since" in problems[3]


def test_adopting_again_takes_the_files_as_they_are_now(deployed: Server) -> None:
    config = adopted(deployed)
    (deployed.app_root / "config.py").write_bytes(b"DEBUG = True\n")
    assert [p.split(":")[0] for p in files_problems(deployed)] == ["config.py"]

    adopt.adopt(apps.select(None), None)

    assert files_problems(deployed) == []
    record = adopt.recorded(deployed.ctx)
    assert record is not None and record.config_file == str(config)  # still named


def test_the_first_update_after_adoption_works_and_the_check_adds_what_it_wrote(deployed: Server) -> None:
    adopted(deployed)
    ctx = deployed.ctx

    operations.run_apply(ctx, release_101(deployed), ctx.share, state.load(ctx))

    assert deployed.applied() == ["1.0.1"]
    hist = json.loads(ctx.history_file.read_text())
    assert hist[-1]["status"] == "success" and hist[-1]["from"] is None  # adopted by its first update
    [result] = validate.run(ctx, ["files"])
    assert result.ok, result
    assert result.summary.startswith("3 files checked by sha256 as adopted "), result.summary
    assert result.summary.endswith(", 8 as 1.0.1 wrote them"), result.summary

    (deployed.app_root / "lib/keep.py").write_bytes(b"changed by hand\n")  # no update touches it
    (deployed.app_root / "app.py").write_bytes(b"changed by hand\n")  # 1.0.1 wrote it
    (deployed.app_root / "lib/util.py").write_bytes(b"back\n")  # 1.0.1 deleted it

    problems = files_problems(deployed)

    assert problems[:2] == ["app.py: content differs from 1.0.1", "lib/util.py: should have been deleted"]
    assert [p.split(":")[0] for p in problems[2:]] == ["lib/keep.py"]


def test_going_back_below_an_adoption_taken_after_an_update(deployed: Server) -> None:
    ctx = deployed.ctx
    operations.run_apply(ctx, release_101(deployed), ctx.share, state.load(ctx))
    adopted(deployed)  # records the tree 1.0.1 left
    assert files_problems(deployed) == []
    [pre_update] = [b.name for b in backup.list_backups(ctx) if b.name.startswith("pre_update_1.0.1")]

    manual.restore_backup(ctx, pre_update)  # back to the hand-deployed 1.0.0

    assert deployed.applied() == []
    assert (deployed.app_root / "lib/util.py").exists()
    # what 1.0.1 wrote is not the adoption's to judge; every other file still is
    assert files_problems(deployed) == []
    (deployed.app_root / "lib/keep.py").write_bytes(b"changed by hand\n")
    assert [p.split(":")[0] for p in files_problems(deployed)] == ["lib/keep.py"]


def test_permissions_may_only_narrow_after_adoption(deployed: Server) -> None:
    adopted(deployed)
    (deployed.app_root / "lib/keep.py").chmod(0o600)  # less access: fine
    [good] = validate.run(deployed.ctx, ["permissions"])
    assert not any("when adopted" in p for p in good.problems), good
    assert "entries as adopted" in good.summary

    (deployed.app_root / "lib/keep.py").chmod(0o664)
    os.chown(deployed.app_root / "run.sh", 4242, 4242)

    [bad] = validate.run(deployed.ctx, ["permissions"])

    assert "lib/keep.py: mode 664, 644 when adopted" in bad.problems
    assert "run.sh: owned by 4242:4242, by 0:0 when adopted" in bad.problems


# --- manual backup and restore on an unpackaged server ------------------------------------------


def test_a_manual_backup_of_an_unpackaged_app_and_its_restore(deployed: Server, tmp_path: Path) -> None:
    ctx = apps.select(None, write_config(deployed))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"not the app's")
    (deployed.app_root / "media").symlink_to(outside)  # a hand-deployed server's link out
    (deployed.app_root / "static/lib").symlink_to("../lib")

    path = manual.manual_backup(ctx, None)

    data = backup.read_manifest(ctx, path)
    paths = [f["path"] for f in data["files"]]
    assert "static/lib" in paths and not any(p.startswith(("static/lib/", "media")) for p in paths)
    assert "uploads/photo.jpg" in paths and DB_REL not in paths  # the database as a snapshot
    assert data["database"] is not None and data["version"] is None

    (deployed.app_root / "app.py").write_bytes(b"broken\n")
    manual.restore_backup(ctx, path.name)

    assert (deployed.app_root / "app.py").read_bytes() == b"print('v1')\n"
    assert state.load(ctx).current is None


def test_only_adoption_records_root_wrote_count(tmp_path: Path) -> None:
    """A state directory the app's account owns (a unit's StateDirectory=) cannot plant an app."""
    good = tmp_path / "var/lib/good-update/adoption"
    evil = tmp_path / "var/lib/evil-update/adoption"
    for d in (good, evil):
        d.mkdir(parents=True)
        (d / state.ADOPTION).write_text(json.dumps({"package": d.parent.name}))
    os.chown(evil.parent, 4242, 4242)
    assert [p for p, _ in state.adoption_records(tmp_path)] == ["good-update"]
    os.chown(evil.parent, 0, 0)
    (evil / state.ADOPTION).chmod(0o666)
    assert [p for p, _ in state.adoption_records(tmp_path)] == ["good-update"]


def test_a_lock_that_is_a_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("keep me\n")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(RefusedError, match="cannot open the lock"), lock.held(tmp_path / "lock", "test"):
        pass
    assert victim.read_text() == "keep me\n"
