#!/usr/bin/env python3
"""`make demo`: the whole nesop-deb story on the example NESOP Store, in a booted Debian 13
(`make demo SUITE=bookworm`: Debian 12).

Builds the store's release history and its update packages, boots a container with systemd,
then narrates: first install, an update with a migration, a failing update restored
automatically, a rollback with apt; then the store moving onto pip packages in a virtualenv, a
dependency upgrade, a broken dependency change restored automatically and its rollback with apt;
then systemd holding the store's socket while a customer sees no failed request across updates, a
failed migration and a rollback; and what dpkg -l and nesop-update history say at the end.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from tests.e2e import store  # noqa: E402
from tests.e2e.testbed import BASE_PACKAGES, SUITES, Container, build_base_root, cache_dir_from_env  # noqa: E402

HEALTH = (
    'python3 -c "import urllib.request;'
    "print(urllib.request.urlopen('http://127.0.0.1:5000/health').read().decode())\""
)
# A customer loading a page that reads the database (the e2e tests' client), and what it saw.
CUSTOMER = TOP / "tests/e2e/readclient.py"
PRODUCTS = "http://127.0.0.1:5000/api/products"
CUSTOMER_SAYS = (
    "python3 -c \"import json; r = json.load(open('/root/customer.json')); "
    'print(f\'customer: {r[\\"sent\\"]} requests, {len(r[\\"failures\\"])} failed, '
    'the longest took {r[\\"longest\\"]} s\')"'
)
# The toolchain's own pip, reading the app's virtualenv (the virtualenvs have no pip of their own).
FREEZE = "/opt/venvs/nesop-deb/bin/pip --python /opt/nesop-store/venv/bin/python freeze"
# The servers' python3 by Debian release: the store's [dependencies] python is Debian 13's.
PYTHONS = {"bookworm": "3.11", "trixie": "3.13"}
CONFIG_PYTHON = "3.13"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(title: str, text: str = "") -> None:
    print(f"\n{BOLD}== {title}{RESET}")
    if text:
        print(textwrap.fill(text, 96))


def run(box: Container, cmd: str, *, check: bool = True) -> int:
    print(f"{DIM}root@server# {cmd}{RESET}")
    result = box.run(["sh", "-c", cmd], check=False, timeout=600)
    out = (result.stdout + result.stderr).rstrip()
    if out:
        print(textwrap.indent(out, "  "))
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `{cmd}` failed with exit code {result.returncode}")
    return result.returncode


def build(repo: store.ExampleRepo, ref: str, *args: str, name: str | None = None) -> Path:
    deb = repo.build(ref, *args, name=name)
    print(f"{DIM}dev$ nesop-deb build {shlex.join(args)}  # at {ref}{RESET}\n  {deb.name}")
    return deb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--toolchain", type=Path, required=True, help="the nesop-deb toolchain .deb")
    parser.add_argument(
        "--suite", choices=list(SUITES), default="trixie", help="the Debian release to boot (default: trixie)"
    )
    args = parser.parse_args()

    say("Building the example store's release history and its update packages")
    work = Path(tempfile.mkdtemp(prefix="nesop-demo-", dir="/var/tmp"))
    try:
        return _demo(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _demo(args: argparse.Namespace, work: Path) -> int:
    repo = store.ExampleRepo.create(work)
    full = build(repo, "v1.0.4", "--full", name="full-1.0.4")
    upd5 = build(repo, "v1.0.5")
    upd6 = build(repo, "v1.0.6")
    broken = build(repo, "broken/migration", "--version", "1.0.7", "--since", "v1.0.6")
    # from 1.1.0 the store runs from a virtualenv: its wheels are fetched for the servers' Python
    python = () if PYTHONS[args.suite] == CONFIG_PYTHON else ("--python", PYTHONS[args.suite])
    deps0 = build(repo, "v1.1.0", *python)
    deps1 = build(repo, "v1.1.1", *python)
    broken_deps = build(repo, "broken/import", "--version", "1.1.4", "--since", "v1.1.1", *python)
    # from 1.2.0 systemd holds the store's socket
    sock0 = build(repo, "v1.2.0", "--since", "v1.1.0", *python)
    sock1 = build(repo, "v1.2.1", *python)
    sock2 = build(repo, "v1.2.2", *python)
    broken_sock = build(repo, "broken/socket-migration", "--version", "1.2.3", "--since", "v1.2.2", *python)
    socket_debs = (sock0, sock1, sock2, broken_sock)

    say(f"Booting a Debian {SUITES[args.suite]} ({args.suite}) server with systemd (systemd-nspawn)")
    root = build_base_root(cache_dir_from_env(), BASE_PACKAGES, suite=args.suite)
    box = Container(root)
    try:
        box.boot()
        print(f"  booted in {box.boot_seconds:.2f} s ({box.boot_state})")
        for deb in (args.toolchain, full, upd5, upd6, broken, deps0, deps1, broken_deps, *socket_debs):
            box.copy_in(deb, f"/root/{deb.name}")
        box.copy_in(CUSTOMER, "/root/customer.py")

        say("1. Install the toolchain, then the store itself from a --full package")
        run(
            box,
            f"cd /root && apt-get install -y -q ./{args.toolchain.name} >/dev/null && nesop-update --version",
        )
        run(
            box,
            f"cd /root && apt-get install -y -q ./{full.name} 2>&1 | grep -E '^(  )?(->|<-)|healthy|now at'",
        )
        run(box, HEALTH)

        say("2. An update with a database migration (1.0.4 -> 1.0.5)")
        run(box, f"nesop-deb inspect /root/{upd5.name}")
        run(box, f"cd /root && apt-get install -y -q ./{upd5.name} 2>&1 | grep -E 'healthy|now at|migrat'")
        run(box, f"cd /root && apt-get install -y -q ./{upd6.name} 2>&1 | grep -E 'healthy|now at'")

        say(
            "3. A failing update is restored automatically",
            "1.0.7 carries two migrations; the second fails half-way. nesop-deb undoes the first with its "
            "rollback file, restores the files, restarts 1.0.6 and fails loudly through dpkg.",
        )
        run(
            box,
            f"cd /root && apt-get install -y -q ./{broken.name} 2>&1 | grep -E 'FAILED|undo|restored'",
            check=False,
        )
        run(box, "dpkg -l nesop-store-update | tail -1")
        run(box, "nesop-update status")

        say("4. Roll back with apt: back to 1.0.5")
        run(
            box,
            "apt-get install -y -q --allow-downgrades nesop-store-update=1.0.5 2>&1 | tail -3",
            check=False,
        )

        say(
            "5. Dependencies: the store moves onto gunicorn, in a virtualenv (1.0.6 again, then 1.1.0)",
            "1.1.0 adds [dependencies]: requirements.txt pins gunicorn and MarkupSafe with their hashes, and "
            "the package carries their wheels, fetched for the server's Python. The server builds a "
            "virtualenv from them, offline, before the stop; inside the outage /opt/nesop-store/venv "
            "becomes a link to it, and the new unit runs venv/bin/gunicorn.",
        )
        run(box, "apt-get install -y -q nesop-store-update=1.0.6 2>&1 | grep -E 'released|now at'")
        run(
            box,
            f"cd /root && apt-get install -y -q ./{deps0.name} 2>&1 "
            "| grep -E 'venv|virtualenv|replaced|now at'",
        )
        run(box, "readlink /opt/nesop-store/venv")
        run(box, FREEZE)

        say(
            "6. A dependency upgrade: MarkupSafe 3.0.3 -> 3.0.4 (1.1.0 -> 1.1.1)",
            "The package carries the new MarkupSafe wheel: the server keeps every wheel an update shipped, "
            "so an update needs only what is new. The new virtualenv is built beside the live one while "
            "1.1.0 serves (venv-build, before stop), and venv-switch points the link at it in one rename.",
        )
        run(box, f"nesop-deb inspect /root/{deps1.name} | grep -E '^(virtualenv|wheels)|whl'")
        run(
            box,
            f"cd /root && apt-get install -y -q ./{deps1.name} 2>&1 | grep -E '^  -> |virtualenv|now at'",
        )
        run(box, "nesop-update status | grep virtualenv")
        run(box, FREEZE)

        say(
            "7. A broken dependency change is restored automatically",
            "1.1.4 makes receipt links expire with itsdangerous's TimedJSONWebSignatureSerializer and pins "
            "itsdangerous 2.2.0, which no longer has it. The virtualenv builds and every package in it "
            "imports, but the app does not start: the health gate fails, the undo points the link back "
            "and removes the new virtualenv, and 1.1.1 runs again from its own.",
        )
        run(
            box,
            f"cd /root && apt-get install -y -q ./{broken_deps.name} 2>&1 "
            "| grep -E '^  -> (venv|undo venv)|virtualenv|pruned|FAILED'",
            check=False,
        )
        run(box, "nesop-update status | grep -E '^(version|package|virtualenv)'")
        run(box, FREEZE)

        say(
            "8. Roll the dependency change back with apt: back to 1.1.0",
            "1.1.1's backup recorded where the link pointed; the rollback points it back at 1.1.0's "
            "virtualenv, still on the server: nothing is built or fetched.",
        )
        run(
            box,
            "apt-get install -y -q --allow-downgrades nesop-store-update=1.1.0 2>&1 "
            "| grep -E 'roll back|virtualenv|held|back at'",
            check=False,
        )
        run(box, FREEZE)

        say(
            "9. Zero failed requests: systemd holds the store's socket (1.1.0 -> 1.2.0)",
            "1.2.0 ships deploy/nesop-store.socket ([app] socket_file). The update installs, enables and "
            "starts it while the store is stopped; from then on connections that arrive during an update "
            "wait in the socket's queue and the store that starts next answers them. A gate keeps the old "
            "store from being started by such a connection in the middle of the update.",
        )
        run(
            box,
            f"cd /root && apt-get install -y -q ./{sock0.name} 2>&1 | grep -E 'socket|now at'",
        )
        run(box, "nesop-update status | grep -E '^(service|socket|gate)'")

        say(
            "10. A customer keeps loading the product list across two updates, a failed migration and an "
            "apt rollback",
            "Four clients, each request on a new connection, in the background on the server.",
        )
        run(
            box,
            f"setsid python3 /root/customer.py {PRODUCTS} /root/stop-customer 4 >/root/customer.json 2>&1 &",
        )
        run(box, f"cd /root && apt-get install -y -q ./{sock1.name} 2>&1 | grep -E 'healthy|now at'")
        run(box, f"cd /root && apt-get install -y -q ./{sock2.name} 2>&1 | grep -E 'migrat|healthy|now at'")
        run(
            box,
            f"cd /root && apt-get install -y -q ./{broken_sock.name} 2>&1 | grep -E 'FAILED|restored'",
            check=False,
        )
        run(
            box,
            "apt-get install -y -q --allow-downgrades nesop-store-update=1.2.1 2>&1"
            " | grep -E 'roll back|back at'",
            check=False,
        )
        run(box, "touch /root/stop-customer; while ! [ -s /root/customer.json ]; do sleep 0.2; done")
        run(box, CUSTOMER_SAYS)

        say("11. What happened, as dpkg and nesop-update tell it")
        run(box, "dpkg -l nesop-store-update | tail -1")
        run(box, "nesop-update history")
        run(box, "nesop-update validate", check=False)
        say("12. The store answers /health, from inside the container, through systemd")
        run(box, HEALTH)
        say("Done", "The store answered /health through systemd at every step that succeeded.")
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
