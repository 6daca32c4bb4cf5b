"""docs/benchmarks.md: the machine, each benchmark's table, the goals met or missed, and why."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import buildtime, deps, fleet, machine, outage, pgoutage, plot, scaling, size, traffic, venv_build
from bench.common import Goal, Stat
from bench.server import OpResult

PLOT = "benchmark-health.png"
SIZE_WHY = (
    "\nWhy: the update holds the changed file, the manifest and the maintainer-script shims; the "
    "photos, incompressible, are almost all of the full package. The debdelta is a binary diff of "
    "the two full packages' uncompressed archives plus the recipe to rebuild and recompress the "
    "new one; it also carries the changes to the full package's control files and its manifest, "
    "and applying it needs debdelta on the server and the old package or its installed files.\n"
)
BUILD_WHY = (
    "\nWhy: the build lists and diffs the git range and packs only the changed files, so what "
    "grows with the repository is git's own walk of the tree and the index; a `--full` build, "
    "which packs every file, grows with it (last column).\n"
)


@dataclass(frozen=True)
class Remeasured:
    """Benchmarks measured again later (`bench/run.py --only NAMES --keep PICKLE`)."""

    names: tuple[str, ...]
    started: float
    seconds: float
    timings: dict[str, float]


@dataclass
class Results:
    args: argparse.Namespace
    started: float
    work: Path
    outage: outage.OutageResults | None = None
    size: size.SizeResult | None = None
    build: buildtime.BuildTimes | None = None
    scaling: list[scaling.Point] | None = None
    venv: venv_build.VenvResult | None = None
    venv_note: str = ""  # why the virtualenv benchmark could not run
    deps: deps.DepsResult | None = None
    requests: traffic.RequestsResult | None = None
    fleet: fleet.FleetResult | None = None
    postgresql: list[pgoutage.Point] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    remeasured: list[Remeasured] = field(default_factory=list)

    def goals(self) -> list[Goal]:
        goals: list[Goal] = []
        dependencies = getattr(self, "deps", None)  # results pickled before it existed lack it
        if self.outage:
            goals += outage.goals(self.outage.phases)
        if self.size:
            goals += self.size.goals()
        if dependencies:
            goals += deps.goals(dependencies)
        during = getattr(self, "requests", None)  # results pickled before it existed lack it
        if during:
            goals += traffic.goals(during)
        if self.build:
            goals += self.build.goals()
        if self.scaling:
            goals += scaling.goals(self.scaling)
        rollout = getattr(self, "fleet", None)  # results pickled before it existed lack it
        if rollout:
            goals += fleet.goals(rollout)
        databases = getattr(self, "postgresql", None)  # results pickled before it existed lack it
        if databases:
            goals += pgoutage.goals(databases)
        return goals


def _not_run(name: str) -> str:
    return f"Not run this time (`bench/run.py --only {name}` runs it).\n"


def _plot(phases: list[outage.Phase], output: Path) -> str:
    rows: list[tuple[str, OpResult]] = []
    first = phases[0]
    rows.append((f"systemctl restart\n(store at {first.base})", outage.representative(first.restarts)))
    for p in phases:
        rows.append((f"apt install\n{p.update} ({p.kind.split(' (')[0]})", outage.representative(p.applies)))
    last = phases[-1]
    rows.append((f"rollback\n{last.update} → {last.base}", outage.representative(last.rollbacks)))
    plot.health_timeline(rows, output.parent / PLOT)
    return (
        f"\n![/health during a bare restart, the updates and a rollback]({PLOT})\n\n"
        "Each row is the run with the median outage. Left: the whole command; the update stays up "
        "while apt, the preflight, the staging and the backup run, and goes down only between the "
        "`stop` and the app's first answer after `start`. Right: the same, around the outage.\n"
    )


def _median_service(ops: list[OpResult], key: str) -> float:
    values = [op.service[key] for op in ops if key in op.service]
    return statistics.median(values) if values else 0.0


def _outage_why(results: outage.OutageResults) -> str:
    phases, costs = results.phases, results.costs
    base = outage.baseline(phases).median
    restarts = [op for p in phases for op in p.restarts]
    stop_starts = [op for p in phases for op in p.stop_starts]
    least = outage.floor(phases).median
    spread = Stat.of(op.outage_s for op in restarts)
    ms = {k: v * 1000 for k, v in costs.items()}
    lines = []
    for p in phases:
        extra = (p.apply_outage().median - base) * 1000
        over_floor = (p.compared().median - least) * 1000
        delta = {
            k: (_median_service(p.applies, k) - _median_service(restarts, k)) * 1000
            for k in ("stop", "gap", "startup")
        }
        inside = ""
        if p.migrates:
            inside = (
                f", of which `snapshot-db` {p.step('snapshot-db').median * 1000:.0f} ms and "
                f"`migrate` {p.step('migrate').median * 1000:.0f} ms"
            )
        lines.append(
            f"- {p.update}: {extra:+.0f} ms against the restart. Stopping {delta['stop']:+.0f} ms, "
            f"Stopped→Started {delta['gap']:+.0f} ms{inside}, start-up {delta['startup']:+.0f} ms. "
            f"Against `systemctl stop` + `systemctl start`: {over_floor:+.0f} ms"
            + (" (outage − migrate)." if p.migrates else ".")
        )
    return (
        "Why: the store is down from `Stopping` to its first answer after `Started`, in a restart "
        "and in an update alike. Stopping takes the same time in both. Most of the difference is "
        "the time between `Stopped` and `Started`: in a bare restart systemd forks the new process "
        f"within the same job ({_median_service(restarts, 'gap') * 1000:.0f} ms). Two commands, "
        "`systemctl stop` and then `systemctl start`, already widen that to "
        f"{_median_service(stop_starts, 'gap') * 1000:.0f} ms (a new process and its D-Bus round "
        "trip after the first has returned), and their outage is "
        f"{least * 1000:.0f} ms, {least / base:.2f}x the restart: any update that changes the app "
        "while it is stopped pays that. In an update the "
        "runtime's own steps run there, each starting with a journal write "
        f"({ms['journal']:.1f} ms here: write, fsync, rename, fsync of the directory): the end of "
        "`stop`, for a migration `snapshot-db` (a `PRAGMA data_version` on the connection kept from "
        "the copy taken before the stop, then a rename), `apply-files` (renames, and an fsync per "
        "directory touched), for a migration `migrate`, then `start`: one `systemctl start` (a process costs "
        f"{ms['process']:.1f} ms to spawn here, plus its D-Bus round trip; the restart count the "
        "health gate compares was read before the stop, and `reset-failed` runs only after a "
        "failure). While the app starts, the health gate probes it over HTTP and asks systemd "
        f"(`systemctl show`, {ms['show']:.0f} ms here) at most every 100 ms, on the same two CPUs. "
        "Staging, verification, parsing the migrations (yoyo's import included), the backup and the "
        "database copy run before the stop and cost no outage; a rollback parses its down-migrations "
        "before its stop too.\n\n"
        + "\n".join(lines)
        + "\n\nWhat is left beyond stop-and-start is the price of crash safety and the "
        "measurement's noise: the journal "
        "writes are what lets `dpkg --configure -a` undo a half-applied update after a power loss "
        "(see [reliability.md](reliability.md)), so they stay; the bare restarts alone spread over "
        f"{spread.low * 1000:.0f}–{spread.high * 1000:.0f} ms, as wide as the gaps to the goal.\n"
    )


def _rollback_why(phases: list[outage.Phase]) -> str:
    lines = []
    for p in phases:
        apply_s = statistics.median(op.block("apply ") for op in p.applies)
        back_s = statistics.median(op.block("roll back") for op in p.rollbacks)
        check_s = statistics.median(op.block("nesop-store-update") for op in p.rollbacks)
        wall = statistics.median(op.wall for op in p.rollbacks)
        wall /= statistics.median(op.wall for op in p.applies)
        lines.append(
            f"{p.update}: rollback transaction {back_s:.2f} s against the apply's {apply_s:.2f} s "
            f"({back_s / apply_s:.2f}x), re-check {check_s * 1000:.0f} ms, apt command {wall:.2f}x"
        )
    return (
        "\nA rollback runs the same kind of transaction as an apply, in reverse: stop, undo from the "
        "data the apply recorded (the backup's files, the down-migrations or the database snapshot), "
        "start, and the same health gate with its settle window, so it takes about as long. The older "
        "package's postinst then finds its version already applied; the app has been up all along, "
        "so it probes `/health` once, without a second settle window. "
        + "; ".join(lines)
        + ". Neither side copies the app: the apply's backup holds the touched files (and, for a "
        "migration, the database), and the rollback restores just those.\n"
    )


def _snapshot_why(points: list[scaling.Point]) -> str:
    sweep = sorted(
        (p for p in points if p.assets_bytes == min(q.assets_bytes for q in points)), key=lambda p: p.db_bytes
    )
    if len(sweep) < 2:
        return ""
    small, large = sweep[0], sweep[-1]

    def med(p: scaling.Point, what: str) -> float:
        if what == "outage":
            return statistics.median(op.outage_s for op in p.migration)
        return statistics.median(op.steps("apply ").get(what, 0.0) for op in p.migration)

    mib = (large.db_actual - small.db_actual) / 1024 / 1024
    copy_rate = mib / max(med(large, "backup") - med(small, "backup"), 1e-9)  # MiB/s, before the stop
    outage_per_100 = (med(large, "outage") - med(small, "outage")) / mib * 100
    one_file = [Stat.of(op.outage_s for op in p.one_file).millis() for p in (small, large)]
    small_db, large_db = small.label.split(" + ")[1], large.label.split(" + ")[1]
    return (
        "How the database snapshot scales: only an update that carries migrations takes one. The "
        "copy (SQLite's online backup API, page by page) is taken in the `backup` step while the old "
        "app still serves, so it grows linearly with the database but none of it is outage: here "
        f"{copy_rate:.0f} MiB/s (`backup` {med(small, 'backup') * 1000:.0f} ms at {small_db}, "
        f"{med(large, 'backup') * 1000:.0f} ms at {large_db}). After the stop, `snapshot-db` asks "
        "SQLite, on the copy's still-open connection, whether anything was committed since "
        "(`PRAGMA data_version`); nothing writes in those seconds here, so it kept the copy: "
        f"{med(small, 'snapshot-db') * 1000:.0f} ms at {small_db}, "
        f"{med(large, 'snapshot-db') * 1000:.0f} ms at {large_db}. The migrating update's outage "
        f"changed by {outage_per_100 * 1000:+.0f} ms per 100 MiB of database "
        f"({med(small, 'outage') * 1000:.0f} ms at {small_db}, {med(large, 'outage') * 1000:.0f} ms at "
        f"{large_db}). When the app does commit between the copy and the stop, the database is copied "
        "again after the stop, at the rate above: a 1 GiB database then adds about "
        f"{1024 / copy_rate:.1f} s to the outage (more once it no longer fits in the page cache); the "
        "snapshot is always the database as it was at the stop. An update without migrations takes "
        f"no snapshot and no step of it reads the database: its outage was {one_file[0]} at the "
        f"smallest database and {one_file[1]} at the largest, differences within the run-to-run "
        "spread of the restarts in §1.\n"
    )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _later(r: Results) -> str:
    """The benchmarks measured again after the run (their results replace the run's)."""
    return "".join(
        f" {', '.join(m.names)} measured again on {_when(m.started)} (`bench/run.py --only "
        f"{','.join(m.names)} --keep`, {m.seconds / 60:.1f} min: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in m.timings.items())
        + "); the other results are that run's."
        for m in getattr(r, "remeasured", [])
    )


def write(r: Results, output: Path) -> str:
    args = r.args
    goals = r.goals()
    met = sum(g.met for g in goals)
    parts = [
        "# Benchmarks\n",
        "Generated by `make bench` "
        "(`bench/run.py`) on "
        f"{_when(r.started)}; the run took "
        f"{r.total_s / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items())
        + ")."
        + _later(r)
        + " Every number is compared with a baseline measured in the same run on the same machine.\n",
        f"## Goals: {met} of {len(goals)} met\n",
        "\n".join(g.line() for g in goals) + "\n",
        "## Machine\n",
        machine.markdown(r.work, r.started),
        "The server is a booted Debian 12 container (Debian 13 for the updates that change the "
        "app's virtualenv and for the requests during an update; systemd-nspawn, systemd as PID 1, "
        "an overlayfs on the cached root) on this machine, with a private network so that its port "
        "5000 meets nothing else; the poller is a thread of the benchmark on the host that enters the "
        "container's network namespace (no subprocess per probe).\n",
        "## 1. Outage during an update\n",
        "`/health` polled from the host every ~2 ms (a new connection per probe, 0.25 s timeout); "
        "an outage is the longest run of failed probes, from the first failure to the first success. "
        "Goal: at most 1.2x a bare `systemctl restart` of the same app in the same container; for "
        "an update with a migration, the outage minus the `migrate` step.\n",
    ]
    if r.outage:
        phases = r.outage.phases
        parts += [outage.markdown(phases, args.runs), _plot(phases, output), _outage_why(r.outage)]
    else:
        parts.append(_not_run("outage"))
    dependencies = getattr(r, "deps", None)
    parts.append("### An update and a rollback that change the app's virtualenv\n")
    parts.append(deps.outage_markdown(dependencies) if dependencies else _not_run("deps"))
    parts.append("## 2. Package size\n")
    parts.append(size.markdown(r.size) + SIZE_WHY if r.size else _not_run("size"))
    parts.append("### An update that upgrades one dependency\n")
    parts.append(deps.size_markdown(dependencies) if dependencies else _not_run("deps"))
    parts.append("## 3. Build time\n")
    parts.append(buildtime.markdown(r.build) + BUILD_WHY if r.build else _not_run("build"))
    parts.append("## 4. Apply cost by step as the app grows\n")
    if r.scaling:
        parts += [
            "The server's app gets extra assets (copies of the generated photos and bundles, owned "
            "by the app's user, in `assets/media/`) and a database grown with customers, orders and "
            "order lines; then 1.0.1, 1.0.2 and 1.0.3 are applied and rolled back to 1.0.0, "
            f"{args.scaling_runs} time(s) per shape.\n",
            scaling.markdown(r.scaling, args.scaling_runs),
            "\n" + _snapshot_why(r.scaling),
        ]
    else:
        parts.append(_not_run("scaling"))
    parts.append("## 5. Rollback time\n")
    parts.append(
        "`apt-get install -y --allow-downgrades nesop-store-update=<previous>` against the apply "
        "of the same update (from the outage runs). A rollback runs two transactions: the newer "
        "package's prerm undoes its version (stop, undo, start, health gate), then the older "
        "package's postinst finds its version already applied and re-checks the app's health.\n"
    )
    if r.outage:
        parts += [outage.rollback_markdown(r.outage.phases, args.runs), _rollback_why(r.outage.phases)]
    else:
        parts.append(_not_run("outage"))
    parts.append("## 6. Building an app's virtualenv offline\n")
    parts.append(
        "The ways a server can build an app's virtualenv from the wheels an update ships, before the "
        "stop: create it, install every pinned wheel from a local directory (`--no-index`, "
        "`--find-links`, `--require-hashes`, wheels only, the machine's pip and uv configuration "
        "ignored), then import every module, by `bench/venv_build.py`.\n\n"
    )
    venv = getattr(r, "venv", None)  # results pickled before this benchmark existed lack it
    if venv:
        parts.append(venv_build.markdown(venv))
    elif getattr(r, "venv_note", ""):
        parts.append(f"Could not run: {r.venv_note}.\n")
    else:
        parts.append(_not_run("venv"))
    parts.append("## 7. Requests during an update\n")
    parts.append(
        "Clients keep a page busy while the server is updated, fails an update, rolls back with apt "
        "and restarts, with the app's socket unit (systemd holds the listening socket while the app "
        "is stopped; connections wait in its queue, and the gate keeps a start from running before "
        "the update is done) and without it, by `bench/traffic.py`. Goals, with the socket unit: no "
        "failed request in any operation; exactly one new app process per successful update and "
        "none before the gate opens; the longest request at most the outage + 100 ms.\n"
    )
    during = getattr(r, "requests", None)
    parts.append(traffic.markdown(during) if during else _not_run("requests"))
    parts.append("## 8. A fleet rollout\n")
    parts.append(
        "`ansible/rollout.yml` rolls an update out to a fleet in batches, stopping at the first "
        "failure ([fleet.md](fleet.md)); this measures what the batches cost: the same playbook "
        "rolling the same update out to five hosts and to one, by `bench/fleet.py`. Goal: the "
        "five-host rollout at most 3x the one-host rollout.\n"
    )
    rollout = getattr(r, "fleet", None)
    parts.append(fleet.markdown(rollout) + fleet.why(rollout) if rollout else _not_run("fleet"))
    parts.append("## 9. A migrating update as the database grows, on PostgreSQL and on SQLite\n")
    parts.append(
        "The store at 1.3.0 on Debian's PostgreSQL (in the container, started by systemd; the store's "
        "account connects by peer authentication) and, beside it, on SQLite; each database grown "
        "with customers, orders and order lines; then a bare `systemctl restart`, the update to "
        "1.3.1 (migration 0006 adds a column) and the apt rollback to 1.3.0 (its down-migration drops "
        "it), by `bench/pgoutage.py`. Goal: the update's outage (from the journal, see below) at the "
        "largest database at most "
        f"{scaling.FLAT:g}x the smallest's (+ {scaling.NOISE_S * 1000:.0f} ms), on each engine.\n"
    )
    databases = getattr(r, "postgresql", None)
    if databases:
        parts += [pgoutage.markdown(databases, args.pg_runs), pgoutage.why(databases)]
    else:
        parts.append(_not_run("postgresql"))
    parts += [
        "## How to reproduce\n",
        "As root on Debian 12: `make bench` (installs what it needs, builds the toolchain package, "
        "runs `bench/run.py` and rewrites this file and the plot). Options: "
        "`.venv/bin/python bench/run.py --help`; e.g. `--only outage,size`, `--runs 9`, "
        "`--scaling-runs 5`, `--assets 10,300,2048 --db 1,100,1000`, `--only venv --venv-runs 9` "
        "(alone: `python3 -m bench.venv_build`), `--only deps --runs 9` (the updates that change the "
        "virtualenv, with the Debian 13 toolchain package of `make package SUITE=trixie`, "
        "`--deps-toolchain`), `--only requests --requests-rounds 6` (requests during updates, with the "
        "same Debian 13 toolchain package), `--only fleet --fleet-runs 5` (the fleet rollout: "
        "Debian 13 hosts too, and the host's `ansible-core`, `openssh-client` and `aptly`), "
        "`--only postgresql --pg-runs 5 --pg-db 10,100,2048` (the migrating update as the database "
        "grows, alias `pg`); "
        "`--only fleet --keep OLD/results.pickle --work DIR` measures one benchmark again and keeps "
        "the others' results from an earlier run (a copy of its pickle: the run empties its work "
        "directory first); through make: "
        "`make bench BENCH_ARGS='--runs 9'`. The run "
        "works in `build/bench/` (emptied first) and leaves its raw results in "
        "`build/bench/results.json`. The Debian 12 and 13 roots the containers start from are built once "
        "with mmdebstrap and cached in `/var/tmp/nesop-deb-testbed`; the virtualenv benchmark's "
        "wheels, uv and pip are downloaded once into `build/bench-cache/venv-build/`.\n",
    ]
    text = "\n".join(parts)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return text
