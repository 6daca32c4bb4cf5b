#!/usr/bin/env python3
"""`make fleet-demo`: a rollout to a fleet of five booted servers (four Debian 13, one Debian 12),
each in its own network namespace on a private bridge, driven by Ansible over SSH.

Builds the example store's packages and publishes them with the toolchain into a signed apt
repository (`nesop-deb publish`), served inside the fleet's network; then narrates: the first
install everywhere, a rollout of 1.0.5 in batches, a rollout of 1.0.6 that fails on the second
batch's host and halts there, a fleet rollback to 1.0.5 with the same playbook, and what every
host runs at the end. Any step that does not end as told ends the demo with an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from tests.e2e import store  # noqa: E402
from tests.e2e.baseroot import SUITES, build_base_root, cache_dir_from_env  # noqa: E402
from tests.e2e.fleet import CONTROLLER, FLEET_NEEDS, FLEET_PACKAGES, Fleet, missing_fleet_prerequisites  # noqa: E402
from tests.e2e.rollout import PLAYBOOK, Repository, Rollout, report_table, rollout  # noqa: E402

# host5 runs Debian 12: the repository has a suite per release, each with its own toolchain
RELEASES = ("trixie", "trixie", "trixie", "trixie", "bookworm")
NAMES = tuple(f"host{i}" for i in range(1, len(RELEASES) + 1))
PORT = 8000
URL = f"http://{CONTROLLER}:{PORT}/"
HEALTH = (
    'python3 -c "import urllib.request;'
    "print(urllib.request.urlopen('http://127.0.0.1:5000/health').read().decode())\""
)
DPKG = f"dpkg -l {store.PACKAGE} | tail -1"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(title: str, text: str = "") -> None:
    print(f"\n{BOLD}== {title}{RESET}")
    if text:
        print(textwrap.fill(text, 96))


def shown(prompt: str, cmd: str) -> None:
    print(f"{DIM}{prompt} {cmd}{RESET}")


def shown_argv(prompt: str, argv: list[str], width: int = 96) -> None:
    """A long command line, broken into lines of at most `width` with backslashes (an option and
    its value stay together)."""
    words: list[str] = []
    for arg in map(shlex.quote, argv):
        if words and words[-1].startswith("-") and " " not in words[-1]:
            words[-1] += " " + arg
        else:
            words.append(arg)
    lines = [prompt]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > width - 2:
            lines[-1] += " \\"
            lines.append("   ")
        lines[-1] += " " + word
    print(DIM + "\n".join(lines) + RESET)


def indented(text: str) -> None:
    if text.strip():
        print(textwrap.indent(text.rstrip(), "  "))


def expect(condition: bool, what: str) -> None:
    """The demo ends, failing, when a step did not end as it says."""
    if not condition:
        raise SystemExit(f"demo: {what}")


class Demo:
    def __init__(self, work: Path, toolchains: Mapping[str, Path]) -> None:
        self.work = work
        self.toolchains = toolchains
        self.fleet = Fleet(
            [build_base_root(cache_dir_from_env(), FLEET_PACKAGES, suite=s) for s in RELEASES],
            work / "fleet",
            names=NAMES,
        )
        self.repo = Repository(work / "publish")  # the key: closed by _demo
        self.reports = work / "reports"
        self.reports.mkdir()
        self.runs = 0

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.work))

    # -- on the build machine ---------------------------------------------

    def publish(self, *debs: Path, suites: tuple[str, ...]) -> None:
        args = ["--repo", self.rel(self.repo.dir), "--sign", self.repo.key.fingerprint]
        args += [a for s in suites for a in ("--suite", s)] + ["--url", URL] + [deb.name for deb in debs]
        shown_argv("dev$", ["nesop-deb", "publish", *args])
        out = self.repo.publish(*debs, suites=suites, url=URL)
        indented(out.replace(str(self.work) + "/", ""))

    # -- on the servers ---------------------------------------------------

    def on(self, name: str, cmd: str, *, check: bool = True) -> str:
        shown(f"root@{name}#", cmd)
        result = self.fleet.host(name).box.run(["sh", "-c", cmd], check=False, timeout=300)
        out = (result.stdout + result.stderr).rstrip()
        indented(out)
        expect(
            not check or result.returncode == 0,
            f"`{cmd}` on {name} failed with exit code {result.returncode}",
        )
        return out

    def dpkg_lines(self) -> None:
        shown(f"root@{{{','.join(NAMES)}}}#", DPKG)
        for host in self.fleet.hosts:
            line = host.box.run(["sh", "-c", DPKG]).stdout.strip()
            print(f"  {host.name}  {' '.join(line.split()[:3])}")

    def keep_journals(self) -> None:
        """After a step that did not end as told: each host's journal beside its console log."""
        for host in self.fleet.hosts:
            with contextlib.suppress(Exception):
                journal = host.box.run(["journalctl", "-b", "--no-pager"], check=False, timeout=60).stdout
                (self.work / "fleet" / host.name / "journal.txt").write_text(journal)

    def health(self, name: str) -> dict[str, Any]:
        box = self.fleet.host(name).box
        response = box.http_get(store.HEALTH)
        expect(response.status == 200, f"{name}'s /health answered {response.status}: {response.text[:300]}")
        data: dict[str, Any] = json.loads(response.text)
        return data

    def expect_hosts(self, versions: Mapping[str, str]) -> None:
        """Every host `ii` on its version, healthy, its app on that version."""
        for name, version in versions.items():
            dpkg = store.dpkg_status(self.fleet.host(name).box)
            expect(dpkg == ("ii", version), f"{name}: dpkg says {dpkg}, not ii {version}")
            health = self.health(name)
            expect(
                (health["status"], health["version"]) == ("ok", version),
                f"{name}: /health says {health['status']} {health['version']}, not ok {version}",
            )

    # -- from the controller ----------------------------------------------

    def rollout(self, version: str, **extra: object) -> Rollout:
        self.runs += 1
        report = self.reports / f"rollout-{self.runs}.json"
        args = ["-i", self.rel(self.fleet.inventory), str(PLAYBOOK.relative_to(TOP))]
        variables = {
            "nesop_package": store.PACKAGE,
            "nesop_version": version,
            "nesop_repo_url": URL,
            "nesop_repo_key": self.rel(self.repo.key_file),
            "nesop_report": self.rel(report),
        }
        args += [a for k, v in variables.items() for a in ("-e", f"{k}={v}")]
        args += [a for k, v in extra.items() for a in ("-e", json.dumps({k: v}))]
        shown_argv("controller$", ["ansible-playbook", *args])
        started = time.monotonic()
        run = rollout(self.fleet, self.repo, URL, version, report, **extra)
        print(f"  {DIM}(exit {run.result.returncode}, {time.monotonic() - started:.0f} s; condensed:){RESET}")
        indented(condensed(run.result.stdout))
        return run

    def table(self, run: Rollout) -> None:
        print(f"{DIM}controller$ # the report, {self.rel(self.reports)}/rollout-{self.runs}.json:{RESET}")
        indented(f"outcome: {run.report['outcome']}, batches: {run.report['batches']}")
        indented(report_table(run.report))


def condensed(output: str) -> str:
    """ansible-playbook's output as its plays (with the number of tasks each ran) and its recap."""
    lines: list[str] = []
    tasks = 0
    recap = False
    for raw in output.splitlines():
        line = raw.rstrip(" *")
        if line.startswith("PLAY RECAP"):
            if lines and tasks:
                lines[-1] += f"  ({tasks} tasks)"
            recap = True
            lines.append("PLAY RECAP")
        elif recap:
            if line.strip():
                lines.append("  " + " ".join(line.split()))
        elif line.startswith("PLAY ["):
            if lines and tasks:
                lines[-1] += f"  ({tasks} tasks)"
            tasks = 0
            lines.append(line)
        elif line.startswith("TASK ["):
            tasks += 1
    return "\n".join(lines)


def halt_line(run: Rollout) -> str:
    """The line of the run's output that says where and why the rollout halted (the report's halt)."""
    halt = run.report["halt"]
    expect(halt is not None, f"the rollout of {run.report['version']} did not halt")
    said = f"rollout of {store.PACKAGE} {run.report['version']} halted at {halt['phase']} on "
    said += f"{', '.join(halt['hosts'])}: {halt['reason']}"
    lines = [line for line in run.output.splitlines() if said in line]
    expect(len(lines) == 1, f"the run did not say {said!r}")
    return lines[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--toolchain",
        action="append",
        default=[],
        metavar="SUITE=DEB",
        required=True,
        help="the nesop-deb toolchain .deb for a Debian release (trixie=..., bookworm=...; both needed)",
    )
    args = parser.parse_args()
    toolchains: dict[str, Path] = {}
    for given in args.toolchain:
        suite, _, deb = given.partition("=")
        if suite not in SUITES or not deb or not Path(deb).is_file():
            parser.error(f"--toolchain {given}: want SUITE=FILE.deb, SUITE one of {', '.join(SUITES)}")
        toolchains[suite] = Path(deb).resolve()
    missing = sorted(set(RELEASES) - set(toolchains))
    if missing:
        parser.error(f"no --toolchain for {', '.join(missing)}")
    problems = missing_fleet_prerequisites()
    problems += [f"{tool} not found" for tool in ("aptly", "gpg") if shutil.which(tool) is None]
    if problems:
        raise SystemExit(f"demo: cannot run: {'; '.join(problems)} ({FLEET_NEEDS} aptly gnupg)")

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nesop-fleet-demo-", dir="/var/tmp"))
    done = False
    try:
        _demo(Demo(work, toolchains))
        done = True
    finally:
        if done:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"demo: its files (reports, console logs) are in {work}", file=sys.stderr)
    print(f"\n(the demo took {time.monotonic() - started:.0f} s)")
    return 0


def _demo(demo: Demo) -> None:
    try:
        _story(demo)
    except BaseException:
        demo.keep_journals()
        raise
    finally:
        try:
            demo.fleet.stop()
        finally:
            demo.repo.close()


def _story(demo: Demo) -> None:
    say(
        "1. Build the store's packages; publish them and the toolchain into a signed apt repository",
        f"The files of this demo are in {demo.work}; the command lines below name them from there.",
    )
    example = store.ExampleRepo.create(demo.work / "example")
    debs = []
    for ref, args, name in (
        ("v1.0.4", ("--full",), "full-1.0.4"),
        ("v1.0.5", (), None),
        ("v1.0.6", (), None),
    ):
        deb = example.build(ref, *args, name=name)
        shown("dev$", f"nesop-deb build {shlex.join(args)}  # at {ref}")
        indented(deb.name)
        debs.append(deb)
    shown("dev$", "gpg --quick-gen-key 'Fleet Repository <fleet@example.com>' ed25519 sign never")
    indented(f"key {demo.repo.key.fingerprint}")
    # the toolchain is built per Debian release; the update packages go into every suite
    for suite in sorted(set(RELEASES)):
        demo.publish(demo.toolchains[suite], suites=(suite,))
    demo.publish(*debs, suites=tuple(sorted(set(RELEASES))))

    say(
        "2. Boot five servers: host1-host4 Debian 13 (trixie), host5 Debian 12 (bookworm)",
        "Each is a systemd-nspawn container with systemd and sshd, in its own network namespace on a "
        f"private bridge; the controller ({CONTROLLER}) runs Ansible and serves the repository there. "
        "The servers have no Debian mirror: everything comes from the repository.",
    )
    booted = time.monotonic()
    demo.fleet.start()
    print(f"  booted in {time.monotonic() - booted:.1f} s")
    for host, release in zip(demo.fleet.hosts, RELEASES, strict=True):
        print(f"  {host.name}  {host.address}  Debian {SUITES[release]} ({release})")
    url = demo.fleet.serve(demo.repo.dir, PORT)
    expect(url == URL, f"the repository is served at {url}, not {URL}")
    shown("controller$", f"python3 -m http.server --bind {CONTROLLER} --directory publish/repo {PORT} &")
    shown("controller$", "ansible all -m ping -o")
    ping = demo.fleet.run_controller(["ansible", "all", "-m", "ping", "-o"], timeout=120)
    indented(ping.stdout + ping.stderr)
    expect(ping.returncode == 0, f"ansible all -m ping failed with exit code {ping.returncode}")

    say(
        "3. First install, everywhere at once: the toolchain and the store 1.0.4 (nesop_batches: 100%)",
        "Prepare installs the repository's key and list on each host and downloads what it needs; "
        "then every host installs nesop-store-update=1.0.4 (a --full package) with apt.",
    )
    first = demo.rollout("1.0.4", nesop_batches=["100%"])
    demo.table(first)
    expect(first.result.returncode == 0, f"the first install failed (exit {first.result.returncode})")
    expect(first.report["outcome"] == "completed", "the first install did not complete")
    for name in NAMES:
        expect(first.host(name)["state"] == "updated", f"{name} is not updated: {first.host(name)}")
    demo.expect_hosts(dict.fromkeys(NAMES, "1.0.4"))

    say(
        "4. A rollout of 1.0.5 (a database migration) in the default batches: 1, 30 %, the rest",
        "After each batch the gate checks every host of it: dpkg `ii` on 1.0.5 and `nesop-update "
        "validate` passing. Only then does the next batch start.",
    )
    good = demo.rollout("1.0.5")
    demo.table(good)
    demo.dpkg_lines()
    expect(good.result.returncode == 0, f"the rollout of 1.0.5 failed (exit {good.result.returncode})")
    expect(good.report["outcome"] == "completed", "the rollout of 1.0.5 did not complete")
    expect(
        good.report["batches"] == [["host1"], ["host2"], ["host3", "host4", "host5"]],
        f"unexpected batches {good.report['batches']}",
    )
    for name in NAMES:
        row = good.host(name)
        expect(
            (row["state"], row["before"], row["after"], row["dpkg"]) == ("updated", "1.0.4", "1.0.5", "ii"),
            f"{name}: {row}",
        )
    demo.expect_hosts(dict.fromkeys(NAMES, "1.0.5"))

    say(
        "5. A rollout of 1.0.6 that fails on host2 and halts there",
        "Someone created a table by hand in host2's database: the very table 1.0.6's migration "
        "creates. host1 (batch 1) updates; on host2 (batch 2) the migration fails, the update is undone "
        "there and 1.0.5 restarts; the rollout halts before batch 3, so host3-host5 are not touched.",
    )
    drift = "CREATE TABLE newsletter_subscriptions (customer_id INTEGER PRIMARY KEY)"
    sql = "python3 -c \"import sqlite3; c = sqlite3.connect('{db}'); c.execute('{sql}'); c.commit()\""
    demo.on("host2", sql.format(db=store.DB, sql=drift))
    try:
        bad = demo.rollout("1.0.6")
    finally:
        print(f"{DIM}# (after the rollout, host2's table is dropped again){RESET}")
        demo.on("host2", sql.format(db=store.DB, sql="DROP TABLE newsletter_subscriptions"))
    print(f"{DIM}controller$ # the run's last words:{RESET}")
    print(textwrap.indent(textwrap.fill(halt_line(bad), 94, break_on_hyphens=False), "  "))
    demo.table(bad)
    demo.dpkg_lines()
    print(f"{DIM}# host2 serves 1.0.5 again:{RESET}")
    demo.on("host2", HEALTH)
    expect(bad.result.returncode == 2, f"the rollout of 1.0.6 exited {bad.result.returncode}, not 2")
    expect(bad.report["outcome"] == "halted", "the rollout of 1.0.6 did not halt")
    halt = bad.report["halt"]
    expect((halt["phase"], halt["hosts"]) == ("batch 2", ["host2"]), f"it halted at {halt}")
    row = bad.host("host1")
    expect(
        (row["state"], row["before"], row["after"], row["dpkg"]) == ("updated", "1.0.5", "1.0.6", "ii"),
        f"host1: {row}",
    )
    row = bad.host("host2")
    expect(
        (row["state"], row["before"], row["after"], row["dpkg"]) == ("failed", "1.0.5", "1.0.5", "ii"),
        f"host2: {row}",
    )
    expect("newsletter_subscriptions already exists" in row["reason"], f"host2's reason: {row['reason']}")
    for name in NAMES[2:]:
        row = bad.host(name)
        expect((row["state"], row["batch"], row["after"]) == ("untouched", None, "1.0.5"), f"{name}: {row}")
    demo.expect_hosts({**dict.fromkeys(NAMES, "1.0.5"), "host1": "1.0.6"})

    say(
        "6. Roll the fleet back: the same playbook, nesop_version=1.0.5",
        "host1 downgrades with apt (1.0.6's down-migration runs, rows written since stay); the other "
        "hosts are already on 1.0.5 and validate, so they are not touched.",
    )
    back = demo.rollout("1.0.5")
    demo.table(back)
    expect(back.result.returncode == 0, f"the rollback failed (exit {back.result.returncode})")
    expect(back.report["outcome"] == "completed", "the rollback did not complete")
    row = back.host("host1")
    expect(
        (row["state"], row["before"], row["after"], row["dpkg"]) == ("updated", "1.0.6", "1.0.5", "ii"),
        f"host1: {row}",
    )
    for name in NAMES[1:]:
        expect(back.host(name)["state"] == "already", f"{name}: {back.host(name)}")

    say("7. The fleet at the end: dpkg, and the app itself through its /health")
    demo.expect_hosts(dict.fromkeys(NAMES, "1.0.5"))
    shown(f"root@{{{','.join(NAMES)}}}#", f"{DPKG}; {HEALTH}")
    for host, release in zip(demo.fleet.hosts, RELEASES, strict=True):
        line = " ".join(host.box.run(["sh", "-c", DPKG]).stdout.split()[:3])
        health = demo.health(host.name)
        print(
            f"  {host.name}  Debian {SUITES[release]}  {line}  app {health['version']}"
            f"  {'healthy' if health['status'] == 'ok' else health['status']} (pid {health['pid']})"
        )
    say("Done", "Every host is healthy on 1.0.5, dpkg `ii`, as the last report says.")


if __name__ == "__main__":
    sys.exit(main())
