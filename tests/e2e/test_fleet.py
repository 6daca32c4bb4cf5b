"""A fleet rollout with Ansible: five booted servers (four Debian 13, one Debian 12), each in its
own network namespace, reached over SSH; the update packages in a signed repository made by
`nesop-deb publish` and served inside the fleet's network.

The tests are one story on one fleet, in order: each starts where the one before left every
host (healthy, on one version, `ii`) and checks that first. In every scenario the hosts beyond
the failing batch are untouched (dpkg's status file and the app's MainPID unchanged), every host
is healthy on exactly one version with dpkg at `ii`, and the report says what happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import store
from .fleet import Fleet
from .rollout import HostView, Repository, Rollout, Running, rollout

# host5 runs Debian 12: the repository has a suite per release, each with its own toolchain
SUITES = ("trixie", "trixie", "trixie", "trixie", "bookworm")
NAMES = tuple(f"host{i}" for i in range(1, len(SUITES) + 1))


@dataclass
class Story:
    fleet: Fleet
    repo: Repository
    url: str
    reports: Path
    runs: list[Rollout] = field(default_factory=list)

    def rollout(self, version: str, **extra: object) -> Rollout:
        report = self.reports / f"rollout-{len(self.runs) + 1}.json"
        return self._ran(rollout(self.fleet, self.repo, self.url, version, report, **extra))

    def start(self, version: str, **extra: object) -> Running:
        report = self.reports / f"rollout-{len(self.runs) + 1}.json"
        return Running(self.fleet, self.repo, self.url, version, report, **extra)

    def finish(self, running: Running) -> Rollout:
        return self._ran(running.wait())

    def _ran(self, run: Rollout) -> Rollout:
        self.runs.append(run)
        if run.result.returncode != 0:  # what the hosts' systemd said, for the assertion messages
            run.diagnostics = self.journals()
        return run

    def journals(self) -> str:
        """What systemd said of the app and its recovery and gate units, on every host."""
        units = ["-u", store.UNIT, "-u", "nesop-update-recover@*", "-u", "nesop-update-gate@*"]
        return "".join(
            f"\n--- {host.name} ---\n"
            + host.box.run(["journalctl", "--no-pager", "-n", "60", *units], check=False).stdout
            for host in self.fleet.hosts
        )

    def views(self) -> dict[str, HostView]:
        return {host.name: HostView.of(host) for host in self.fleet.hosts}

    def box(self, name: str) -> Any:
        return self.fleet.host(name).box

    def expect(self, versions: dict[str, str]) -> dict[str, HostView]:
        """Every host healthy, `ii` on the version given; returns what each runs."""
        views = self.views()
        for name, view in views.items():
            assert view.dpkg == ("ii", versions[name]), (name, view)
            assert view.app_version == versions[name], (name, view)
        return views


def on(version: str) -> dict[str, str]:
    return dict.fromkeys(NAMES, version)


@pytest.fixture(scope="module")
def story(
    fleet_roots: Callable[[str], Path],
    toolchain_debs: Callable[[str], Path],
    example_repo: store.ExampleRepo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Story]:
    work = tmp_path_factory.mktemp("fleet")
    repo = Repository(work / "publish")
    fleet = Fleet([fleet_roots(suite) for suite in SUITES], work / "fleet", names=NAMES)
    try:
        for suite in sorted(set(SUITES)):
            repo.publish(toolchain_debs(suite), suites=(suite,))
        packages = [
            example_repo.build("v1.0.4", "--full", name="full-1.0.4"),
            example_repo.build("v1.0.5"),
            example_repo.build("v1.0.6"),
        ]
        repo.publish(*packages, suites=tuple(sorted(set(SUITES))))
        fleet.start()
        url = fleet.serve(repo.dir)
        told = Story(fleet, repo, url, work / "reports")
        told.reports.mkdir()
        # every server gets the toolchain and the store's first install from the repository
        first = told.rollout("1.0.4", nesop_batches=["100%"])
        assert first.result.returncode == 0, first.output
        told.expect(on("1.0.4"))
        yield told
    finally:
        fleet.stop()
        repo.close()


def assert_untouched(before: dict[str, HostView], after: dict[str, HostView], names: list[str]) -> None:
    for name in names:
        assert after[name] == before[name], f"{name} was touched: {before[name]} -> {after[name]}"


def test_a_healthy_rollout_updates_every_host_batch_by_batch(story: Story) -> None:
    before = story.expect(on("1.0.4"))

    run = story.rollout("1.0.5")

    assert run.result.returncode == 0, run.output
    assert run.report["outcome"] == "completed" and run.report["halt"] is None
    # [1, "30%", "100%"] of five hosts: 1, then 30 % (1), then the rest
    assert run.report["batches"] == [["host1"], ["host2"], ["host3", "host4", "host5"]]
    after = story.expect(on("1.0.5"))
    for batch, name in zip((1, 2, 3, 3, 3), NAMES, strict=True):
        assert run.host(name) == {
            "host": name,
            "batch": batch,
            "before": "1.0.4",
            "after": "1.0.5",
            "dpkg": "ii",
            "state": "updated",
            "reason": "",
            "resumed": False,
        }
        assert after[name].pid != before[name].pid, f"{name}: the app was not restarted"
    assert store.db_dump(story.box("host5"))["migrations"][-1] == "0003_product_categories"


def _sql(box: Any, statement: str) -> None:
    box.run(
        [
            "python3",
            "-c",
            f"import sqlite3; c = sqlite3.connect({store.DB!r}); c.execute({statement!r}); c.commit()",
        ]
    )


def test_a_failure_in_the_second_batch_halts_the_rollout_there(story: Story) -> None:
    before = story.expect(on("1.0.5"))
    # host2's database drifted: a table made by hand there is what 1.0.6's migration creates
    host2 = story.box("host2")
    _sql(host2, "CREATE TABLE newsletter_subscriptions (customer_id INTEGER PRIMARY KEY)")
    written = store.register_customers(host2, 3)
    try:
        run = story.rollout("1.0.6")
        after = story.views()
    finally:
        _sql(host2, "DROP TABLE newsletter_subscriptions")

    assert run.result.returncode == 2, run.output
    assert run.report["outcome"] == "halted"
    halt = run.report["halt"]
    assert (halt["phase"], halt["hosts"]) == ("batch 2", ["host2"]), halt
    assert f"halted at batch 2 on host2: {halt['reason']}" in run.output
    assert run.report["batches"] == [["host1"], ["host2"]]
    assert run.host("host1") == {
        "host": "host1", "batch": 1, "before": "1.0.5", "after": "1.0.6", "dpkg": "ii",
        "state": "updated", "reason": "", "resumed": False,
    }  # fmt: skip
    # host2's update failed at the migration and was undone there; dpkg was `iF` 1.0.6, and the
    # rollout brought it back to `ii` 1.0.5
    failed = run.host("host2")
    assert (failed["state"], failed["batch"], failed["before"], failed["after"], failed["dpkg"]) == (
        "failed",
        2,
        "1.0.5",
        "1.0.5",
        "ii",
    ), failed
    assert failed["reason"].startswith("failed at migrate: "), failed
    assert "newsletter_subscriptions already exists" in failed["reason"], failed
    assert halt["reason"] == failed["reason"]
    assert set(written) <= store.customer_emails(host2)
    assert ("1.0.6", "failed") in [(e["version"], e["status"]) for e in store.history(host2)]
    for name in ("host3", "host4", "host5"):
        row = run.host(name)
        assert (row["state"], row["batch"], row["before"], row["after"]) == (
            "untouched",
            None,
            "1.0.5",
            "1.0.5",
        )
    assert_untouched(before, after, ["host3", "host4", "host5"])
    story.expect({**on("1.0.5"), "host1": "1.0.6"})


def test_the_same_playbook_rolls_the_fleet_back_keeping_rows_written_since(story: Story) -> None:
    before = story.expect({**on("1.0.5"), "host1": "1.0.6"})
    written = store.register_customers(story.box("host1"), 3)
    assert len(written) == 3

    run = story.rollout("1.0.5")

    assert run.result.returncode == 0, run.output
    assert run.report["outcome"] == "completed"
    assert run.host("host1") | {"batch": 0} == {
        "host": "host1", "batch": 0, "before": "1.0.6", "after": "1.0.5", "dpkg": "ii",
        "state": "updated", "reason": "", "resumed": False,
    }  # fmt: skip
    after = story.expect(on("1.0.5"))
    assert set(written) <= store.customer_emails(story.box("host1"))
    assert "0004_newsletter" not in store.db_dump(story.box("host1"))["migrations"]
    for name in NAMES[1:]:
        assert run.host(name)["state"] == "already", run.host(name)
    assert_untouched(before, after, list(NAMES[1:]))


def test_an_unreachable_host_halts_the_rollout_before_any_change(story: Story) -> None:
    before = story.expect(on("1.0.5"))
    host1 = story.fleet.host("host1")
    story.fleet.stop_sshd(host1)
    try:
        run = story.rollout("1.0.6")
    finally:
        story.fleet.start_sshd(host1)

    assert run.result.returncode == 2, run.output
    halt = run.report["halt"]
    assert (halt["phase"], halt["hosts"]) == ("prepare", ["host1"]), halt
    assert run.report["batches"] == []
    assert run.host("host1")["state"] == "unreachable"
    # ssh's words vary with the state of its shared connection; they name the host
    assert "10.77.0.11" in run.host("host1")["reason"], run.host("host1")
    for name in NAMES[1:]:
        assert run.host(name)["state"] == "untouched", run.host(name)
    assert_untouched(before, story.expect(on("1.0.5")), list(NAMES))


def test_a_canary_that_fails_its_check_halts_and_goes_back(story: Story) -> None:
    before = story.expect(on("1.0.5"))
    checks = ["http://127.0.0.1:5000/health", "http://127.0.0.1:5000/api/canary-smoke-test"]

    run = story.rollout("1.0.6", nesop_canary_checks=checks, nesop_canary_wait=1)

    assert run.result.returncode == 2, run.output
    halt = run.report["halt"]
    assert (halt["phase"], halt["hosts"]) == ("canary", ["host1"]), halt
    canary = run.host("host1")
    assert (canary["state"], canary["before"], canary["after"], canary["dpkg"]) == (
        "failed",
        "1.0.5",
        "1.0.5",
        "ii",
    )
    assert "canary check failed: http://127.0.0.1:5000/api/canary-smoke-test" in canary["reason"], canary
    after = story.expect(on("1.0.5"))
    # host1 passed the update's own health gate, so it did run 1.0.6 before it went back
    assert [e["version"] for e in store.history(story.box("host1"))][-2:] == ["1.0.6", "1.0.5"]
    assert_untouched(before, after, list(NAMES[1:]))


def test_a_host_lost_in_the_last_batch_takes_the_batch_back_and_with_revert_all_the_fleet(
    story: Story,
) -> None:
    before = story.expect(on("1.0.5"))
    lost = story.fleet.host("host3")
    running = story.start("1.0.6", nesop_revert_all=True)
    try:
        # prepare reached every host; host3's link goes down before its batch (the third) starts
        deadline = time.monotonic() + 300
        while store.dpkg_status(story.box("host1"))[1] != "1.0.6":
            assert running.running(), running.output()[-3000:]
            assert time.monotonic() < deadline, running.output()[-3000:]
            time.sleep(0.1)
        story.fleet.cut_link(lost)
        run = story.finish(running)
    finally:
        story.fleet.restore_link(lost)

    assert run.result.returncode == 2, run.output
    halt = run.report["halt"]
    assert (halt["phase"], halt["hosts"]) == ("batch 3", ["host3"]), halt
    assert run.report["revert_all"] is True
    assert run.host("host3")["state"] == "unreachable", run.host("host3")
    # the rest of its batch, and then the earlier batches, went back to where they were
    for name in ("host1", "host2", "host4", "host5"):
        row = run.host(name)
        assert (row["state"], row["before"], row["after"], row["dpkg"]) == (
            "reverted",
            "1.0.5",
            "1.0.5",
            "ii",
        ), row
    after = story.expect(on("1.0.5"))
    assert_untouched(before, after, ["host3"])
    for name in ("host1", "host2", "host4", "host5"):
        assert [e["version"] for e in store.history(story.box(name))][-2:] == ["1.0.6", "1.0.5"], name


def _applying(box: Any) -> bool:
    """apt is installing the update on this host (or has installed it)."""
    if store.dpkg_status(box)[1] == "1.0.6":
        return True
    return bool(
        box.run(
            ["pgrep", "-f", r"^(/usr/bin/)?apt-get install .*nesop-store-update=1\.0\.6"], check=False
        ).returncode
        == 0
    )


def test_a_rollout_whose_controller_was_killed_finishes_when_run_again(story: Story) -> None:
    story.expect(on("1.0.5"))
    batches = [1, "100%"]
    killed = story.start("1.0.6", nesop_batches=batches)
    # killed while the second batch is being applied: apt runs on each of its hosts
    deadline = time.monotonic() + 300
    while not all(_applying(story.box(name)) for name in NAMES[1:]):
        assert killed.running(), killed.output()[-3000:]
        assert time.monotonic() < deadline, killed.output()[-3000:]
        time.sleep(0.1)
    story.fleet.kill_controller(killed.proc)
    assert not killed.report.exists()

    # the apt runs the first controller started go on without it; wait for them to end
    deadline = time.monotonic() + 300
    while any(story.box(name).run(["pgrep", "-x", "apt-get"], check=False).returncode == 0 for name in NAMES):
        assert time.monotonic() < deadline, "apt did not finish"
        time.sleep(0.5)
    # each host's transaction went on to its end without the controller
    finished = story.expect(on("1.0.6"))

    # run again: what the first run finished is not done again
    run = story.rollout("1.0.6", nesop_batches=batches)

    assert run.result.returncode == 0, run.output
    assert run.report["outcome"] == "completed"
    for name in NAMES:
        row = run.host(name)
        assert (row["before"], row["after"], row["dpkg"]) == ("1.0.5", "1.0.6", "ii"), row
        assert (row["state"], row["resumed"]) == ("already", True), row
    assert_untouched(finished, story.expect(on("1.0.6")), list(NAMES))
