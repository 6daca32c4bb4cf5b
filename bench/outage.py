"""Benchmarks 1 and 5: how long the store is down during an update, and what a rollback costs.

One server, the store first installed at 1.0.0 from a --full package. For each update U from its
predecessor P, ``runs`` times, interleaved so that a slow moment of the machine hits all alike:
a bare ``systemctl restart`` of the store (the baseline), ``systemctl stop`` then ``systemctl
start`` (the floor of any update that changes the app while it is down), ``apt-get install
./U.deb``, then ``apt-get install --allow-downgrades nesop-store-update=P`` (the rollback). The
host's poller measures each outage; update.log gives each step's duration.

Goal: the outage of an update without migrations is at most 1.2x the bare restart's; for an
update with a migration, the outage minus the migrate step's time is.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from bench.common import Goal, Stat, say, table
from bench.releases import BASE, UPDATES, Packages
from bench.server import OpResult, Server
from tests.e2e import store

GOAL_RATIO = 1.2
# the steps between stop and start (an update that changes the virtualenv switches it there; one
# that changes the unit file installs it there)
IN_OUTAGE = ("stop", "snapshot-db", "apply-files", "venv-switch", "migrate", "unit", "start")


@dataclass
class Phase:
    """The runs of one update against its own baseline, taken in the same container."""

    base: str
    update: str
    kind: str  # what the update changes
    restarts: list[OpResult] = field(default_factory=list)
    stop_starts: list[OpResult] = field(default_factory=list)
    applies: list[OpResult] = field(default_factory=list)
    rollbacks: list[OpResult] = field(default_factory=list)

    @property
    def migrates(self) -> bool:
        return any("migrate" in op.steps("apply ") for op in self.applies)

    def restart_outage(self) -> Stat:
        return Stat.of(op.outage_s for op in self.restarts)

    def apply_outage(self) -> Stat:
        return Stat.of(op.outage_s for op in self.applies)

    def step(self, name: str) -> Stat:
        return Stat.of(op.steps("apply ").get(name, 0.0) for op in self.applies)

    def outage_less_migration(self) -> Stat:
        return Stat.of(op.outage_s - op.steps("apply ").get("migrate", 0.0) for op in self.applies)

    def compared(self) -> Stat:
        """What the goal compares with the restart: the outage, less the migration if any."""
        return self.outage_less_migration() if self.migrates else self.apply_outage()

    def ratio(self, baseline: Stat) -> float:
        return self.compared().median / baseline.median


def baseline(phases: list[Phase]) -> Stat:
    """Every bare restart of the run: the same app in the same container, interleaved with the
    updates. Pooled, the baseline rests on runs x phases restarts rather than on a few."""
    return Stat.of(op.outage_s for p in phases for op in p.restarts)


def floor(phases: list[Phase]) -> Stat:
    """Every ``systemctl stop`` + ``systemctl start`` of the run, pooled like the restarts."""
    return Stat.of(op.outage_s for p in phases for op in p.stop_starts)


# Run inside the container: what the calls an update makes between `stop` and `start` cost there.
_COSTS = r"""
import json, os, statistics, subprocess, sys, time
unit = sys.argv[1]
def spawn(argv):
    times = []
    for _ in range(15):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
def journal_write():
    os.makedirs("/var/lib/nesop-bench", exist_ok=True)
    times = []
    for i in range(15):
        t = time.perf_counter()
        with open("/var/lib/nesop-bench/j.tmp", "w") as fh:
            fh.write(json.dumps({"steps": ["x"] * 50, "i": i})); fh.flush(); os.fsync(fh.fileno())
        os.replace("/var/lib/nesop-bench/j.tmp", "/var/lib/nesop-bench/j.json")
        fd = os.open("/var/lib/nesop-bench", os.O_RDONLY); os.fsync(fd); os.close(fd)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
print(json.dumps({
    "show": spawn(["systemctl", "show", "-p", "ActiveState,SubState,MainPID,NRestarts", "--", unit]),
    "process": spawn(["/bin/true"]),
    "journal": journal_write(),
}))
"""


@dataclass
class OutageResults:
    phases: list[Phase]
    costs: dict[str, float]  # seconds: see _COSTS


def measure(packages: Packages, runs: int, updates: tuple[str, ...] = UPDATES) -> OutageResults:
    phases: list[Phase] = []
    with Server(packages.toolchain, packages.full) as server:
        previous = BASE
        for update in UPDATES:
            if update not in updates:
                server.install(packages.updates[update])  # on to the next base
                previous = update
                continue
            phase = Phase(previous, update, packages.describe(update))
            for i in range(runs):
                say(f"outage: {update} from {previous}, run {i + 1} of {runs}")
                phase.restarts.append(server.restart())
                phase.stop_starts.append(server.stop_start())
                phase.applies.append(server.install(packages.updates[update]))
                phase.rollbacks.append(server.rollback(previous))
            phases.append(phase)
            if update != updates[-1]:
                server.install(packages.updates[update])
            previous = update
        out = server.box.run(["python3", "-c", _COSTS, store.UNIT]).stdout
    costs = {str(k): float(v) for k, v in json.loads(out).items()}
    return OutageResults(phases, costs)


def representative(ops: list[OpResult]) -> OpResult:
    """The run whose outage is the median one (for the plot)."""
    ranked = sorted(ops, key=lambda op: op.outage_s)
    return ranked[(len(ranked) - 1) // 2]


def service_ms(ops: list[OpResult], key: str) -> str:
    """Median (in ms) of one phase of the stop-and-start, from the container's journal."""
    values = [op.service[key] for op in ops if key in op.service]
    return f"{statistics.median(values) * 1000:.0f}" if values else "–"


def steps_ms(ops: list[OpResult]) -> str:
    """Median total of the update.log steps from `stop` to `start` (what the gap is made of)."""
    totals = [sum(op.steps("apply ").get(s, 0.0) for s in IN_OUTAGE) for op in ops]
    return f"{statistics.median(totals) * 1000:.0f}"


def _row(label: str, ops: list[OpResult], base: float, steps: str) -> list[str]:
    outage = Stat.of(op.outage_s for op in ops)
    return [
        label,
        outage.millis(),
        f"{outage.median / base:.2f}x",
        *(service_ms(ops, k) for k in ("stop", "gap", "startup")),
        steps,
        _resolution(ops),
    ]


def _resolution(ops: list[OpResult]) -> str:
    """Median time between two probes during the outages: how finely they were measured."""
    gaps = [
        op.outage.seconds / op.outage.failed_probes for op in ops if op.outage and op.outage.failed_probes
    ]
    return f"{statistics.median(gaps) * 1000:.1f}" if gaps else "–"


# the columns of an outage table (this module's and bench/deps.py's)
HEADER = [
    "operation",
    "outage",
    "vs restart",
    "Stopping→Stopped",
    "Stopped→Started",
    "Started→listening",
    "update.log stop…start",
    "ms per probe",
]


def markdown(phases: list[Phase], runs: int) -> str:
    rows: list[list[str]] = []
    base = baseline(phases).median
    for p in phases:
        rows.append(_row(f"`systemctl restart` (store at {p.base})", p.restarts, base, ""))
        rows.append(_row(f"`systemctl stop`, `systemctl start` (store at {p.base})", p.stop_starts, base, ""))
        rows.append(
            _row(f"`apt install ./…_{p.update}_all.deb` ({p.kind})", p.applies, base, steps_ms(p.applies))
        )
    header = HEADER
    mig_rows = [
        [
            p.update,
            p.apply_outage().millis(),
            p.step("snapshot-db").millis(),
            p.step("migrate").millis(),
            p.outage_less_migration().millis(),
            baseline(phases).millis(),
            f"{p.ratio(baseline(phases)):.2f}x",
        ]
        for p in phases
        if p.migrates
    ]
    migration = table(
        ["update", "outage", "snapshot-db", "migrate", "outage − migrate", "bare restart (all)", "ratio"],
        mig_rows,
    )
    return (
        f"Median (min–max) of {runs} runs each; restart, update and rollback interleaved in one container "
        "(each update is applied, rolled back with apt, and applied again in the next run). "
        f'"vs restart" divides by the median of all {sum(len(p.restarts) for p in phases)} bare restarts '
        f"({baseline(phases).millis()}). `systemctl stop` followed by `systemctl start` (two "
        "commands from a shell, nothing in between) is the least any update that changes the app "
        "while it is stopped can cost. The three "
        "middle columns split the stop-and-start along the container's journal (medians, ms): systemd "
        "stopping the store, the time between `Stopped` and `Started` (a bare restart only forks there; "
        "an update runs its steps there), and the app's start-up until it logs `listening on`. "
        '"update.log stop…start" adds up the logged durations of the steps from `stop` to `start` '
        '(they overlap the three). "ms per probe": the outage\'s length over its failed probes, '
        "the resolution of the measurement.\n\n"
        + table(header, rows)
        + ("\n#### The update with a migration\n\n" + migration if mig_rows else "")
    )


def rollback_markdown(phases: list[Phase], runs: int) -> str:
    rows = []
    for p in phases:
        apply_wall = Stat.of(op.wall for op in p.applies)
        back_wall = Stat.of(op.wall for op in p.rollbacks)
        undo = Stat.of(op.block("roll back") for op in p.rollbacks)
        check = Stat.of(op.block("nesop-store-update") for op in p.rollbacks)
        rows.append(
            [
                f"{p.base} → {p.update} → {p.base}",
                apply_wall.seconds(2),
                back_wall.seconds(2),
                f"{back_wall.median / apply_wall.median:.2f}x",
                Stat.of(op.block("apply ") for op in p.applies).seconds(2),
                undo.seconds(2),
                check.seconds(2),
                Stat.of(op.outage_s for op in p.rollbacks).millis(),
            ]
        )
    return (
        f"Median (min–max) of {runs} runs. Wall times are the apt commands as the operator waits "
        "for them; the transaction columns come from update.log.\n\n"
        + table(
            [
                "update",
                "apply (apt)",
                "rollback (apt)",
                "rollback / apply",
                "apply transaction",
                "rollback transaction",
                "re-check of the old version",
                "rollback outage",
            ],
            rows,
        )
    )


def _median(ops: list[OpResult], key: str) -> float:
    values = [op.service[key] for op in ops if key in op.service]
    return statistics.median(values) if values else 0.0


def goals(phases: list[Phase]) -> list[Goal]:
    out = []
    base = baseline(phases)
    restarts = [op for p in phases for op in p.restarts]
    for p in phases:
        ratio = p.ratio(base)
        what = "outage − migrate" if p.migrates else "outage"
        compared = p.compared().median * 1000
        restart = base.median * 1000
        limit = restart * GOAL_RATIO
        margin = (
            f"{limit - compared:.0f} ms under the {limit:.0f} ms limit"
            if ratio <= GOAL_RATIO
            else f"{compared - limit:.0f} ms over the {limit:.0f} ms limit"
        )
        gap = (_median(p.applies, "gap") - _median(restarts, "gap")) * 1000
        besides = ""
        if p.migrates:
            gap -= p.step("migrate").median * 1000
            besides = " besides `migrate`"
        least = floor(phases).median * 1000
        out.append(
            Goal(
                f"Outage of {p.update} ({p.kind}) ≤ {GOAL_RATIO}x a bare restart",
                ratio <= GOAL_RATIO,
                f"{what} {compared:.0f} ms vs restart {restart:.0f} ms = {ratio:.2f}x ({margin}); "
                f"why: the update's steps between `Stopped` and `Started` add {gap:.0f} ms{besides}; "
                f"a bare `systemctl stop` + `systemctl start` takes {least:.0f} ms "
                f"({least / restart:.2f}x the restart; the update {compared / least:.2f}x that) (§1)",
            )
        )
    return out
