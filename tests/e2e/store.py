"""The example NESOP Store on a test server: hand deployment, update packages, state snapshots.

Everything here drives the real thing: the example's git history, `nesop-deb build`, `apt` and
`dpkg` inside a booted container, the app over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesop_deb.config import loads as load_config
from nesop_deb.paths import excluded

from .testbed import Container

REPO_TOP = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_TOP / "examples" / "nesop-store"
APP_ROOT = "/opt/nesop-store"
PACKAGE = "nesop-store-update"
UNIT = "nesop-store.service"
HEALTH = "http://127.0.0.1:5000/health"
DB = f"{APP_ROOT}/data/nesop_store_production.db"
ADMIN_TOKEN = "e2e-admin-token"
# what the server has beside the app's own files
RUNTIME_ONLY = ("backups/", "logs/", "data/")

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV}
    ).stdout


@dataclass
class ExampleRepo:
    path: Path
    out: Path

    @classmethod
    def create(cls, where: Path) -> ExampleRepo:
        repo = where / "nesop-store"
        subprocess.run([str(EXAMPLE / "make-release-repo"), str(repo)], check=True, capture_output=True)
        out = where / "debs"
        out.mkdir()
        return cls(repo, out)

    def exclude(self) -> tuple[str, ...]:
        return load_config((self.path / "nesop-deb.toml").read_text()).files.exclude

    def build(self, ref: str, *args: str, name: str | None = None) -> Path:
        """`nesop-deb build` of ``ref`` (checked out in a worktree); returns the .deb."""
        key = name or ref.replace("/", "-")
        target = self.out / key
        if target.exists():
            return next(target.rglob("*.deb"))  # a --full package is in full/
        work = self.out / f"wt-{key}"
        _git(self.path, "worktree", "add", "--detach", "-f", str(work), ref)
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nesop_deb.cli.build",
                    "build",
                    "-C",
                    str(work),
                    "--output",
                    str(target),
                    *args,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, **GIT_ENV},
            )
            if result.returncode != 0:
                raise AssertionError(f"nesop-deb build {ref} failed: {result.stderr}")
        finally:
            _git(self.path, "worktree", "remove", "--force", str(work))
        return Path(result.stdout.strip().splitlines()[-1])

    def tree(self, ref: str) -> dict[str, tuple[str, int]]:
        """The app files a release ships: path → (sha256, mode), from git."""
        exclude = self.exclude()
        files: dict[str, tuple[str, int]] = {}
        data = _git(self.path, "archive", "--format=tar", ref)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.isfile() and not excluded(m.name, exclude):
                    fh = tar.extractfile(m)
                    assert fh is not None
                    files[m.name] = (
                        hashlib.sha256(fh.read()).hexdigest(),
                        0o755 if m.mode & 0o100 else 0o644,
                    )
        return files

    def extract(self, ref: str, dest: Path) -> None:
        data = _git(self.path, "archive", "--format=tar", ref)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.issym():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(m.linkname)
                elif m.isfile():
                    fh = tar.extractfile(m)
                    assert fh is not None
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(fh.read())
                    target.chmod(0o755 if m.mode & 0o100 else 0o644)


def install_toolchain(box: Container, toolchain: Path) -> None:
    box.copy_in(toolchain, f"/var/tmp/{toolchain.name}")
    box.run(["apt-get", "install", "-y", "-q", f"/var/tmp/{toolchain.name}"], timeout=300)


def deploy_by_hand(box: Container, repo: ExampleRepo, ref: str, *, app_owns_tree: bool = False) -> None:
    """Deploy a release by hand: copy, migrate, enable the unit. The tree is root's and the
    store's account owns data/ (what nesop-deb.toml's [app] writable says); ``app_owns_tree``:
    the whole tree is the account's, as the original guide left servers."""
    root = box.path(APP_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    repo.extract(ref, root)
    exclude = repo.exclude()
    for path in sorted(root.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and excluded(rel, exclude):
            path.unlink()
    box.write_file(
        "/etc/systemd/system/nesop-store.service.d/local.conf",
        f"[Service]\nEnvironment=NESOP_STORE_ADMIN_TOKEN={ADMIN_TOKEN}\n",
    )
    box.sh(
        f"""
        useradd --system --home-dir {APP_ROOT} --no-create-home --shell /usr/sbin/nologin --user-group nesop
        mkdir -p {APP_ROOT}/data
        /opt/venvs/nesop-deb/bin/yoyo apply --batch --no-config-file \
            --database sqlite:///{DB} {APP_ROOT}/migrations
        chown -R nesop:nesop {APP_ROOT if app_owns_tree else APP_ROOT + "/data"}
        chmod 0750 {APP_ROOT}/data
        cp {APP_ROOT}/deploy/nesop-store.service /etc/systemd/system/
        systemctl daemon-reload
        systemctl enable --now nesop-store.service
        """
    )
    box.wait_http(HEALTH, timeout=30)


JOURNAL = f"/var/lib/{PACKAGE}/journal.json"


def apt_install(
    box: Container, deb: Path, *, check: bool = False, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    box.copy_in(deb, f"/var/tmp/{deb.name}")
    return box.run(
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", *extra, f"/var/tmp/{deb.name}"],
        check=check,
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def apply_ok(box: Container, repo: ExampleRepo, ref: str) -> None:
    """Build ``ref``'s update and install it with apt; it must succeed."""
    result = apt_install(box, repo.build(ref))
    assert result.returncode == 0, result.stdout + result.stderr


def live_tree(box: Container, *, beside: tuple[str, ...] = ()) -> dict[str, tuple[str, int]]:
    """The app's files on the server: path → (sha256, mode). ``beside``: more directories (as
    ``"venv/"``) that are not the app's own files, as a virtualenv made by hand in the tree."""
    root = box.path(APP_ROOT)
    files: dict[str, tuple[str, int]] = {}
    skipped = (*RUNTIME_ONLY, *beside)
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if any(rel == p.rstrip("/") or rel.startswith(p) for p in skipped) or "__pycache__" in rel:
            continue
        if path.is_file() and not path.is_symlink():
            files[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o777)
    return files


def owners(box: Container, under: str | None = None) -> set[tuple[int, int]]:
    """(uid, gid) of the app's files: the code (``under`` None: not in backups, logs or data),
    or those below ``under``."""
    root = box.path(APP_ROOT)
    found = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        inside = rel.startswith(under + "/") if under else not rel.startswith(("backups", "logs", "data"))
        if p.is_file() and not p.is_symlink() and inside:
            found.add((p.stat().st_uid, p.stat().st_gid))
    return found


_DUMP = r"""
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
ours = lambda name: not (name.startswith("_yoyo") or name == "yoyo_lock")
objects = c.execute("select type, name, sql from sqlite_master where sql is not null").fetchall()
schema = sorted(sql for _t, name, sql in objects if ours(name))
tables = sorted(name for t, name, _s in objects if t == "table" and ours(name))
rows = {t: [list(r) for r in c.execute(f'select * from "{t}" order by rowid')] for t in tables}
migrations = [r[0] for r in c.execute("select migration_id from _yoyo_migration order by migration_id")]
print(json.dumps({"schema": schema, "rows": rows, "migrations": migrations}))
"""


def db_dump(box: Container) -> dict[str, Any]:
    out = box.run(["python3", "-c", _DUMP, DB]).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def dpkg_status(box: Container) -> tuple[str, str]:
    r = box.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Version}", PACKAGE], check=False)
    if r.returncode != 0:
        return ("not-installed", "")
    abbrev, _, version = r.stdout.partition("|")
    return abbrev.strip(), version.strip()


def history(box: Container) -> list[dict[str, Any]]:
    """The update history, with any entries still waiting in the state directory (what
    `nesop-update history` shows): an entry the full app file system could not take waits there."""
    entries: list[dict[str, Any]] = []
    for path in (f"{APP_ROOT}/logs/update_history.json", f"/var/lib/{PACKAGE}/history-pending.json"):
        if box.path(path).exists():
            entries += json.loads(box.path(path).read_text())
    return entries


def health(box: Container) -> dict[str, Any]:
    response = box.http_get(HEALTH)
    assert response.status == 200, response.text
    data: dict[str, Any] = json.loads(response.text)
    return data


def register_customers(box: Container, n: int) -> list[str]:
    """Write rows through the app's API; return the e-mails it acknowledged (201 = committed)."""
    acknowledged = []
    for _ in range(n):
        email = f"c-{uuid.uuid4().hex[:12]}@example.com"
        body = json.dumps({"name": "E2E Customer", "email": email}).encode()
        response = box.http("POST", "http://127.0.0.1:5000/api/register", body)
        if response.status == 201:
            acknowledged.append(email)
    return acknowledged


def customer_emails(box: Container) -> set[str]:
    query = "select email from customers"
    script = f"import sqlite3\nfor r in sqlite3.connect('{DB}').execute('{query}'): print(r[0])"
    out = box.run(["python3", "-c", script]).stdout
    return set(out.split())


def assert_tree(box: Container, repo: ExampleRepo, ref: str, *, beside: tuple[str, ...] = ()) -> None:
    expected = repo.tree(ref)
    live = live_tree(box, beside=beside)
    missing = sorted(set(expected) - set(live))
    extra = sorted(set(live) - set(expected))
    differ = sorted(p for p in set(expected) & set(live) if expected[p] != live[p])
    assert (missing, extra, differ) == ([], [], []), (
        f"live tree != {ref}: missing {missing}, extra {extra}, differ {differ}"
    )


def snapshot(box: Container) -> Mapping[str, Any]:
    return {"tree": live_tree(box), "db": db_dump(box)}


def assert_configure_a_completes_the_update(
    box: Container, repo: ExampleRepo, rows: list[str], *, before: str = "interrupted", retry: bool = False
) -> None:
    """After the fault: `dpkg --configure -a` ends with 1.0.5 whole, healthy, every row kept.

    ``before``: what the history says of the attempt the fault broke ("interrupted": a crash the
    recovery undid; "failed": a step that failed and was undone; "any": a crash while committing,
    undone or kept depending on the instant). ``retry``: the version failed after the stop, so it
    is tried again the documented way, `nesop-update retry`."""
    if before == "interrupted":
        assert box.path(JOURNAL).exists(), "the journal must survive the fault"
    command = ["nesop-update", "retry"] if retry else ["dpkg", "--configure", "-a"]
    result = box.run(command, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not box.path(JOURNAL).exists()
    assert dpkg_status(box) == ("ii", "1.0.5")
    assert_tree(box, repo, "v1.0.5")
    assert health(box)["version"] == "1.0.5"
    assert set(rows) <= customer_emails(box)
    assert box.run(["dpkg", "--audit"]).stdout.strip() == ""
    statuses = [(e["action"], e["version"], e["status"]) for e in history(box)]
    if before == "interrupted":
        assert ("recover", "1.0.5", "interrupted") in statuses
    elif before == "failed":
        assert ("apply", "1.0.5", "failed") in statuses
    if retry:
        assert ("apply", "1.0.5", "refused") in statuses, "configure -a must have refused it first"
    assert statuses[-1] in (("apply", "1.0.5", "success"), ("recover", "1.0.5", "committed")), statuses
    assert leftovers(box) == []


def assert_not_tried_again_on_its_own(box: Container, version: str, step: str) -> None:
    """A version that failed after the stop: apt's next `dpkg --configure -a` refuses it before
    the stop (the app keeps its process), says why and the ways out, and dpkg stays honest."""
    pid = box.service_main_pid(UNIT)
    before = snapshot(box)
    result = box.run(["dpkg", "--configure", "-a"], check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{version} failed at {step}" in output and "nesop-update retry" in output, output[-2000:]
    # the way back: the live version's package, or (on a server deployed by hand) none at all
    assert f"apt install {PACKAGE}=" in output or f"apt remove {PACKAGE}`" in output, output[-2000:]
    assert box.service_main_pid(UNIT) == pid, "the app must not be stopped for a retry nobody asked for"
    assert snapshot(box) == before
    assert dpkg_status(box) == ("iF", version)
    last = history(box)[-1]
    assert (last["action"], last["version"], last["status"]) == ("apply", version, "refused"), last


GATE = f"/var/lib/{PACKAGE}/gate"


def leftovers(box: Container) -> list[str]:
    """What a finished update must not leave: staged files, partial backups, reserved space, a
    gate still closed (every start of the app would wait at it)."""
    root = box.path(APP_ROOT)
    found = sorted(
        str(p.relative_to(root))
        for pattern in ("*.nesop-tmp", ".*.partial", ".reserve-*", "*.part")
        for p in root.rglob(pattern)
    )
    gate = box.path(GATE)
    if gate.exists() and gate.read_text():
        found.append(f"{GATE}: {gate.read_text().strip()}")
    return found


def assert_old_version_whole(
    box: Container,
    repo: ExampleRepo,
    rows: list[str],
    failed_at: tuple[str, ...] | None,
    *,
    clean: bool = True,
) -> dict[str, Any]:
    """A failed update to 1.0.5: 1.0.4 whole and healthy, every row, `iF`, the history naming
    the step that failed (one of ``failed_at``; None: the history could not be written yet).
    Returns that history entry. ``clean``: nothing left behind (not when the fault left the
    backups dir read-only)."""
    assert_tree(box, repo, "v1.0.4")
    assert health(box)["version"] == "1.0.4"
    assert set(rows) <= customer_emails(box)
    assert dpkg_status(box) == ("iF", "1.0.5")
    assert not box.path(JOURNAL).exists()
    last: dict[str, Any] = {}
    if failed_at is not None:
        last = history(box)[-1]
        said = (last["action"], last["version"], last["status"])
        assert said == ("apply", "1.0.5", "failed"), json.dumps(last)
        assert last["failed_step"] in failed_at, json.dumps(last)
        assert last["undo_errors"] == [] and last["old_app_healthy"] is True, json.dumps(last)
    if clean:
        left = leftovers(box)
        assert left == [], left
    return last
