"""The app's own service account attacks the root code that maintains it.

On a server deployed the way the original guide left it (`store.deploy_by_hand(...,
app_owns_tree=True)`), the app tree belongs to the app user, so a compromised app can plant
symlinks, rename root's directories away (it owns their parent) and forge backups there. Whatever
it plants, a real update, a failed update, an apt downgrade or `nesop-update rollback NAME`, all
run as root, must not write, chown or chmod anything outside the app tree, nor leave a setuid or
setgid file in it. The runtime may finish the operation without the planted thing or refuse with
an error naming it; either way the app ends healthy at one whole version and dpkg tells the truth
(``ii`` that version, or ``iF`` the newer one with the old app restored).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from . import store
from .testbed import Container

APP_USER = "nesop"
CANARY = "/etc/nesop-canary"  # root:root 0600 "canary": must never change
CANARY_NEW = "/etc/nesop-canary-new"  # must never appear
TARGET_DIR = "/etc/nesop-target-dir"  # root:root 0755 holding `keep`: must never change
WATCHED = (CANARY, CANARY_NEW, "/etc/shadow", TARGET_DIR, f"{TARGET_DIR}/keep")
TMP = ".nesop-tmp"
DB_REL = os.path.relpath(store.DB, store.APP_ROOT)  # the database, app-relative
MIGRATIONS = {
    "1.0.5": ["0001_initial", "0002_product_stock", "0003_product_categories"],
    "1.0.6": ["0001_initial", "0002_product_stock", "0003_product_categories", "0004_newsletter"],
}

# app version -> (the git ref of its files, the dpkg statuses that tell the truth while it runs)
Outcomes = Mapping[str, tuple[str, Collection[tuple[str, str]]]]


# -- what the attacker does -------------------------------------------------------------------


def lpath(box: Container, path: str) -> Path:
    """Host path of ``path`` in the container, its last component not followed (`box.path`
    resolves every symlink, a planted one included)."""
    where = PurePosixPath(path)
    return box.path(str(where.parent)) / where.name


def as_app(box: Container, script: str) -> str:
    """Run a shell script as the app's service account, in the app root; its stdout."""
    argv = ["runuser", "-u", APP_USER, "--", "/bin/sh", "-euc", script]
    return box.run(argv, cwd=store.APP_ROOT).stdout


def app_ids(box: Container) -> tuple[int, int]:
    return int(box.run(["id", "-u", APP_USER]).stdout), int(box.run(["id", "-g", APP_USER]).stdout)


def plant_tmp_links(box: Container, rels: Iterable[str], target: str = CANARY) -> list[str]:
    """``<rel>.nesop-tmp -> target`` for every app-relative ``rel``, as the app user."""
    links = sorted({rel + TMP for rel in rels})
    as_app(
        box,
        "\n".join(
            f'mkdir -p "$(dirname {shlex.quote(p)})"; ln -sfn {target} {shlex.quote(p)}' for p in links
        ),
    )
    assert all(lpath(box, f"{store.APP_ROOT}/{p}").is_symlink() for p in links)
    return links


def move_away(box: Container, name: str) -> str:
    """Rename the app root's ``name`` (root's, 0700 or not) aside: the app user owns the parent."""
    moved = f"{name}.attacker-moved"
    as_app(box, f"mv {name} {moved}")
    return moved


# -- what must hold -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A watched path outside the app tree: kind, owner, mode and content (a digest, a listing)."""

    kind: str
    uid: int = -1
    gid: int = -1
    mode: int = 0
    content: str = ""

    def __str__(self) -> str:
        if self.kind == "absent":
            return "absent"
        return f"{self.kind} {self.uid}:{self.gid} {self.mode:04o} {self.content}"


def _seen(path: Path) -> Seen:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Seen("absent")
    if stat.S_ISLNK(st.st_mode):
        kind, content = "symlink", os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        kind, content = "dir", "[" + ", ".join(sorted(os.listdir(path))) + "]"
    else:
        data = path.read_bytes()
        kind, content = (
            "file",
            f"{data[:24]!r} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]})",
        )
    return Seen(kind, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)


def outside(box: Container) -> dict[str, Seen]:
    return {p: _seen(lpath(box, p)) for p in WATCHED}


def plant_canaries(box: Container) -> dict[str, Seen]:
    """Root's files outside the app tree that no attack may touch; what they are now."""
    box.sh(
        f"""
        printf canary > {CANARY}; chown root:root {CANARY}; chmod 0600 {CANARY}
        rm -f {CANARY_NEW}
        mkdir -p {TARGET_DIR}; chown root:root {TARGET_DIR}; chmod 0755 {TARGET_DIR}
        printf keep > {TARGET_DIR}/keep; chmod 0644 {TARGET_DIR}/keep
        """
    )
    seen = outside(box)
    canary = seen[CANARY]
    assert (canary.kind, canary.uid, canary.gid, canary.mode) == ("file", 0, 0, 0o600), canary
    assert canary.content.startswith("b'canary'"), canary
    assert seen[CANARY_NEW].kind == "absent"
    return seen


def setid_files(box: Container) -> list[str]:
    """Every setuid or setgid file in the app tree (symlinks are not followed)."""
    root = box.path(store.APP_ROOT)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = Path(dirpath, name).lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                rel = Path(dirpath, name).relative_to(root)
                found.append(f"{rel} ({st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):04o})")
    return sorted(found)


def assert_contained(box: Container, before: Mapping[str, Seen]) -> None:
    """The security property: nothing outside the app tree changed, no setuid/setgid file in it."""
    after = outside(box)
    problems = [
        f"changed outside the app tree: {p}: {before[p]} -> {after[p]}"
        for p in WATCHED
        if after[p] != before[p]
    ]
    problems += [f"setuid/setgid file in {store.APP_ROOT}: {f}" for f in setid_files(box)]
    assert not problems, "; ".join(problems)


def wait_healthy(box: Container, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = box.wait_http(store.HEALTH, timeout=timeout)
        if response.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status == 200, f"the app is not healthy: {response.status} {response.text[:300]}"
    data: dict[str, Any] = json.loads(response.text)
    return data


def tree(box: Container, ignore: tuple[str, ...] = ()) -> dict[str, tuple[str, int]]:
    """The app's files (`store.live_tree`) without what the attacker left: ``ignore`` prefixes."""
    return {p: v for p, v in store.live_tree(box).items() if not p.startswith(ignore)}


def assert_whole(
    box: Container, repo: store.ExampleRepo, outcomes: Outcomes, ignore: tuple[str, ...] = ()
) -> str:
    """The app is healthy at one whole version of ``outcomes`` and dpkg says so; that version."""
    version = str(wait_healthy(box)["version"])
    assert version in outcomes, f"the app runs {version}, expected one of {sorted(outcomes)}"
    ref, statuses = outcomes[version]
    expected, live = repo.tree(ref), tree(box, ignore)
    missing = sorted(set(expected) - set(live))
    extra = sorted(set(live) - set(expected))
    differ = sorted(p for p in set(expected) & set(live) if expected[p] != live[p])
    assert (missing, extra, differ) == ([], [], []), (
        f"live tree != {ref}: missing {missing}, extra {extra}, differ {differ}"
    )
    status = store.dpkg_status(box)
    assert status in statuses, f"dpkg says {status} while the app runs {version}"
    if status[0] == "iF":
        last = store.history(box)[-1]
        assert (last["status"], last["undo_errors"]) == ("failed", []), json.dumps(last)
    if version in MIGRATIONS:
        assert store.db_dump(box)["migrations"] == MIGRATIONS[version]
    return version


def assert_refusal_names(output: str, names: Iterable[str]) -> None:
    names = list(names)
    assert any(n in output for n in names), (
        f"the operation failed without naming what was planted (one of {names[:6]}...):\n{output[-3000:]}"
    )


def assert_rollback_outcome(
    box: Container,
    repo: store.ExampleRepo,
    result: subprocess.CompletedProcess[str],
    before: Mapping[str, Any],
    names: Iterable[str],
    ignore: tuple[str, ...] = (),
) -> None:
    """`nesop-update rollback NAME` either restored 1.0.1 whole, or refused naming the plant and
    changed nothing (files and database as before the command), the app healthy at 1.0.1."""
    if result.returncode == 0:
        assert_whole(box, repo, {"1.0.1": ("v1.0.1", {("ii", "1.0.1")})}, ignore)
        return
    assert_refusal_names(result.stdout + result.stderr, names)
    assert wait_healthy(box)["version"] == "1.0.1"
    assert {"tree": tree(box, ignore), "db": store.db_dump(box)} == before, (
        "a refused rollback changed the app"
    )
    assert store.dpkg_status(box) == ("ii", "1.0.1")


# -- set-up ----------------------------------------------------------------------------------


def _rollback(box: Container, name: str) -> subprocess.CompletedProcess[str]:
    return box.run(["nesop-update", "rollback", name], check=False, timeout=300)


def _apt(box: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run(["apt-get", "-y", "-q", *args], check=False, timeout=300)


# -- 1. the restore of a file writes through <file>.nesop-tmp ------------------------------------


def test_tmp_links_do_not_redirect_the_restore_of_a_named_backup(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.1")
    server.run(["nesop-update", "backup", "before-experiment"])
    server.sh(f"cd {store.APP_ROOT}; echo '# experiment' >> config.py; echo '# experiment' >> server.py")
    canaries = plant_canaries(server)
    before = {"tree": tree(server), "db": store.db_dump(server)}
    planted = plant_tmp_links(server, repo.tree("v1.0.1"))

    result = _rollback(server, "before-experiment")

    assert_contained(server, canaries)
    assert_rollback_outcome(server, repo, result, before, planted)


def test_tmp_links_do_not_redirect_an_apt_downgrade(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.1")
    store.apply_ok(server, repo, "v1.0.2")  # modifies, adds, deletes and renames files
    canaries = plant_canaries(server)
    planted = plant_tmp_links(server, {*repo.tree("v1.0.1"), *repo.tree("v1.0.2")})

    result = _apt(server, "install", "--allow-downgrades", f"{store.PACKAGE}=1.0.1")

    assert_contained(server, canaries)
    if result.returncode != 0:
        assert_refusal_names(result.stdout + result.stderr, planted)
    assert_whole(
        server, repo, {"1.0.1": ("v1.0.1", {("ii", "1.0.1")}), "1.0.2": ("v1.0.2", {("ii", "1.0.2")})}
    )


def test_tmp_links_do_not_redirect_the_undo_of_a_failed_update(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.4", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.5")
    rows = store.register_customers(server, 2)
    # its server.py dies at start; from 1.0.5 it also deletes maintenance.html and migrates (0004)
    broken = ("broken/start", "--version", "1.0.7", "--since", "v1.0.5")
    deb = repo.build(*broken, name="attacks-broken-start-since-1.0.5")
    canaries = plant_canaries(server)
    plant_tmp_links(server, {*repo.tree("v1.0.5"), *repo.tree("broken/start")})

    result = store.apt_install(server, deb)

    assert_contained(server, canaries)
    assert result.returncode != 0, "the broken update was applied"
    assert_whole(server, repo, {"1.0.5": ("v1.0.5", {("iF", "1.0.7"), ("ii", "1.0.5")})})
    assert set(rows) <= store.customer_emails(server)


# -- 2. the database restore writes through <db>.nesop-tmp ---------------------------------------


def test_db_tmp_link_does_not_redirect_the_database_restore(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.1")
    rows = store.register_customers(server, 2)
    server.run(["nesop-update", "backup", "with-database"])  # a manual backup holds the database
    canaries = plant_canaries(server)
    before = {"tree": tree(server), "db": store.db_dump(server)}
    planted = plant_tmp_links(server, [DB_REL])

    result = _rollback(server, "with-database")

    assert_contained(server, canaries)
    assert_rollback_outcome(server, repo, result, before, planted)
    assert set(rows) <= store.customer_emails(server)


# -- 3. a forged backup in a backups/ the app user put in place ----------------------------------


def test_forged_backup_cannot_write_outside_or_plant_setuid(
    server: Container, example_repo: store.ExampleRepo
) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.1")
    name = "real-backup"
    server.run(["nesop-update", "backup", name])
    canaries = plant_canaries(server)
    uid, gid = app_ids(server)
    ignore = ("backups.attacker-moved/", "etc/", "bin/")  # the attacker's own files
    before = {"tree": tree(server, ignore), "db": store.db_dump(server)}
    zero = "0" * 64
    forged = {
        "name": name,
        "created": "20990101T000000Z",
        "kind": "manual",
        "version": "1.0.1",
        "files": [
            # files/../../../etc/nesop-canary is <root>/etc/nesop-canary: the attacker's payload
            {
                "path": "../../../etc/nesop-canary",
                "sha256": zero,
                "mode": 0o666,
                "uid": uid,
                "gid": gid,
                "link_target": None,
            },
            {"path": "bin/sh-suid", "sha256": zero, "mode": 0o4755, "uid": 0, "gid": 0, "link_target": None},
        ],
        "absent": [],
        "database": None,
    }
    moved = move_away(server, "backups")
    as_app(
        server,
        f"""
        mkdir -p backups/{name}/files/bin etc
        cp /bin/sh backups/{name}/files/bin/sh-suid
        printf 'written by the app user\\n' > etc/nesop-canary
        printf %s {shlex.quote(json.dumps(forged))} > backups/{name}/backup_manifest.json
        """,
    )

    result = _rollback(server, name)

    assert_contained(server, canaries)
    names = ["backups", "../../../etc/nesop-canary", "etc/nesop-canary", "sh-suid", moved]
    assert_rollback_outcome(server, repo, result, before, names, ignore)


# -- 4. the migrate step chowns <db>-shm by path ------------------------------------------------


def test_shm_link_is_not_chowned_by_the_migration(server: Container, example_repo: store.ExampleRepo) -> None:
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.4", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.5")
    rows = store.register_customers(server, 2)
    deb = repo.build("v1.0.6")  # migration 0004
    canaries = plant_canaries(server)
    shm = f"{DB_REL}-shm"
    # Out of WAL mode (its own database), SQLite leaves -shm alone until the app opens it again:
    # the migration runs, and only the chown after it meets the link.
    to_delete_mode = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute('PRAGMA journal_mode = DELETE').fetchone()[0]); c.close()"
    )
    said = as_app(
        server,
        f"""
        python3 -c {shlex.quote(to_delete_mode)} {DB_REL}
        test ! -e {DB_REL}-wal && test ! -e {shm}
        ln -s {CANARY} {shm}
        """,
    )
    assert said.strip() == "delete", said

    result = store.apt_install(server, deb)

    assert_contained(server, canaries)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        assert_refusal_names(output, [shm])
    # SQLite opens -wal and -shm with O_NOFOLLOW: a link there is never its own, and while it stays
    # every connection fails (the app's, an undo's). The runtime may remove it, or refuse naming it
    # before the stop; after a refusal the operator removes it and the old app must be healthy.
    link = lpath(server, f"{store.APP_ROOT}/{shm}")
    if link.is_symlink():
        link.unlink()
    assert_whole(
        server,
        repo,
        {"1.0.6": ("v1.0.6", {("ii", "1.0.6")}), "1.0.5": ("v1.0.5", {("ii", "1.0.5"), ("iF", "1.0.6")})},
    )
    assert set(rows) <= store.customer_emails(server)


# -- 5 and 6. root's records: a linked update.log, a linked backups/ -------------------------------


@pytest.mark.parametrize(
    ("moved_dir", "plant", "names"),
    [
        ("logs", f"mkdir logs && ln -s {CANARY_NEW} logs/update.log", ["update.log", "logs"]),
        ("backups", f"ln -s {TARGET_DIR} backups", ["backups"]),
    ],
    ids=["update-log-link", "backups-link"],
)
def test_root_s_records_never_follow_a_link_outside(
    server: Container, example_repo: store.ExampleRepo, moved_dir: str, plant: str, names: list[str]
) -> None:
    """The account moves root's logs/ or backups/ away and plants a link in its place: root must
    neither create or append a file outside (the log) nor chmod or write into a directory outside
    (the backups)."""
    repo = example_repo
    store.deploy_by_hand(server, repo, "v1.0.0", app_owns_tree=True)
    store.apply_ok(server, repo, "v1.0.1")  # logs/ and backups/ exist now
    deb = repo.build("v1.0.2")
    canaries = plant_canaries(server)
    moved = move_away(server, moved_dir)
    as_app(server, plant)

    result = store.apt_install(server, deb)

    assert_contained(server, canaries)
    if result.returncode != 0:
        assert_refusal_names(result.stdout + result.stderr, names)
    assert_whole(
        server,
        repo,
        {"1.0.2": ("v1.0.2", {("ii", "1.0.2")}), "1.0.1": ("v1.0.1", {("ii", "1.0.1"), ("iF", "1.0.2")})},
        ignore=(f"{moved}/",),
    )
