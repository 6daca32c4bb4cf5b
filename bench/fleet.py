"""Benchmark 8: a fleet rollout with Ansible, five hosts against one.

Five booted Debian 13 machines (:class:`tests.e2e.fleet.Fleet`: each in its own network
namespace, reached over SSH from a controller namespace), the example store's packages and the
toolchain in a signed repository made by ``nesop-deb publish`` and served inside the fleet's
network (:mod:`tests.e2e.rollout`). Every host first gets the store's 1.0.4 from a rollout in one
batch (not timed). Then, ``runs`` times, interleaved so that a slow moment of the machine hits
all alike, each timed as the operator waits for it (``ansible-playbook ansible/rollout.yml`` from
start to exit):

- the rollout of 1.0.5 (an update with a migration) to host1 alone (``nesop_hosts: host1``: the
  same playbook, prepare and one batch), then its rollback rollout to 1.0.4;
- the rollout of 1.0.5 to all five hosts with the playbook's default batches (1, 30 %, the rest:
  1, 1, 3 hosts), then the rollback rollout of all five to 1.0.4;
- for context, on host1 without Ansible: ``apt-get install nesop-store-update=1.0.5`` and back.

Ansible's log (``ANSIBLE_LOG_PATH``, a line per play and task with its time) splits each
rollout into its plays: the prepare of every host, each batch, the closing play and the report;
a thread samples the machine's busy CPU time (/proc/stat) meanwhile: the hosts and the controller
share this machine's CPUs.

Goal: the five-host rollout takes at most 3x the same rollout on one host (the median of the
paired runs' ratios).
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import re
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import deps
from bench.common import Goal, Stat, say, table
from bench.server import LOG, BenchError, parse_log
from tests.e2e import store
from tests.e2e.baseroot import build_base_root, cache_dir_from_env
from tests.e2e.fleet import FLEET_PACKAGES, Fleet, Host
from tests.e2e.rollout import PLAYBOOK, Repository

SUITE = deps.SUITE  # Debian 13
HOSTS = 5
BASE, UPDATE = "1.0.4", "1.0.5"  # 1.0.5 carries a migration
GOAL_RATIO = 3.0
SINGLE = "host1"  # the one-host rollout's host (the first batch's host in the fleet's rollout)
TIMEOUT = 900.0  # seconds one ansible-playbook run may take
# `2026-12-01 08:30:00,123 p=1234 u=root n=ansible | TASK [...] ***`: Python logging's asctime
_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) p=\d+ u=.*? n=\S+ \| (.*)$")
# the plays of ansible/rollout.yml, by the start of their names
PLAYS = (
    ("Prepare every host", "prepare"),
    ("Update in batches", "batch"),
    ("Take the earlier batches back", "close"),
    ("Write the report", "report"),
)
INSTALL_TASK = "TASK [nesop_update : Install the version"
VALIDATE_TASK = "TASK [nesop_update : Validate the app"
SAVE_TASK = "TASK [nesop_update : Save the version it comes from"  # one shell command on the host
SAMPLE = 0.1  # seconds between two readings of /proc/stat


@dataclass(frozen=True)
class Packages:
    toolchain: Path  # for SUITE
    full: Path  # --full package of BASE
    update: Path  # BASE -> UPDATE


def build(work: Path, toolchain: Path) -> Packages:
    """The store's 1.0.4 (--full) and 1.0.5 packages; the toolchain copied aside."""
    if not toolchain.is_file():
        raise FileNotFoundError(f"{toolchain}: build it first with `make package SUITE={SUITE}`")
    work.mkdir(parents=True, exist_ok=True)
    own_toolchain = work / toolchain.name
    shutil.copyfile(toolchain, own_toolchain)
    say(f"fleet: building the store's {BASE} (--full) and {UPDATE}")
    repo = store.ExampleRepo.create(work)
    full = repo.build(f"v{BASE}", "--full", name=f"full-{BASE}")
    return Packages(own_toolchain, full, repo.build(f"v{UPDATE}"))


def cpu_busy() -> float:
    """CPU seconds this machine has been busy since boot, all CPUs together (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class _Sampler:
    """Reads the machine's busy CPU time every SAMPLE seconds, in a thread, while a command runs."""

    def __init__(self, started: float) -> None:
        self.started = started  # epoch: the samples' times are seconds after it
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-cpu", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.time() - self.started, cpu_busy()))
            if self._stop.wait(SAMPLE):
                self.samples.append((time.time() - self.started, cpu_busy()))
                return

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Phase:
    """One play of a rollout (or Ansible's start-up before the first, its exit after the last)."""

    name: str  # start-up, prepare, batch N, close, report, exit
    hosts: int  # in a batch: its hosts; else the rollout's
    seconds: float
    install_s: float  # the install task (apt-get as a service of the host's systemd, waited for)
    validate_s: float  # the validation after it (`nesop-update validate` and dpkg)
    tasks: int  # task headers Ansible logged in it (an included file's tasks too)
    cpus: float | None  # the machine's CPUs busy meanwhile, on average (all processes, all hosts)


@dataclass
class Run:
    """One ``ansible-playbook ansible/rollout.yml`` run."""

    version: str
    hosts: int
    wall: float  # from the command's start to its exit
    batches: list[list[str]]  # as the rollout's report lists them
    # (seconds after the command started, a play or task header): from Ansible's log
    log: list[tuple[float, str]] = field(default_factory=list)
    # (seconds after the command started, the machine's busy CPU seconds so far)
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def busy(self, start: float, end: float) -> float | None:
        """The machine's CPUs busy between two times, on average (None: too short to tell)."""
        if end - start < 2 * SAMPLE or len(self.timeline) < 2:
            return None

        def at(t: float) -> tuple[float, float]:
            return min(self.timeline, key=lambda sample: abs(sample[0] - t))

        (t0, b0), (t1, b1) = at(start), at(end)
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def phases(self) -> list[Phase]:
        """Each play, Ansible's start-up before the first one and its exit after the recap."""
        plays = [(t, line) for t, line in self.log if line.startswith(("PLAY [", "PLAY RECAP"))]
        if not plays:
            return [Phase("total", self.hosts, self.wall, 0.0, 0.0, 0, self.busy(0, self.wall))]
        first, last = plays[0][0], plays[-1][0]
        out = [Phase("start-up", self.hosts, first, 0.0, 0.0, 0, self.busy(0, first))]
        batch = 0
        for (t, line), (t_next, _) in itertools.pairwise(plays):
            name = next((short for long, short in PLAYS if line.startswith(f"PLAY [{long}")), line)
            hosts = self.hosts
            if name == "batch":
                batch += 1
                name = f"batch {batch}"
                hosts = len(self.batches[batch - 1]) if batch <= len(self.batches) else 0
            inside = [(u, text) for u, text in self.log if t <= u <= t_next]
            timed = {INSTALL_TASK: 0.0, VALIDATE_TASK: 0.0}
            for (u, text), (u_next, _) in itertools.pairwise(inside):
                for task in timed:
                    if text.startswith(task):
                        timed[task] += u_next - u
            tasks = sum(text.startswith("TASK [") for _, text in inside)
            out.append(
                Phase(
                    name,
                    hosts,
                    t_next - t,
                    timed[INSTALL_TASK],
                    timed[VALIDATE_TASK],
                    tasks,
                    self.busy(t, t_next),
                )
            )
        out.append(Phase("exit", self.hosts, self.wall - last, 0.0, 0.0, 0, self.busy(last, self.wall)))
        return out

    def task(self, prefix: str) -> float:
        """The time of the tasks whose header starts with ``prefix``, until the next header."""
        return sum(
            u_next - u for (u, text), (u_next, _) in itertools.pairwise(self.log) if text.startswith(prefix)
        )

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases() if p.name == name), None)

    def seconds(self, name: str) -> float:
        found = self.phase(name)
        return found.seconds if found else 0.0


@dataclass
class Apt:
    """``apt-get install`` on one host, without Ansible."""

    wall: float
    transaction: float  # the runtime's apply or rollback block in update.log
    cpu_s: float  # the machine's busy CPU seconds meanwhile (the host's, and whatever else ran)


@dataclass
class FleetResult:
    suite: str
    hosts: int
    runs: int
    setup_s: float  # boot the fleet, publish, the first install everywhere
    cpus: int  # this machine's, which the hosts and the controller share
    fleet: list[Run] = field(default_factory=list)  # BASE -> UPDATE on every host
    fleet_back: list[Run] = field(default_factory=list)  # UPDATE -> BASE on every host
    single: list[Run] = field(default_factory=list)  # BASE -> UPDATE on SINGLE
    single_back: list[Run] = field(default_factory=list)
    apt: list[Apt] = field(default_factory=list)  # BASE -> UPDATE on SINGLE, apt-get alone
    apt_back: list[Apt] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """Each run's five-host rollout over its one-host rollout (taken a minute apart)."""
        return [f.wall / s.wall for f, s in zip(self.fleet, self.single, strict=True)]

    def ratio(self) -> float:
        """The goal's number: the median of the runs' ratios."""
        return statistics.median(self.ratios())


def paired(these: list[float], those: list[float]) -> float:
    """The median of each run's ratio of ``these`` to ``those`` (measured in the same run)."""
    return statistics.median(a / b for a, b in zip(these, those, strict=True))


def _parse_log(path: Path, started: float) -> list[tuple[float, str]]:
    """Play and task headers of Ansible's log, in seconds after ``started`` (epoch; the log is
    written in UTC)."""
    out: list[tuple[float, str]] = []
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        m = _LOGGED.match(line)
        if m is None or not m[3].startswith(("PLAY [", "PLAY RECAP", "TASK [")):
            continue
        at = calendar.timegm(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
        out.append((round(at - started, 3), m[3].rstrip(" *")))
    return out


class _Bed:
    """The fleet, its repository and the runs' files."""

    def __init__(self, fleet: Fleet, repo: Repository, url: str, work: Path) -> None:
        self.fleet, self.repo, self.url, self.work = fleet, repo, url, work
        self.count = 0

    def rollout(self, version: str, label: str, **extra: object) -> Run:
        """``ansible-playbook ansible/rollout.yml`` as the controller; fails unless every host it
        names ends on ``version``."""
        self.count += 1
        stem = self.work / f"{self.count:02d}-{label}"
        report, log = stem.with_suffix(".report.json"), stem.with_suffix(".ansible.log")
        variables = stem.with_suffix(".vars.json")
        variables.write_text(
            json.dumps(
                {
                    "nesop_package": store.PACKAGE,
                    "nesop_version": version,
                    "nesop_repo_url": self.url,
                    "nesop_repo_key": str(self.repo.key_file),
                    "nesop_report": str(report),
                    **extra,
                },
                indent=2,
            )
        )
        env = {"ANSIBLE_LOG_PATH": str(log), "TZ": "UTC"}
        argv = ["ansible-playbook", "-e", f"@{variables}", str(PLAYBOOK)]
        started = time.time()
        clock = time.monotonic()
        with _Sampler(started) as cpu:
            result = self.fleet.run_controller(argv, timeout=TIMEOUT, env=env)
            wall = time.monotonic() - clock
        stem.with_suffix(".out").write_text(result.stdout + result.stderr)
        data = json.loads(report.read_text()) if report.is_file() else {}
        hosts = data.get("hosts", [])
        bad = [row for row in hosts if row.get("after") != version or row.get("state") != "updated"]
        if result.returncode != 0 or data.get("outcome") != "completed" or not hosts or bad:
            kept = self.keep_journals(stem, [str(row.get("host")) for row in bad])
            raise BenchError(
                f"fleet: the rollout of {version} ({label}) did not complete (exit {result.returncode}; "
                f"report {report}: {data.get('outcome')}, {bad}; journals in {kept}):\n"
                f"{result.stdout[-3000:]}"
            )
        return Run(version, len(hosts), wall, data["batches"], _parse_log(log, started), cpu.samples)

    def keep_journals(self, stem: Path, names: list[str]) -> list[str]:
        """The journal of this boot and update.log of each named host, beside the run's files
        (the fleet is gone once the benchmark stops)."""
        kept = []
        for name in names:
            try:
                box = self.fleet.host(name).box
                journal = box.run(["journalctl", "-b", "--no-pager", "-o", "short-precise"], check=False)
                log = box.path(LOG)
                out = stem.with_suffix(f".{name}.journal.txt")
                out.write_text(journal.stdout + (f"\n--- {LOG}\n" + log.read_text() if log.exists() else ""))
                kept.append(str(out))
            except Exception as error:  # the benchmark's failure is reported all the same
                kept.append(f"{name}: {error}")
        return kept

    def apt(self, host: Host, version: str) -> Apt:
        """``apt-get install nesop-store-update=VERSION`` on ``host`` (from the repository the
        rollouts listed), as the role's install task runs it, without Ansible."""
        box = host.box
        log = box.path(LOG)
        offset = log.stat().st_size if log.exists() else 0
        argv = [
            "apt-get", "install", "-y", "-q", "--allow-downgrades", "--no-install-recommends",
            "-o", "Dpkg::Options::=--force-confold", f"{store.PACKAGE}={version}",
        ]  # fmt: skip
        clock, busy = time.monotonic(), cpu_busy()
        result = box.run(argv, env={"DEBIAN_FRONTEND": "noninteractive"}, check=False, timeout=600)
        wall, cpu_s = time.monotonic() - clock, cpu_busy() - busy
        if result.returncode != 0 or store.dpkg_status(box) != ("ii", version):
            raise BenchError(f"fleet: apt-get install {store.PACKAGE}={version} on {host.name} failed:\n"
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")  # fmt: skip
        with log.open("rb") as fh:
            fh.seek(offset)
            blocks = parse_log(fh.read().decode(errors="replace"))
        transaction = sum(b.seconds for b in blocks if b.name.startswith(("apply ", "roll back")))
        return Apt(wall, transaction, cpu_s)


def measure(packages: Packages, work: Path, runs: int) -> FleetResult:
    work.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    repo = Repository(work / "publish")
    try:
        repo.publish(packages.toolchain, suites=(SUITE,))
        repo.publish(packages.full, packages.update, suites=(SUITE,))
        root = build_base_root(cache_dir_from_env(), FLEET_PACKAGES, suite=SUITE)
        say(f"fleet: booting {HOSTS} Debian 13 hosts")
        with Fleet(root, work / "fleet", HOSTS) as fleet:
            runs_dir = work / "runs"
            runs_dir.mkdir()
            bed = _Bed(fleet, repo, fleet.serve(repo.dir), runs_dir)
            say(f"fleet: the toolchain and the store's {BASE} on every host (one batch, not timed)")
            bed.rollout(BASE, "first", nesop_batches=["100%"])
            result = FleetResult(SUITE, HOSTS, runs, time.monotonic() - clock, os.cpu_count() or 1)
            host = fleet.host(SINGLE)
            for i in range(runs):
                say(f"fleet: run {i + 1} of {runs}: {BASE} → {UPDATE} on {SINGLE}, then on {HOSTS} hosts")
                result.single.append(bed.rollout(UPDATE, "one-host", nesop_hosts=SINGLE))
                result.single_back.append(bed.rollout(BASE, "one-host-back", nesop_hosts=SINGLE))
                result.fleet.append(bed.rollout(UPDATE, "fleet"))
                result.fleet_back.append(bed.rollout(BASE, "fleet-back"))
                result.apt.append(bed.apt(host, UPDATE))
                result.apt_back.append(bed.apt(host, BASE))
    finally:
        repo.close()
    return result


# -- the report ---------------------------------------------------------------

ORDER = ("start-up", "prepare", "batch", "close", "report", "exit")


def _phase_names(runs: list[Run]) -> list[str]:
    """The phases of these runs in the order they run."""
    names = {p.name for run in runs for p in run.phases()}

    def rank(name: str) -> tuple[int, int]:
        kind, _, number = name.partition(" ")
        return (ORDER.index(kind) if kind in ORDER else len(ORDER), int(number) if number.isdigit() else 0)

    return sorted(names, key=rank)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _batches(run: Run) -> str:
    return ", ".join(str(len(b)) for b in run.batches)


def _walls(runs: list[Run]) -> float:
    return _median([run.wall for run in runs])


def _of(runs: list[Run], phase: str, what: str) -> float:
    """The median of one number (a field of Phase) of the phase ``phase`` of these runs."""
    values = [getattr(p, what) for run in runs for p in run.phases() if p.name == phase]
    return _median([float(v) for v in values if v is not None])


def _cpus(phases: list[Phase], cpus: int) -> str:
    values = [p.cpus for p in phases if p.cpus is not None]
    return f"{statistics.median(values):.2f} of {cpus}" if values else "–"


def _phase_rows(label: str, runs: list[Run], cpus: int) -> list[list[str]]:
    rows = []
    for i, name in enumerate(_phase_names(runs)):
        phases = [p for run in runs for p in run.phases() if p.name == name]
        seconds = _median([p.seconds for p in phases])
        install = _median([p.install_s for p in phases])
        validate = _median([p.validate_s for p in phases])
        in_batch = name.startswith("batch")
        rows.append(
            [
                label if i == 0 else "",
                name,
                str(phases[0].hosts),
                f"{seconds:.2f}",
                f"{install:.2f}" if in_batch else "",
                f"{validate:.2f}" if in_batch else "",
                f"{seconds - install - validate:.2f}" if in_batch else "",
                f"{_median([float(p.tasks) for p in phases]):.0f}" if phases[0].tasks else "",
                _cpus(phases, cpus),
            ]
        )
    return rows


def markdown(r: FleetResult) -> str:
    single, fleet = Stat.of(x.wall for x in r.single), Stat.of(x.wall for x in r.fleet)
    back = Stat.of(x.wall for x in r.single_back)
    apt = Stat.of(a.wall for a in r.apt)
    apt_back = Stat.of(a.wall for a in r.apt_back)
    rows = [
        [
            f"`apt-get install {store.PACKAGE}={UPDATE}` on host1, no Ansible",
            "1",
            "–",
            apt.seconds(2),
            f"{paired([a.wall for a in r.apt], [x.wall for x in r.single]):.2f}x",
        ],
        [f"rollout {BASE} → {UPDATE}, one host", "1", _batches(r.single[0]), single.seconds(2), "1.00x"],
        [
            f"rollout {BASE} → {UPDATE}, {r.hosts} hosts",
            str(r.hosts),
            _batches(r.fleet[0]),
            fleet.seconds(2),
            f"**{r.ratio():.2f}x**",
        ],
        [
            f"`apt-get install --allow-downgrades {store.PACKAGE}={BASE}` on host1",
            "1",
            "–",
            apt_back.seconds(2),
            f"{paired([a.wall for a in r.apt_back], [x.wall for x in r.single_back]):.2f}x",
        ],
        [
            f"rollback rollout {UPDATE} → {BASE}, one host",
            "1",
            _batches(r.single_back[0]),
            back.seconds(2),
            "1.00x",
        ],
        [
            f"rollback rollout {UPDATE} → {BASE}, {r.hosts} hosts",
            str(r.hosts),
            _batches(r.fleet_back[0]),
            Stat.of(x.wall for x in r.fleet_back).seconds(2),
            f"{paired([x.wall for x in r.fleet_back], [x.wall for x in r.single_back]):.2f}x",
        ],
    ]
    cpus = r.cpus
    phase_rows = _phase_rows("one host", r.single, cpus) + _phase_rows(f"{r.hosts} hosts", r.fleet, cpus)
    ratios = ", ".join(f"{x:.2f}x" for x in r.ratios())
    return (
        f"{r.hosts} booted Debian 13 hosts, each in its own network namespace, reached over SSH by "
        "Ansible (the host's ansible-core, `forks = 20`, SSH connections kept open between tasks) "
        "from a controller namespace; the packages in a signed repository made by `nesop-deb "
        "publish` and served by a web server in the controller's namespace. The hosts and the "
        f"controller share this machine's {cpus} CPUs. Every host first got the store's {BASE} "
        f"(not timed; boot, publish and that first install took {r.setup_s:.0f} s). Then {r.runs} "
        f"runs, each in this order: the rollout of {UPDATE} (an update with a migration) to host1 "
        "alone (`-e nesop_hosts=host1`: the same playbook, its prepare and one batch), its rollback "
        f"rollout to {BASE}, the rollout to all {r.hosts} hosts with the playbook's default batches "
        "and their rollback rollout, then `apt-get install` of the same versions on host1 without "
        "Ansible. Wall times are `ansible-playbook ansible/rollout.yml` from its start to its exit, "
        f"as the operator waits for it; median (min–max) of {r.runs} runs. The last column is the "
        "median of each run's ratio to that run's one-host rollout (of the update, or of the "
        f"rollback); the {r.hosts}-host rollout's ratios were {ratios}, against "
        f"{fleet.median / single.median:.2f}x between the medians.\n\n"
        + table(["operation", "hosts", "batches", "wall", "vs the one-host rollout (per run)"], rows)
        + "\n#### Where a rollout's time goes\n\n"
        "From Ansible's log (`ANSIBLE_LOG_PATH`: when each play and task started), medians in "
        "seconds. Start-up: `ansible-playbook` until its first play; prepare: every host at once "
        "reads its state, gets the repository's key and list, reads the index and downloads the "
        "packages; a batch: its hosts at once save their rollout state, install (`apt-get install` "
        "run as a service of the host's systemd by `systemd-run --wait`), validate "
        "(`nesop-update validate` and dpkg's "
        "state), then the gate; close: each host's rollout state marked closed; report: the JSON "
        "report; exit: the recap until the command returns. Tasks: the task headers Ansible logged "
        "(an included file's tasks too). CPUs busy: this machine's busy CPU time over the phase's "
        "wall time (/proc/stat, sampled every 0.1 s; the hosts, the controller and anything else "
        "running).\n\n"
        + table(
            [
                "rollout",
                "play",
                "hosts",
                "seconds",
                "install task",
                "validate task",
                "other tasks",
                "tasks",
                "CPUs busy",
            ],
            phase_rows,
            "ll" + "r" * 7,
        )
    )


def why(r: FleetResult) -> str:
    single = _walls(r.single)
    fleet = _walls(r.fleet)
    names = [n for n in _phase_names(r.fleet) if n.startswith("batch")]
    batches = [_median([x.seconds(n) for x in r.fleet]) for n in names]
    batch = _median([x.seconds("batch 1") for x in r.single])
    once, once_fleet = single - batch, fleet - sum(batches)
    prepare, prepare_fleet = _of(r.single, "prepare", "seconds"), _of(r.fleet, "prepare", "seconds")
    install = _of(r.single, "batch 1", "install_s")
    validate = _of(r.single, "batch 1", "validate_s")
    apt = _median([a.wall for a in r.apt])
    apt_cpu = _median([a.cpu_s for a in r.apt])
    transaction = _median([a.transaction for a in r.apt])
    biggest = max(range(len(names)), key=lambda i: batches[i])
    big_hosts = len(r.fleet[0].batches[biggest])
    big_install = _of(r.fleet, names[biggest], "install_s")
    big_cpus = _of(r.fleet, names[biggest], "cpus")
    prepare_cpus = _of(r.fleet, "prepare", "cpus")
    cpus = r.cpus
    separate = once + len(names) * batch
    save = _median([x.task(SAVE_TASK) for x in r.single])
    polls = round(install - apt, 1) + 0.0  # no "-0.0"
    n = len(names)
    return (
        f"\nWhy: with batches of {_batches(r.fleet[0])}, {r.hosts} hosts are {n} updates one after "
        f"the other, and the one-host rollout is one; what keeps the ratio under {n} is what a "
        f"rollout pays once. The one-host rollout's {single:.1f} s are {once:.1f} s paid once "
        f"(start-up, the prepare {prepare:.1f} s, closing, the report) and one batch of "
        f"{batch:.1f} s; {n} such batches and the same once-paid part make {separate:.1f} s, "
        f"{separate / single:.2f}x. The {r.hosts}-host rollout took {fleet:.1f} s: its once-paid "
        f"part {once_fleet:.1f} s (the prepare of {r.hosts} hosts at once {prepare_fleet:.1f} s, with "
        f"{prepare_cpus:.1f} of {cpus} CPUs busy) and batches of "
        f"{' + '.join(f'{b:.1f}' for b in batches)} s. In {names[biggest]}, {big_hosts} hosts update "
        f"at once on this machine's {cpus} CPUs: one update keeps about {apt_cpu:.1f} CPU-seconds "
        f"busy (`apt-get install` alone), {big_hosts} of them at least "
        f"{big_hosts * apt_cpu / cpus:.1f} s of {cpus} CPUs; their install task took "
        f"{big_install:.1f} s, with {big_cpus:.1f} of {cpus} CPUs busy. Servers with CPUs of their "
        f"own would not share them; the controller's work still grows with the hosts.\n\n"
        f"Within a one-host batch of {batch:.1f} s: the install task {install:.1f} s, where "
        f"`apt-get install` alone takes {apt:.1f} s on the host (the runtime's transaction "
        f"{transaction:.1f} s of it), so `systemd-run` and the task's round trip add "
        f"{polls:+.1f} s; the validation {validate:.1f} s (`nesop-update validate` and dpkg's state); "
        f"{batch - install - validate:.1f} s of other tasks (about 20: most set facts on the "
        "controller in a few ms; one that runs a shell command on the host, over the SSH connection "
        f"kept open, takes {save:.2f} s). Each batch pays these again.\n"
    )


def goals(r: FleetResult) -> list[Goal]:
    ratio = r.ratio()
    single = _walls(r.single)
    fleet = _walls(r.fleet)
    margin = (
        f"{GOAL_RATIO - ratio:.2f}x under the limit"
        if ratio <= GOAL_RATIO
        else f"{ratio - GOAL_RATIO:.2f}x over the limit"
    )
    names = [n for n in _phase_names(r.fleet) if n.startswith("batch")]
    batches = " + ".join(f"{_median([x.seconds(n) for x in r.fleet]):.1f}" for n in names)
    return [
        Goal(
            f"Fleet: a {r.hosts}-host rollout ≤ {GOAL_RATIO:g}x the same rollout on one host",
            ratio <= GOAL_RATIO,
            f"{ratio:.2f}x, the median of {len(r.fleet)} runs' ratios "
            f"({', '.join(f'{x:.2f}x' for x in r.ratios())}; {margin}); medians {fleet:.1f} s vs "
            f"{single:.1f} s ({fleet / single:.2f}x); why: batches of {_batches(r.fleet[0])} hosts run "
            f"one after the other ({batches} s against the one-host rollout's "
            f"{_median([x.seconds('batch 1') for x in r.single]):.1f} s), on {r.cpus} CPUs that the "
            f"hosts share; `apt-get install` alone on one host takes "
            f"{_median([a.wall for a in r.apt]):.1f} s (§8)",
        )
    ]
