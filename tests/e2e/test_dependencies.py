"""The app's virtualenv on a real Debian with no network: updates that change the pinned
dependencies build the new virtualenv offline, from the wheels the packages carry, before the stop,
and switch the link inside the outage; every way back (a failed update, an apt rollback, a named
backup, a crash) puts back the virtualenv the old version ran on.

The example store moves onto gunicorn + MarkupSafe at 1.1.0; 1.1.1 upgrades MarkupSafe, 1.1.2 adds
itsdangerous, 1.1.3 drops it again, and 1.1.4 (branch broken/import) adds it back for a name it no
longer has. Every check is of the end state: the version served, the tree, the distributions in the
live virtualenv (what `pip freeze` lists; the app's virtualenv has no pip), where
/opt/nesop-store/venv points, the virtualenv the service's main process runs from (its interpreter
and the compiled MarkupSafe it has loaded), dpkg's state, the history and the rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from . import faults, store
from .releases import every_release
from .testbed import Container

VENV = f"{store.APP_ROOT}/venv"  # [dependencies] venv of the example store
ADOPTED = f"{VENV}.adopted"
VENVS = f"/opt/venvs/{store.PACKAGE}"
STATE_DIR = f"/var/lib/{store.PACKAGE}"
WHEEL_STORE = f"{STATE_DIR}/wheels"
MARKER = "nesop-venv.json"  # written last into a virtualenv that is complete
RECOVER_UNIT = "nesop-update-recover@nesop-store.service"
PYTHONS = {"bookworm": "3.11", "trixie": "3.13"}  # each Debian release's python3
CONFIG_PYTHON = "3.13"  # [dependencies] python in the example's nesop-deb.toml
SLACK = 20 * 1024  # what a package may weigh beyond the wheels it carries


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every container of this module has a network namespace of its own, with only its loopback,
    whatever the run's settings: a server builds its virtualenv from what the packages carry."""
    monkeypatch.setenv("NESOP_TESTBED_PRIVATE_NETWORK", "1")


_PROBE = """
import socket
for host in ("1.1.1.1", "151.101.0.223", "8.8.8.8"):
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        print(host, "unreachable:", exc)
    else:
        print(host, "reached")
"""


def assert_offline(box: Container) -> None:
    """The container has no way out: its loopback is its only interface, and no address answers."""
    interfaces = sorted(box.run(["ls", "/sys/class/net"]).stdout.split())
    assert interfaces == ["lo"], f"the container has more than its loopback: {interfaces}"
    probe = box.run(["python3", "-c", _PROBE]).stdout
    assert "reached" not in probe, probe


# --- what the repository says ------------------------------------------------------------------


def build(repo: store.ExampleRepo, suite: str, ref: str, *args: str, key: str | None = None) -> Path:
    """``ref``'s package for the servers of ``suite`` (their python3 given with --python when it is
    not the one nesop-deb.toml names)."""
    python = PYTHONS[suite]
    target = () if python == CONFIG_PYTHON else ("--python", python)
    return repo.build(ref, *args, *target, name=f"deps-{suite}-{key or ref.replace('/', '-')}")


def requirements(repo: store.ExampleRepo, ref: str) -> str:
    return store._git(repo.path, "show", f"{ref}:requirements.txt").decode()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(repo: store.ExampleRepo, ref: str) -> dict[str, str]:
    """name → version of every requirement ``ref`` pins."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", requirements(repo, ref), re.M)
    return {normalize(name): version for name, version in found}


def env_for(repo: store.ExampleRepo, ref: str, python: str) -> str:
    """Where the virtualenv of ``ref``'s requirements lives on a server with ``python``: one per
    (Python, requirements text)."""
    key = f"{python}\n{requirements(repo, ref)}"
    return f"{VENVS}/{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def wheels_in(deb: Path) -> dict[str, int]:
    """file → size of each wheel a package carries."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    found = {}
    for line in listing.stdout.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5]
        if path.startswith(f"./usr/share/{store.PACKAGE}/wheels/") and path.endswith(".whl"):
            found[path.rsplit("/", 1)[1]] = int(fields[2])
    return found


def wheel_pin(file: str) -> tuple[str, str]:
    name, version = file.split("-")[:2]
    return normalize(name), version


def carried(repo: store.ExampleRepo, base: str, ref: str) -> set[tuple[str, str]]:
    """The pins whose wheels the update from ``base`` to ``ref`` carries: those ``base`` did not
    pin (built with --python for Debian 12, the base counts as built for the same servers)."""
    return set(pinned(repo, ref).items()) - set(pinned(repo, base).items())


# --- what the server has -----------------------------------------------------------------------

_FREEZE = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)\n"


def freeze(box: Container, python: str = f"{VENV}/bin/python") -> dict[str, str]:
    """name → version of every distribution the virtualenv of ``python`` has (what pip freeze
    lists), read by that interpreter itself."""
    out = box.run([python, "-I", "-B", "-c", _FREEZE]).stdout
    pairs = [line.split() for line in out.splitlines() if line.strip()]
    return {normalize(name): version for name, version in pairs}


def venv_link(box: Container) -> str | None:
    """Where <root>/venv points (None: it is no link)."""
    path = box.path(store.APP_ROOT) / "venv"  # not box.path(VENV): that follows the link
    return os.readlink(path) if path.is_symlink() else None


def running(box: Container) -> tuple[list[str], set[str]]:
    """The service's main process: its command line and the files it has mapped."""
    pid = box.service_main_pid(store.UNIT)
    assert pid > 0, "the service does not run"
    argv = [a for a in box.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0") if a]
    maps = box.run(["cat", f"/proc/{pid}/maps"]).stdout
    mapped = {fields[5] for line in maps.splitlines() if len(fields := line.split(maxsplit=5)) == 6}
    return argv, mapped


def assert_runs_from(box: Container, env: str) -> None:
    """The service is gunicorn started through <root>/venv, on ``env``'s interpreter, with
    ``env``'s compiled MarkupSafe loaded (the master imports the app: preload_app)."""
    argv, mapped = running(box)
    assert argv[:2] == [f"{env}/bin/python", f"{VENV}/bin/gunicorn"], argv
    speedups = sorted(f for f in mapped if "/markupsafe/_speedups" in f)
    assert speedups, f"MarkupSafe's compiled module is not loaded: {sorted(mapped)}"
    assert all(f.startswith(f"{env}/lib/python") for f in speedups), speedups


def complete_envs(box: Container) -> list[str]:
    """The virtualenvs under /opt/venvs/<package>; fails on anything else there (a half-built one,
    a scratch directory)."""
    root = box.path(VENVS)
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    unfinished = [n for n in names if not (root / n / MARKER).is_file()]
    assert unfinished == [], f"left in {VENVS}: {unfinished}"
    return [f"{VENVS}/{n}" for n in names]


def assert_live(
    box: Container, repo: store.ExampleRepo, ref: str, python: str, *, beside: tuple[str, ...] = ()
) -> None:
    """Release ``ref`` whole: served, its tree, <root>/venv a link to the complete virtualenv of its
    requirements, which has exactly its pins, and the service running from it."""
    assert store.health(box)["version"] == ref.removeprefix("v")
    store.assert_tree(box, repo, ref, beside=beside)
    env = env_for(repo, ref, python)
    assert venv_link(box) == env
    assert box.path(f"{env}/{MARKER}").is_file(), f"{env} is not complete"
    assert freeze(box) == pinned(repo, ref)
    assert_runs_from(box, env)
    st = box.path(env).stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755), "the app runs its virtualenv, root writes it"


def venv_state(box: Container) -> dict[str, Any]:
    return {"link": venv_link(box), "freeze": freeze(box), "envs": complete_envs(box)}


def python_of(box: Container) -> str:
    return box.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()


def apply(box: Container, deb: Path, version: str) -> None:
    result = store.apt_install(box, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", version)
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", version, "success"), last


def statuses(box: Container) -> list[tuple[str, str, str]]:
    return [(e["action"], e["version"], e["status"]) for e in store.history(box)]


# --- 1. the story: updates that change the virtualenv, a failed one, an apt rollback ------------


@every_release
def test_dependency_updates_a_failed_one_and_an_apt_rollback(
    server: Container, example_repo: store.ExampleRepo, suite: str
) -> None:
    box, repo = server, example_repo
    assert_offline(box)
    python = PYTHONS[suite]
    assert python_of(box) == python
    store.deploy_by_hand(box, repo, "v1.0.6")
    assert venv_link(box) is None and not (box.path(store.APP_ROOT) / "venv").exists()
    rows = store.register_customers(box, 3)
    frozen: dict[str, dict[str, str]] = {}
    links: dict[str, str | None] = {}

    # 1.1.0: the first virtualenv, and the unit now runs gunicorn from it
    deb = build(repo, suite, "v1.1.0")
    assert deb.name == f"{store.PACKAGE}_1.1.0_py{python}_amd64.deb"
    assert {wheel_pin(w) for w in wheels_in(deb)} == set(pinned(repo, "v1.1.0").items())
    apply(box, deb, "1.1.0")
    assert_live(box, repo, "v1.1.0", python)
    unit = box.path(f"/etc/systemd/system/{store.UNIT}").read_bytes()
    assert unit == store._git(repo.path, "show", "v1.1.0:deploy/nesop-store.service")
    store_dir = box.path(WHEEL_STORE).stat()
    assert (store_dir.st_uid, store_dir.st_mode & 0o777) == (0, 0o700)
    frozen["1.1.0"], links["1.1.0"] = freeze(box), venv_link(box)
    rows += store.register_customers(box, 2)

    # 1.1.1: one dependency upgraded; the package carries its wheel (compiled, for this
    # Python) and little else
    deb = build(repo, suite, "v1.1.1")
    shipped = wheels_in(deb)
    assert {wheel_pin(w) for w in shipped} == carried(repo, "v1.1.0", "v1.1.1"), shipped
    abi = "cp" + python.replace(".", "")
    [markupsafe] = [w for w in shipped if wheel_pin(w) == ("markupsafe", "3.0.4")]
    assert f"-{abi}-{abi}-" in markupsafe and markupsafe.endswith("x86_64.whl"), markupsafe
    weight = sum(shipped.values())
    assert deb.stat().st_size <= weight + SLACK, (
        f"{deb.name}: {deb.stat().st_size} B for {weight} B of wheels"
    )
    apply(box, deb, "1.1.1")
    assert_live(box, repo, "v1.1.1", python)
    assert frozen["1.1.0"] == {**freeze(box), "markupsafe": "3.0.3"}
    frozen["1.1.1"], links["1.1.1"] = freeze(box), venv_link(box)
    assert links["1.1.1"] != links["1.1.0"]
    rows += store.register_customers(box, 2)

    # 1.1.2: one dependency added (pure Python: its one wheel ships)
    deb = build(repo, suite, "v1.1.2")
    assert {wheel_pin(w) for w in wheels_in(deb)} == carried(repo, "v1.1.1", "v1.1.2")
    apply(box, deb, "1.1.2")
    assert_live(box, repo, "v1.1.2", python)
    assert freeze(box) == {**frozen["1.1.1"], "itsdangerous": "2.2.0"}
    frozen["1.1.2"], links["1.1.2"] = freeze(box), venv_link(box)
    rows += store.register_customers(box, 2)

    # 1.1.3: it goes again, back to 1.1.1's requirements: 1.1.1's virtualenv, not built again
    marker = box.path(f"{links['1.1.1']}/{MARKER}").read_bytes()
    deb = build(repo, suite, "v1.1.3")
    assert {wheel_pin(w) for w in wheels_in(deb)} == carried(repo, "v1.1.2", "v1.1.3")
    apply(box, deb, "1.1.3")
    assert_live(box, repo, "v1.1.3", python)
    frozen["1.1.3"], links["1.1.3"] = freeze(box), venv_link(box)
    assert (frozen["1.1.3"], links["1.1.3"]) == (frozen["1.1.1"], links["1.1.1"])
    assert box.path(f"{links['1.1.3']}/{MARKER}").read_bytes() == marker
    rows += store.register_customers(box, 2)

    # 1.1.4 builds a virtualenv whose packages all import, but the app cannot start on it
    before = store.snapshot(box)
    state = venv_state(box)
    broken = build(repo, suite, "broken/import", "--version", "1.1.4", "--since", "v1.1.3", key="1.1.4")
    result = store.apt_install(box, broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "update to 1.1.4 FAILED at " in output, output[-3000:]
    # its virtualenv was built (every package imports) and switched to; only the app failed
    assert f"virtualenv {env_for(repo, 'broken/import', python)} built in" in output, output[-3000:]
    assert "-> venv-switch" in output, output[-3000:]
    assert_live(box, repo, "v1.1.3", python)
    assert store.snapshot(box) == before
    assert venv_state(box) == state, "the old virtualenv, and only the environments there were"
    assert not box.path(env_for(repo, "broken/import", python)).exists()
    assert set(rows) <= store.customer_emails(box)
    assert store.dpkg_status(box) == ("iF", "1.1.4")
    assert not box.path(store.JOURNAL).exists()
    assert store.leftovers(box) == []
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", "1.1.4", "failed"), last
    assert last["failed_step"] in ("start", "health"), last
    assert last["undo_errors"] == [] and last["old_app_healthy"] is True, last
    app_log = box.run(["journalctl", "-u", store.UNIT, "--no-pager", "-o", "cat"]).stdout
    assert "cannot import name 'TimedJSONWebSignatureSerializer'" in app_log, app_log[-2000:]
    store.assert_not_tried_again_on_its_own(box, "1.1.4", last["failed_step"])

    # the way back, across two changes of the virtualenv: apt installs 1.1.1 again
    result = box.run(
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.1.1"],
        check=False,
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", "1.1.1")
    assert_live(box, repo, "v1.1.1", python)
    assert (freeze(box), venv_link(box)) == (frozen["1.1.1"], links["1.1.1"])
    assert set(rows) <= store.customer_emails(box)
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("rollback", "1.1.1", "success"), last
    assert last["undone"] == ["1.1.3", "1.1.2"], last
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
    assert not box.path(store.JOURNAL).exists()
    assert store.leftovers(box) == []
    assert links["1.1.1"] in complete_envs(box)
    check = box.run(["nesop-update", "validate", "--check", "files"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert_offline(box)


# --- 2. a first install ---------------------------------------------------------------------------


def test_full_install_builds_the_virtualenv_offline(
    server: Container, example_repo: store.ExampleRepo, suite: str
) -> None:
    box, repo = server, example_repo
    assert_offline(box)
    python = PYTHONS[suite]
    deb = build(repo, suite, "v1.1.1", "--full", key="full-v1.1.1")
    shipped = wheels_in(deb)
    assert {wheel_pin(w) for w in shipped} == set(pinned(repo, "v1.1.1").items())

    apply(box, deb, "1.1.1")

    assert_live(box, repo, "v1.1.1", python)
    assert box.run(["systemctl", "is-enabled", store.UNIT]).stdout.strip() == "enabled"
    argv, _mapped = running(box)
    user = box.run(["stat", "-c", "%U", f"/proc/{box.service_main_pid(store.UNIT)}"]).stdout.strip()
    assert user == "nesop", f"{argv} runs as {user}"
    assert sorted(p.name for p in box.path(WHEEL_STORE).iterdir()) == sorted(shipped)
    assert complete_envs(box) == [env_for(repo, "v1.1.1", python)]
    rows = store.register_customers(box, 2)
    assert rows and set(rows) <= store.customer_emails(box)
    check = box.run(["nesop-update", "validate", "--check", "files"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# --- 3. a virtualenv made by hand ---------------------------------------------------------------


def download_wheels(repo: store.ExampleRepo, ref: str, python: str, dest: Path) -> Path:
    """What an operator fetches on a machine with network for a server: ``ref``'s wheels for
    CPython ``python`` on x86_64; returns the requirements file."""
    listing = dest / "requirements.txt"
    listing.write_text(requirements(repo, ref))
    abi = "cp" + python.replace(".", "")
    platforms = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
         "--only-binary=:all:", "--require-hashes", "--python-version", python, "--implementation", "cp",
         "--abi", abi, "--abi", "none", *(a for p in platforms for a in ("--platform", p)),
         "--dest", str(dest / "wheels"), "--requirement", str(listing)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return listing


def test_a_virtualenv_made_by_hand_is_adopted_and_put_back(
    server: Container, example_repo: store.ExampleRepo, suite: str, tmp_path: Path
) -> None:
    box, repo = server, example_repo
    assert_offline(box)
    python = PYTHONS[suite]
    listing = download_wheels(repo, "v1.1.0", python, tmp_path)
    box.copy_in(tmp_path / "wheels", "/var/tmp/wheels")
    box.copy_in(listing, "/var/tmp/requirements.txt")
    # the server as set up by hand: a virtualenv in the tree, from the wheels, with no index
    box.sh(
        f"""
        python3 -m venv --without-pip {VENV}
        /opt/venvs/nesop-deb/bin/python -m pip --python {VENV}/bin/python --disable-pip-version-check \
            install --no-cache-dir --no-index --find-links /var/tmp/wheels --require-hashes \
            --requirement /var/tmp/requirements.txt
        """,
        timeout=300,
    )
    store.deploy_by_hand(box, repo, "v1.1.0")
    by_hand = freeze(box)
    assert by_hand == pinned(repo, "v1.1.0")
    assert_runs_from(box, VENV)
    rows = store.register_customers(box, 3)
    pid, before = box.service_main_pid(store.UNIT), store.snapshot(box)  # the tree with the venv

    # The update 1.1.1 carries only the wheel 1.1.0 did not pin, and this server has no wheel
    # store: refused before any change, naming what it lacks and the way out.
    refused = store.apt_install(box, build(repo, suite, "v1.1.1"))
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "needs wheels this server does not have: gunicorn==27.0.1" in output, output[-2000:]
    assert "nesop-deb build --all-wheels" in output, output[-2000:]
    assert box.service_main_pid(store.UNIT) == pid
    assert store.snapshot(box) == before
    assert store.dpkg_status(box)[0] in ("not-installed", "in")

    # built so, it carries every wheel: the directory is kept beside, venv becomes the link
    deb = build(repo, suite, "v1.1.1", "--all-wheels", key="all-wheels-v1.1.1")
    assert {wheel_pin(w) for w in wheels_in(deb)} == set(pinned(repo, "v1.1.1").items())
    apply(box, deb, "1.1.1")
    adopted = box.path(store.APP_ROOT) / "venv.adopted"
    assert_live(box, repo, "v1.1.1", python, beside=("venv.adopted/",))
    assert adopted.is_dir() and not adopted.is_symlink()
    assert freeze(box, f"{ADOPTED}/bin/python") == by_hand
    assert store.history(box)[-1]["from"] is None
    assert set(rows) <= store.customer_emails(box)

    # back behind the first managed version: the backup that update made (guide 5.6, 7.6)
    backups = json.loads(box.run(["nesop-update", "list-backups", "--json"]).stdout)
    [first] = [b["name"] for b in backups if b["kind"] == "pre_update" and b["for_version"] == "1.1.1"]
    box.run(["nesop-update", "rollback", first], timeout=300)

    link = box.path(store.APP_ROOT) / "venv"
    assert link.is_dir() and not link.is_symlink(), "the directory made by hand is venv again"
    assert not adopted.exists()
    assert store.health(box)["version"] == "1.1.0"
    store.assert_tree(box, repo, "v1.1.0", beside=("venv/",))
    assert freeze(box) == by_hand
    assert_runs_from(box, VENV)
    assert set(rows) <= store.customer_emails(box)
    last = store.history(box)[-1]
    assert (last["action"], last["status"]) == ("rollback", "success"), last


# --- 4. faults in the new steps, on the update 1.1.0 -> 1.1.1 -------------------------------------


def at_1_1_0(box: Container, repo: store.ExampleRepo, suite: str) -> tuple[list[str], Path]:
    """A server at 1.1.0 (deployed by hand at 1.0.6, then updated) with rows; returns them and
    the 1.1.1 package, copied in. The update is not begun."""
    assert_offline(box)
    store.deploy_by_hand(box, repo, "v1.0.6")
    apply(box, build(repo, suite, "v1.1.0"), "1.1.0")
    rows = store.register_customers(box, 5)
    deb = build(repo, suite, "v1.1.1")
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    return rows, deb


def assert_completed_by(
    box: Container, repo: store.ExampleRepo, python: str, rows: list[str], before: tuple[str, str, str]
) -> None:
    """The documented way forward, `dpkg --configure -a`, ends with 1.1.1 whole; the history first
    says ``before`` of the attempt the fault broke."""
    result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.dpkg_status(box) == ("ii", "1.1.1")
    assert_live(box, repo, "v1.1.1", python)
    assert set(rows) <= store.customer_emails(box)
    assert not box.path(store.JOURNAL).exists()
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
    assert store.leftovers(box) == []
    said = statuses(box)
    assert before in said, said
    assert said[-1] == ("apply", "1.1.1", "success"), said
    assert env_for(repo, "v1.1.1", python) in complete_envs(box)


def pip_processes(box: Container) -> list[int]:
    """Host PIDs of the pip processes installing in the container (read from the host's /proc)."""
    namespace = os.readlink(f"/proc/{box.pid}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"install" in argv and any(b"pip" in a for a in argv[:4]):
            found.append(int(entry.name))
    return found


def kill_pip(box: Container) -> None:
    """SIGKILL pip (run by the maintainer script) as well, and wait until it is gone."""
    deadline = time.monotonic() + 30
    while pids := pip_processes(box):
        assert time.monotonic() < deadline, "pip survived SIGKILL"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@pytest.mark.fault(
    "SIGKILL",
    "venv-build",
    ends_as="old version whole on its virtualenv, never stopped; configure -a builds again and applies",
)
def test_sigkill_while_pip_builds_the_new_virtualenv(
    server: Container, example_repo: store.ExampleRepo, suite: str
) -> None:
    box, repo, python = server, example_repo, PYTHONS[suite]
    rows, deb = at_1_1_0(box, repo, suite)
    pid, state = box.service_main_pid(store.UNIT), venv_state(box)
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    building = faults.journal_at(box, store.JOURNAL, "venv-build")
    new = env_for(repo, "v1.1.1", python)
    site = box.path(new) / "lib" / f"python{python}" / "site-packages"

    def installing() -> bool:  # pip runs and has written its first files
        return building() and bool(pip_processes(box)) and site.is_dir() and any(site.iterdir())

    apt.pause_when(STATE_DIR, installing, "pip installing in venv-build")
    assert not box.path(f"{new}/{MARKER}").exists()

    kill_pip(box)  # with apt, dpkg and the maintainer script that runs it
    apt.kill()

    assert box.service_main_pid(store.UNIT) == pid, "the old app was never stopped"
    assert store.health(box)["version"] == "1.1.0"
    assert_runs_from(box, state["link"])
    # the files staged for 1.1.1 wait beside their targets until the recovery removes them
    live = store.live_tree(box)
    assert {p: v for p, v in live.items() if not p.endswith(".nesop-tmp")} == repo.tree("v1.1.0")
    assert (venv_link(box), freeze(box)) == (state["link"], state["freeze"])
    assert store.dpkg_status(box)[0] in ("iF", "iU")
    assert box.path(store.JOURNAL).exists(), "the journal must survive the kill"
    assert_completed_by(box, repo, python, rows, ("recover", "1.1.1", "interrupted"))


@pytest.mark.fault(
    "power loss",
    "venv-switch",
    ends_as="old version served on its virtualenv after the boot; configure -a applies the new one",
)
def test_power_loss_while_the_link_is_switched(
    server: Container, example_repo: store.ExampleRepo, suite: str
) -> None:
    box, repo, python = server, example_repo, PYTHONS[suite]
    rows, deb = at_1_1_0(box, repo, suite)
    state = venv_state(box)
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    switching = faults.journal_at(box, store.JOURNAL, "venv-switch")
    new = env_for(repo, "v1.1.1", python)

    def switched() -> bool:  # the rename is done, the next step not begun
        return switching() and venv_link(box) == new

    apt.pause_when(STATE_DIR, switched, "the link switched in its venv-switch step")

    box.kill_hard()
    apt.untrace()
    box.boot()

    # the boot's recovery put the link back before the app started: one whole version at once
    assert box.run(["systemctl", "is-active", RECOVER_UNIT], check=False).stdout.strip() == "active"
    box.wait_http(store.HEALTH, timeout=30)
    assert_live(box, repo, "v1.1.0", python)
    assert (venv_link(box), freeze(box)) == (state["link"], state["freeze"])
    assert not box.path(store.JOURNAL).exists()
    last = store.history(box)[-1]
    said = (last["action"], last["version"], last["status"])
    assert said == ("recover", "1.1.1", "interrupted") and last.get("at_boot") is True, last
    assert store.dpkg_status(box)[0] in ("iF", "iU")
    assert_offline(box)
    assert_completed_by(box, repo, python, rows, ("recover", "1.1.1", "interrupted"))


@pytest.mark.fault(
    "step fails",
    "venv-build",
    ends_as="old version whole, never stopped, iF; the wheel put back, configure -a applies",
)
def test_a_wheel_gone_from_the_store_fails_the_build(
    server: Container, example_repo: store.ExampleRepo, suite: str, tmp_path: Path
) -> None:
    box, repo, python = server, example_repo, PYTHONS[suite]
    rows, deb = at_1_1_0(box, repo, suite)
    pid, state = box.service_main_pid(store.UNIT), venv_state(box)
    apt = faults.BackgroundApt(box, f"install -y -q /var/tmp/{deb.name}")
    apt.pause_when(STATE_DIR, faults.journal_at(box, store.JOURNAL, "venv-build"), "its venv-build step")
    # after the preflight found it: someone cleans up /var/lib while the update runs
    [wheel] = box.path(WHEEL_STORE).glob("gunicorn-*.whl")
    kept = tmp_path / wheel.name
    shutil.copy2(wheel, kept)
    wheel.unlink()
    apt.resume()

    assert apt.wait() != 0, apt.output()[-2000:]

    assert box.service_main_pid(store.UNIT) == pid, "the old app was never stopped"
    assert_live(box, repo, "v1.1.0", python)
    assert venv_state(box) == state
    assert set(rows) <= store.customer_emails(box)
    assert store.dpkg_status(box) == ("iF", "1.1.1")
    assert not box.path(store.JOURNAL).exists()
    assert store.leftovers(box) == []
    last = store.history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", "1.1.1", "failed"), last
    assert last["failed_step"] == "venv-build" and "gunicorn" in last["reason"], last
    assert last["undo_errors"] == [] and last["old_app_healthy"] is True, last

    # the wheel back: a failure before the stop cost no outage, so the next configure tries again
    shutil.copy2(kept, wheel)
    assert_completed_by(box, repo, python, rows, ("apply", "1.1.1", "failed"))
