"""An update that changes the app's requirements builds a virtualenv offline before the stop and
switches the app's ``venv`` link inside the outage; every way back puts the link back.

Real pip, real virtualenvs (from small wheels the tests make, no network); systemd is the fake
server's. The environments go below the fake server's root (``/opt/venvs/<package>``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import proc
from nesop_deb.errors import RefusedError
from nesop_deb.manifest import Dependencies, Manifest, WheelEntry
from nesop_deb.runtime import (
    apply,
    backup,
    checks,
    deps,
    history,
    manual,
    operations,
    state,
    transaction,
    undo,
    validate,
)
from nesop_deb.runtime.deps import venvs
from tests.unit.runtime_fixtures import APP_V1, APP_V2, Server, fake_server, install_base, leftovers, modify
from tests.unit.test_runtime_recover import Crash, crashing_run
from tests.unit.wheels import Wheel, make_wheel

REAL = ("/usr/bin/python3", sys.executable, "setsid")
FREEZE = (
    "import importlib.metadata as m, json\n"
    "print(json.dumps(sorted(f'{d.name}=={d.version}' for d in m.distributions())))"
)


class WithInstaller:
    """The fake server's systemd, plus the real python3, pip and setsid/setpriv the runtime runs."""

    def __init__(self, server: Server) -> None:
        self.fake = server.systemd
        self.real = server.systemd.real
        self.root = server.root
        self.commands: list[list[str]] = []
        self.real_commands = set(REAL)

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        if argv[0] in self.real_commands or argv[0].startswith(f"{self.root}/opt/venvs/"):
            self.commands.append(list(argv))
            return self.real(argv, cwd, env, stdin, timeout)
        return self.fake(argv, cwd, env, stdin, timeout)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for s in fake_server(tmp_path, monkeypatch):
        s.settings["dependencies"] = {"venv": "venv"}
        monkeypatch.setattr(proc, "executor", WithInstaller(s))
        install_base(s)
        yield s


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, Wheel]:
    d = tmp_path / "wheelhouse"
    return {
        "alpha1": make_wheel(d, "alpha", "1.0"),
        "alpha2": make_wheel(d, "alpha", "2.0"),
        "beta": make_wheel(d, "beta", "1.0"),
        "broken": make_wheel(
            d, "gamma", "1.0", {"gamma/__init__.py": "raise ImportError('needs libgamma')\n"}
        ),
    }


def release(
    server: Server, version: str, needs: Sequence[Wheel], ships: Sequence[Wheel] | None = None, **kw: Any
) -> Manifest:
    """An update changing app.py whose requirements pin ``needs``; it ships ``ships`` (all by default)."""
    old, new = (APP_V1, APP_V2) if version in ("1.0.1", "1.0.3") else (APP_V2, APP_V1)
    manifest = server.package(version, [modify("app.py", old, new)], bases=kw.pop("bases", ("1.0.0",)), **kw)
    ships = list(needs if ships is None else ships)
    entries = tuple(WheelEntry(w.file, w.sha256, w.path.stat().st_size) for w in ships)
    manifest = dataclasses.replace(
        manifest, dependencies=Dependencies("".join(w.pin for w in needs), entries, "3.13", "all")
    )
    share = server.ctx.share
    (share / "wheels").mkdir()
    for w in ships:
        shutil.copy(w.path, share / "wheels" / w.file)
    (share / "update_manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def run(server: Server, manifest: Manifest) -> None:
    ctx = server.ctx
    st = state.load(ctx)
    operations.run_apply(ctx, manifest, ctx.share, st)


def freeze(server: Server) -> list[str]:
    """What the app's interpreter (through its venv link) finds installed."""
    python = server.app_root / "venv/bin/python"
    out = subprocess.run(
        [
            python,
            "-I",
            "-c",
            FREEZE,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [str(x) for x in json.loads(out)]


def installer(server: Server) -> WithInstaller:
    assert isinstance(proc.executor, WithInstaller)
    return proc.executor


def backup_before(server: Server, version: str) -> Path:
    entry = state.load(server.ctx).entry(version)
    assert entry is not None and entry.backup is not None
    return server.ctx.backups_dir / entry.backup


def link(server: Server) -> str:
    return os.readlink(server.app_root / "venv")


def test_the_first_update_with_dependencies_builds_the_venv_and_links_it(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    manifest = release(server, "1.0.1", [wheels["alpha1"], wheels["beta"]])
    names = [
        s.name for s in apply.build_steps(apply.Job(server.ctx, manifest, server.ctx.share, "1.0.0", "b"))
    ]
    assert names.index("venv-build") < names.index("stop") < names.index("apply-files")
    assert names.index("apply-files") < names.index("venv-switch") < names.index("start")

    run(server, manifest)

    assert manifest.dependencies is not None
    target = Path(link(server))
    assert target.parent == server.ctx.venvs_dir
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert target.name == venvs.env_id(python, manifest.dependencies.requirements)
    assert freeze(server) == ["alpha==1.0", "beta==1.0"]
    assert sorted(p.name for p in server.ctx.wheels_dir.iterdir()) == sorted(
        [wheels["alpha1"].file, wheels["beta"].file]
    )
    assert (server.ctx.wheels_dir.stat().st_mode & 0o777) == 0o700
    assert (target.stat().st_mode & 0o777) == 0o755 and target.stat().st_uid == 0
    # the installer ran offline: no index, hashes required, the store only
    commands = installer(server).commands
    pip = next(c for c in commands if "install" in c)
    assert "--no-index" in pip and "--require-hashes" in pip and "--only-binary" in pip
    assert [c for c in commands if "--index-url" in c] == []
    bmeta = backup.read_manifest(server.ctx, backup_before(server, "1.0.1"))
    assert bmeta["venv"] == {"kind": "absent", "target": None}
    assert leftovers(server.root) == []


def test_an_upgrade_builds_beside_the_live_venv_and_a_rollback_switches_back(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"], wheels["beta"]]))
    before, first = freeze(server), link(server)
    # the server has beta from 1.0.1: 1.0.2 ships only the new alpha
    upgrade = release(
        server, "1.0.2", [wheels["alpha2"], wheels["beta"]], [wheels["alpha2"]], bases=("1.0.1",)
    )
    run(server, upgrade)
    assert freeze(server) == ["alpha==2.0", "beta==1.0"]
    assert link(server) != first and Path(first).is_dir()  # the old one is kept for a rollback

    undo.undo_above(server.ctx, "1.0.1")

    assert link(server) == first
    assert freeze(server) == before
    assert history.read(server.ctx.history_file)[-1]["notes"][0].count("virtualenv link put back") == 1


def test_a_failed_start_puts_the_old_venv_back_and_drops_the_new_one(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    first = link(server)
    server.systemd.fail_starts = 5
    with pytest.raises(transaction.TransactionFailed):
        run(server, release(server, "1.0.3", [wheels["alpha2"]], bases=("1.0.1",)))
    assert link(server) == first
    assert freeze(server) == ["alpha==1.0"]
    assert sorted(p.name for p in server.ctx.venvs_dir.iterdir()) == [Path(first).name]
    assert [p.name for p in server.ctx.wheels_dir.iterdir()] == [wheels["alpha1"].file]


def test_a_venv_whose_packages_do_not_import_fails_before_the_stop(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    with pytest.raises(transaction.TransactionFailed, match="needs libgamma") as exc:
        run(server, release(server, "1.0.1", [wheels["alpha1"], wheels["broken"]]))
    assert exc.value.step == "venv-build"
    assert "stop" not in server.systemd.verbs()
    assert not (server.app_root / "venv").exists()
    assert not server.ctx.venvs_dir.exists() or list(server.ctx.venvs_dir.iterdir()) == []


def test_a_hand_made_venv_directory_is_adopted_and_is_what_a_rollback_puts_back(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    hand = server.app_root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", hand], check=True)
    (hand / "made-by-hand").write_text("1")
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    assert (server.app_root / "venv").is_symlink()
    assert (server.app_root / "venv.adopted/made-by-hand").is_file()

    manual.restore_backup(
        server.ctx, backup_before(server, "1.0.1").name
    )  # back to the app as it was deployed by hand

    assert not (server.app_root / "venv").is_symlink()
    assert (server.app_root / "venv/made-by-hand").is_file()
    assert not (server.app_root / "venv.adopted").exists()


def test_a_crash_after_the_switch_is_recovered_to_the_old_link(
    server: Server, wheels: dict[str, Wheel], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    first = link(server)
    manifest = release(server, "1.0.3", [wheels["alpha2"]], bases=("1.0.1",))
    with monkeypatch.context() as m:
        m.setattr(transaction, "run", crashing_run("venv-switch", journaled_only=False))
        with pytest.raises(Crash):
            run(server, manifest)
    assert link(server) != first

    operations.recover(server.ctx)

    assert link(server) == first
    assert state.load(server.ctx).current == "1.0.1"


def test_preflight_refuses_missing_wheels_and_another_target_changing_nothing(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    manifest = release(server, "1.0.1", [wheels["alpha1"], wheels["beta"]], [wheels["alpha1"]])
    with pytest.raises(RefusedError, match=r"beta==1\.0 .*--all-wheels"):
        checks.preflight(server.ctx, manifest)
    assert manifest.dependencies is not None
    elsewhere = dataclasses.replace(manifest.dependencies, python="3.2", architecture="amd64")
    other = dataclasses.replace(manifest, dependencies=elsewhere)
    installer(server).real_commands.add("dpkg")  # it answers for real
    with pytest.raises(RefusedError, match=r"Python 3\.2 on amd64, but this server runs Python 3\.\d+"):
        deps.check_target(other)
    assert not (server.app_root / "venv").exists() and not server.ctx.wheels_dir.exists()


def test_a_tampered_wheel_is_refused_before_anything_changes(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    manifest = release(server, "1.0.1", [wheels["alpha1"]])
    (server.ctx.share / "wheels" / wheels["alpha1"].file).write_bytes(b"PK evil")
    with pytest.raises(RefusedError, match=r"wheel alpha-1\.0-py3-none-any\.whl: sha256 does not match"):
        run(server, manifest)
    assert server.systemd.verbs() == []


def test_a_manual_backup_records_the_link_and_its_restore_puts_it_back(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    first = link(server)
    saved = manual.manual_backup(server.ctx, "before-upgrade")
    assert backup.read_manifest(server.ctx, saved)["venv"] == {"kind": "link", "target": first}
    assert not any(f["path"].startswith("venv") for f in backup.read_manifest(server.ctx, saved)["files"])
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))

    manual.restore_backup(server.ctx, "before-upgrade")

    assert link(server) == first and freeze(server) == ["alpha==1.0"]


def test_retention_prunes_environments_and_wheels_no_backup_reaches(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    server.settings["backups"] = {"keep": 1}
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    first = link(server)
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    assert Path(first).is_dir()  # the backup before 1.0.2 (a rollback target) names it
    run(server, release(server, "1.0.3", [wheels["beta"]], bases=("1.0.2",)))
    run(
        server,
        release(server, "1.0.4", [wheels["beta"], wheels["alpha2"]], [wheels["alpha2"]], bases=("1.0.3",)),
    )
    kept = {p.name for p in server.ctx.venvs_dir.iterdir()}
    # the live one and the two a rollback reaches (the backups before 1.0.4 and 1.0.3)
    assert Path(first).name not in kept
    assert Path(link(server)).name in kept and len(kept) == 3
    stored = {p.name for p in server.ctx.wheels_dir.iterdir()}
    assert wheels["alpha1"].file not in stored
    assert {wheels["alpha2"].file, wheels["beta"].file} <= stored


def test_the_venv_record_of_a_backup_is_validated(server: Server) -> None:
    with pytest.raises(backup.BackupError, match="virtualenv record"):
        backup._validate("b", {"files": [], "absent": [], "venv": {"kind": "link", "target": None}})
    backup._validate("b", {"files": [], "absent": [], "venv": {"kind": "dir", "target": None}})


def test_validate_and_status_report_the_venv_and_a_link_moved_by_hand(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    files = validate.check_files(server.ctx)
    assert files.ok, files.problems
    for check in ("permissions", "config", "history"):
        result = validate.run(server.ctx, [check])[0]
        assert result.ok, (check, result.problems)
    assert f"{server.app_root / 'venv'} -> {link(server)}" in files.summary
    first = link(server)
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    second = link(server)
    (server.app_root / "venv").unlink()
    (server.app_root / "venv").symlink_to(first)  # someone pointed it back by hand

    files = validate.check_files(server.ctx)

    assert not files.ok
    assert files.problems == [f"venv -> {first}, but 1.0.2's virtualenv is {second}"]


def test_an_environments_directory_another_account_owns_is_refused_before_anything_runs(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    server.ctx.venvs_dir.mkdir(parents=True)
    os.chown(server.ctx.venvs_dir, 65534, 65534)  # it could swap files in while root builds
    with pytest.raises(transaction.TransactionFailed, match="belongs to uid 65534") as exc:
        run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    assert exc.value.step == "venv-build"
    assert [c for c in installer(server).commands if "venv" in c or "install" in c] == []
    assert "stop" not in server.systemd.verbs()


def test_pruning_removes_only_environments_of_ours(server: Server, wheels: dict[str, Wheel]) -> None:
    venvs_dir = server.ctx.venvs_dir
    (venvs_dir / "bin").mkdir(parents=True)  # someone's own virtualenv lived there
    (venvs_dir / "README").write_text("not a directory")
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    assert {"bin", "README"} <= {p.name for p in venvs_dir.iterdir()}
    assert len([p for p in venvs_dir.iterdir() if len(p.name) == 16]) == 2


def test_root_never_removes_what_is_named_like_the_adopted_venv(
    server: Server, wheels: dict[str, Wheel], caplog: pytest.LogCaptureFixture
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    # an account that may write the app root renames something of root's to that name
    records = sorted(p.name for p in server.ctx.logs_dir.iterdir())
    assert records
    os.rename(server.ctx.logs_dir, server.app_root / "venv.adopted")
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    assert sorted(p.name for p in (server.app_root / "venv.adopted").iterdir()) == records
    assert "no backup needs" in caplog.text


def test_a_rollback_across_a_release_that_kept_the_venv_finds_its_own(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    at_102 = link(server)
    run(server, server.package("1.0.3", [modify("app.py", APP_V1, APP_V2)], bases=("1.0.2",)))
    run(server, release(server, "1.0.4", [wheels["beta"]], bases=("1.0.3",)))

    undo.undo_above(server.ctx, "1.0.2")

    assert link(server) == at_102 and freeze(server) == ["alpha==2.0"]


def test_an_update_that_moves_the_venv_link_is_refused(server: Server, wheels: dict[str, Wheel]) -> None:
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    server.settings["dependencies"] = {"venv": ".venv"}
    with pytest.raises(RefusedError, match=r"moves the virtualenv link from 'venv' to '\.venv'"):
        run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))
    assert link(server).startswith(str(server.ctx.venvs_dir))


def test_an_interrupted_put_back_of_an_adopted_directory_does_not_block_the_next_update(
    server: Server, wheels: dict[str, Wheel]
) -> None:
    hand = server.app_root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", hand], check=True)
    run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    first = link(server)
    # killed between the exchange and removing the link: the directory is back, our link beside it
    os.rename(server.app_root / "venv.adopted", server.app_root / "venv.swap")
    os.rename(server.app_root / "venv", server.app_root / "venv.adopted")
    os.rename(server.app_root / "venv.swap", server.app_root / "venv")
    assert os.readlink(server.app_root / "venv.adopted") == first

    run(server, release(server, "1.0.2", [wheels["alpha2"]], bases=("1.0.1",)))

    assert (server.app_root / "venv.adopted").is_dir() and freeze(server) == ["alpha==2.0"]


def test_the_build_does_not_depend_on_roots_umask(server: Server, wheels: dict[str, Wheel]) -> None:
    old = os.umask(0o077)
    try:
        run(server, release(server, "1.0.1", [wheels["alpha1"]]))
    finally:
        os.umask(old)
    site = next(Path(link(server)).glob("lib/python3*/site-packages/alpha"))
    assert (site / "__init__.py").stat().st_mode & 0o004


def test_pins_and_wheels_compare_as_the_packaging_specifications_say() -> None:
    from nesop_deb.runtime.deps.pins import pins, wheel_pin

    text = "Foo_Bar==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n# a comment\nbaz==2.0.1  # inline\n"
    assert pins(text) == {
        wheel_pin("foo_bar-1.0.0-py3-none-any.whl"),
        wheel_pin("Baz-2.0.1-py3-none-any.whl"),
    }
    assert wheel_pin("not-a-wheel.txt")[0] == ""
