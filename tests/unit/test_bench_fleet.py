"""The fleet benchmark's bookkeeping: Ansible's log read into plays and tasks, the CPU samples, the
goal's ratio; and `bench/run.py --keep`, which replaces only the benchmarks measured again."""

from __future__ import annotations

import argparse
import calendar
import time
from pathlib import Path

import pytest

from bench import fleet, outage, report, run, traffic

T0 = calendar.timegm(time.strptime("2026-12-01 09:10:00", "%Y-%m-%d %H:%M:%S"))


def logged(seconds: float, message: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + int(seconds)))
    return f"{stamp},{round(seconds % 1 * 1000):03d} p=4242 u=root n=ansible | {message}"


# one host in one batch, then the closing plays; ansible-playbook started at T0
ONE_HOST = [
    (0.5, "PLAY [Prepare every host (reads, lists the repository, downloads; changes no package)] ****"),
    (0.6, "TASK [nesop_update : Read the host's package state, release and rollout state] ****"),
    (2.0, "PLAY [Update in batches] ****"),
    (2.1, "TASK [nesop_update : Save the version it comes from, on the host (a rerun ...)] ****"),
    (2.3, "TASK [nesop_update : Install the version (nesop-deb runs the transaction)] ****"),
    (6.3, "TASK [nesop_update : Validate] ****"),
    (6.4, "TASK [nesop_update : Validate the app and read dpkg] ****"),
    (7.4, "TASK [nesop_update : Read the check] ****"),
    (7.5, "PLAY [Take the earlier batches back too (nesop_revert_all); close the rollout] ****"),
    (7.9, "PLAY [Write the report] ****"),
    (8.0, "PLAY RECAP ****"),
]


def write_log(path: Path, lines: list[tuple[float, str]]) -> Path:
    text = [logged(t, message) for t, message in lines]
    # what else Ansible logs: results, multi-line output; none of it is a header
    text.insert(2, logged(0.7, "ok: [host1]"))
    text.insert(3, "  a continued line of output")
    path.write_text("\n".join(text) + "\n")
    return path


def test_the_log_gives_the_play_and_task_headers_after_the_start(tmp_path: Path) -> None:
    log = fleet._parse_log(write_log(tmp_path / "a.log", ONE_HOST), T0)

    assert log[0] == (
        0.5,
        "PLAY [Prepare every host (reads, lists the repository, downloads; changes no package)]",
    )
    assert [t for t, _ in log] == [t for t, _ in ONE_HOST]
    assert all(not text.endswith("*") for _, text in log)
    assert fleet._parse_log(tmp_path / "missing.log", T0) == []


def one_host_run(tmp_path: Path, wall: float = 8.25) -> fleet.Run:
    log = fleet._parse_log(write_log(tmp_path / "a.log", ONE_HOST), T0)
    # one CPU busy all along
    samples = [(i / 10, i / 10) for i in range(int(wall * 10) + 1)]
    return fleet.Run("1.0.5", 1, wall, [["host1"]], log, samples)


def test_a_run_splits_into_its_plays_and_the_batch_into_its_tasks(tmp_path: Path) -> None:
    phases = one_host_run(tmp_path).phases()

    assert [(p.name, round(p.seconds, 2)) for p in phases] == [
        ("start-up", 0.5),
        ("prepare", 1.5),
        ("batch 1", 5.5),
        ("close", 0.4),
        ("report", 0.1),
        ("exit", 0.25),
    ]
    batch = phases[2]
    assert (batch.hosts, round(batch.install_s, 2), round(batch.validate_s, 2), batch.tasks) == (
        1,
        4.0,
        1.0,
        5,
    )
    assert batch.cpus == pytest.approx(1.0)
    assert phases[4].cpus is None  # 0.1 s: too short to tell
    assert one_host_run(tmp_path).task(fleet.SAVE_TASK) == pytest.approx(0.2)


def test_the_phases_of_several_batches_keep_their_order(tmp_path: Path) -> None:
    first = fleet.Run("1.0.5", 5, 30.0, [["host1"], ["host2"], ["host3", "host4", "host5"]])
    first.log = [
        (0.3, "PLAY [Prepare every host (reads)]"),
        (3.0, "PLAY [Update in batches]"),
        (8.0, "PLAY [Update in batches]"),
        (13.0, "PLAY [Update in batches]"),
        (22.0, "PLAY [Take the earlier batches back too]"),
        (23.0, "PLAY [Write the report]"),
        (24.0, "PLAY RECAP"),
    ]
    one = fleet.Run("1.0.5", 1, 8.0, [["host1"]], [(0.3, "PLAY [Prepare every host]"), (2.0, "PLAY RECAP")])

    names = fleet._phase_names([one, first])

    assert names == ["start-up", "prepare", "batch 1", "batch 2", "batch 3", "close", "report", "exit"]
    assert [p.hosts for p in first.phases() if p.name.startswith("batch")] == [1, 1, 3]
    assert first.seconds("batch 3") == 9.0
    assert first.seconds("batch 4") == 0.0


def result_with(walls: list[tuple[float, float]]) -> fleet.FleetResult:
    r = fleet.FleetResult("trixie", 5, len(walls), 20.0, 2)
    for one, five in walls:
        r.single.append(fleet.Run("1.0.5", 1, one, [["host1"]]))
        r.fleet.append(fleet.Run("1.0.5", 5, five, [["host1"], ["host2"], ["host3", "host4", "host5"]]))
    return r


def test_the_goal_is_the_median_of_each_runs_ratio() -> None:
    r = result_with([(10.0, 25.0), (8.0, 26.0), (10.0, 29.0)])

    [goal] = fleet.goals(r)

    assert r.ratios() == [2.5, 3.25, 2.9]
    assert goal.met and "2.90x, the median of 3 runs' ratios" in goal.detail
    [missed] = fleet.goals(result_with([(7.0, 22.0)]))
    assert not missed.met and "0.14x over the limit" in missed.detail


def results(**fields: object) -> report.Results:
    args = argparse.Namespace(runs=5, scaling_runs=3, assets=[10], db=[1])
    r = report.Results(args=args, started=T0, work=Path("/nonexistent"))
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def test_keep_replaces_only_the_benchmarks_measured_again() -> None:
    fleet_then, fleet_now, fleet_later = (result_with([(7.0, 20.0)]) for _ in range(3))
    requests_then = traffic.RequestsResult("trixie", "3.13", 4, [])
    earlier = results(fleet=fleet_then, requests=requests_then, timings={"requests during an update": 222.0})
    now = results(fleet=fleet_now, timings={"fleet rollout": 217.0}, total_s=220.0)
    now.args.runs = 9

    kept = run.keep(earlier, now, ["fleet"])

    assert kept.fleet is fleet_now and kept.requests is requests_then
    assert kept.timings == {"requests during an update": 222.0} and kept.args.runs == 5
    assert [(m.names, m.seconds, m.timings) for m in kept.remeasured] == [
        (("fleet",), 220.0, {"fleet rollout": 217.0})
    ]
    # measured again once more: the later note replaces the earlier one
    again = run.keep(kept, results(fleet=fleet_later, timings={"fleet rollout": 200.0}), ["fleet"])
    assert again.fleet is fleet_later and len(again.remeasured) == 1
    assert "fleet measured again on 2026-12-01 09:10 UTC" in report._later(again)


def test_keep_takes_the_options_the_report_reads_for_a_benchmark_measured_again() -> None:
    outage_now = outage.OutageResults([], {})
    now = results(outage=outage_now)
    now.args.runs = 9

    kept = run.keep(results(), now, ["outage"])

    assert kept.outage is outage_now and kept.args.runs == 9


def test_keep_refuses_a_pickle_inside_the_work_directory(tmp_path: Path) -> None:
    pickle = tmp_path / "work" / "results.pickle"
    pickle.parent.mkdir()
    pickle.write_bytes(b"")

    with pytest.raises(SystemExit):
        run.parse_args(["--keep", str(pickle), "--work", str(tmp_path / "work")])
