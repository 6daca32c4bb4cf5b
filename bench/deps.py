"""Benchmark 7: updates that change the app's virtualenv (the example store's 1.1.x releases).

The store moved onto gunicorn and MarkupSafe in a virtualenv at 1.1.0; 1.1.1 upgrades MarkupSafe
3.0.3 -> 3.0.4 (a compiled cp313 wheel) and nothing else; 1.1.2 adds itsdangerous (a pure wheel)
and the code that uses it. Their packages are built for the Python of the Debian release the
server runs (13, "trixie": the store's ``[dependencies] python``), with ``--python`` read from that
release's root, and carry their wheels: the server has no network.

Size: the 1.1.1 update next to the one wheel it ships. Goal: at most the wheel + 20 KiB.

Outage: each run on a new Debian 13 container, the store first installed at 1.1.0 from a --full
package (a server keeps the environments its backups name: on the same server, 1.1.1 applied
again would find its virtualenv built). In it, one after the other: a bare ``systemctl restart``
of the store at 1.1.0 (the baseline), ``systemctl stop`` + ``systemctl start``, ``apt-get install
./1.1.1.deb`` (its virtualenv built before the stop, switched by one rename inside the outage), a
second bare restart at 1.1.1 (the baseline pools both: the gunicorn store at 1.1.0 and 1.1.1),
``apt-get install ./1.1.2.deb`` (sets up the rollback, not compared), and ``apt-get install
nesop-store-update=1.1.1``: the rollback of a dependency change (itsdangerous leaves the live
virtualenv; from 1.1.3, whose requirements are 1.1.1's, the virtualenv would not change). The
live virtualenv's package set is read before the 1.1.2 update, at 1.1.2 and after the rollback.

Goals: each outage (the 1.1.1 update, the rollback from 1.1.2) at most 1.2x the bare restarts';
the rollback leaves the package set the virtualenv had before the update.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from debian.arfile import ArError, ArFile

from bench import outage
from bench.common import Goal, Stat, say, table
from bench.server import BenchError, OpResult, Server, root_of
from tests.e2e import store

SUITE = "trixie"  # Debian 13: its python3 is the 3.13 the store's [dependencies] names
BASE = "1.1.0"  # gunicorn + MarkupSafe 3.0.3: the first install (--full)
UPGRADE = "1.1.1"  # MarkupSafe 3.0.3 -> 3.0.4, nothing else
ADDED = "1.1.2"  # + itsdangerous: the rollback from here to UPGRADE removes it
WHEEL_ALLOWANCE = 20 * 1024  # the update may weigh its wheel plus this
VENV = f"{store.APP_ROOT}/venv"
# The live virtualenv's distributions, as `pip freeze` would list them (names normalized);
# -I -B: nothing of the environment, nothing written
_PACKAGE_SET = (
    "import importlib.metadata as m, json, re\n"
    "print(json.dumps(sorted(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() + '==' + d.version"
    " for d in m.distributions())))\n"
)
_BUILT = r"virtualenv (?P<path>\S+) built in (?P<seconds>[0-9.]+) s"
_REUSED = r"virtualenv (?P<id>\S+) \((?P<path>\S+)\) is built already"


@dataclass(frozen=True)
class Packages:
    toolchain: Path  # for SUITE
    python: str  # the server's python3 (major.minor), what the packages were built for
    full: Path  # --full package of BASE
    updates: dict[str, Path]  # UPGRADE, ADDED
    build_s: dict[str, float]  # version: seconds `nesop-deb build` took


@dataclass(frozen=True)
class DebSize:
    """One update package and what is in it."""

    version: str
    file: str
    bytes: int
    control_bytes: int  # the control archive (maintainer scripts, md5sums)
    data_bytes: int  # the data archive (payload, manifest, wheels)
    wheels: tuple[tuple[str, int], ...]  # the wheels it ships: file, bytes
    files: tuple[str, ...]  # the app files it ships
    hashes: int  # sha256 pins in the release's requirements (the manifest carries them all)
    build_s: float

    @property
    def wheel_bytes(self) -> int:
        return sum(n for _, n in self.wheels)

    @property
    def overhead(self) -> int:
        return self.bytes - self.wheel_bytes


@dataclass
class DepsResult:
    suite: str
    python: str
    sizes: list[DebSize]
    runs: int
    restarts: list[OpResult] = field(default_factory=list)  # the gunicorn store at BASE and UPGRADE
    stop_starts: list[OpResult] = field(default_factory=list)
    upgrades: list[OpResult] = field(default_factory=list)  # BASE -> UPGRADE
    additions: list[OpResult] = field(default_factory=list)  # UPGRADE -> ADDED (not compared)
    rollbacks: list[OpResult] = field(default_factory=list)  # ADDED -> UPGRADE, apt
    # the live virtualenv's packages at UPGRADE before the ADDED update, at ADDED, after the rollback
    package_sets: list[tuple[list[str], list[str], list[str]]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # the venv link: before, after

    def size(self, version: str) -> DebSize | None:
        return next((s for s in self.sizes if s.version == version), None)

    def baseline(self) -> Stat:
        return Stat.of(op.outage_s for op in self.restarts)

    def sets_equal(self) -> int:
        return sum(before == after for before, _, after in self.package_sets)


def server_python(suite: str = SUITE) -> str:
    """The major.minor of ``suite``'s python3, from the root the server boots (/usr/bin/python3 is
    a link to python3.X)."""
    link = (root_of(suite) / "usr/bin/python3").readlink().name
    m = re.fullmatch(r"python(3\.[0-9]+)", link)
    if m is None:
        raise BenchError(f"the Debian {suite} root's /usr/bin/python3 points to {link!r}, not python3.X")
    return m[1]


def build(work: Path, toolchain: Path) -> Packages:
    """The store's history and its 1.1.x packages for the server's Python; the toolchain copied
    aside (a `make package` meanwhile cannot swap it)."""
    work.mkdir(parents=True, exist_ok=True)
    if not toolchain.is_file():
        raise FileNotFoundError(f"{toolchain}: build it first with `make package SUITE={SUITE}`")
    own_toolchain = work / toolchain.name
    shutil.copyfile(toolchain, own_toolchain)
    python = server_python()
    say(f"dependencies: building the store's {BASE} (--full), {UPGRADE} and {ADDED} for Python {python}")
    repo = store.ExampleRepo.create(work)
    timings: dict[str, float] = {}

    def timed(version: str, *args: str, name: str | None = None) -> Path:
        started = time.monotonic()
        deb = repo.build(f"v{version}", "--python", python, *args, name=name)
        timings[version] = time.monotonic() - started
        return deb

    full = timed(BASE, "--full", name=f"full-{BASE}")
    updates = {v: timed(v) for v in (UPGRADE, ADDED)}
    return Packages(own_toolchain, python, full, updates, timings)


def _ar_members(deb: Path) -> dict[str, int]:
    """The sizes of a .deb's ar members (debian-binary, control.tar.*, data.tar.*)."""
    try:
        return {m.name: m.size for m in ArFile(str(deb)).getmembers()}
    except ArError as exc:
        raise BenchError(f"{deb}: not an ar archive ({exc})") from exc


def deb_size(deb: Path, version: str, build_s: float) -> DebSize:
    manifest = json.loads((deb.parent / "update_manifest.json").read_text())
    members = _ar_members(deb)
    deps = manifest["dependencies"] or {}
    requirements = deps.get("requirements", "")
    return DebSize(
        version=version,
        file=deb.name,
        bytes=deb.stat().st_size,
        control_bytes=sum(n for k, n in members.items() if k.startswith("control.tar")),
        data_bytes=sum(n for k, n in members.items() if k.startswith("data.tar")),
        wheels=tuple((w["file"], int(w["size"])) for w in deps.get("wheels", [])),
        files=tuple(f["path"] for f in manifest["files"]),
        hashes=requirements.count("--hash=sha256:"),
        build_s=build_s,
    )


def package_set(server: Server) -> list[str]:
    """The live virtualenv's distributions, name==version, sorted."""
    out = server.box.run([f"{VENV}/bin/python", "-I", "-B", "-c", _PACKAGE_SET]).stdout
    return [str(x) for x in json.loads(out)]


def venv_link(server: Server) -> str:
    return server.box.run(["readlink", VENV]).stdout.strip()


def measure(packages: Packages, runs: int) -> DepsResult:
    sizes = [deb_size(packages.full, BASE, packages.build_s[BASE])] + [
        deb_size(deb, v, packages.build_s[v]) for v, deb in packages.updates.items()
    ]
    result = DepsResult(SUITE, packages.python, sizes, runs)
    upgrade, added = packages.updates[UPGRADE], packages.updates[ADDED]
    for i in range(runs):
        # a new server each run: the update builds its virtualenv every time (a server keeps the
        # environments its backups name, so the same update applied again would find it built)
        say(f"dependencies: run {i + 1} of {runs}, a new Debian 13 server at {BASE}")
        with Server(packages.toolchain, packages.full, suite=SUITE) as server:
            python = server.box.run(
                ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
            ).stdout.strip()
            if python != packages.python:
                raise BenchError(f"the server's python3 is {python}, the packages are for {packages.python}")
            result.restarts.append(server.restart())
            result.stop_starts.append(server.stop_start())
            result.upgrades.append(server.install(upgrade))
            result.restarts.append(server.restart())
            before, link = package_set(server), venv_link(server)
            result.additions.append(server.install(added))
            between = package_set(server)
            result.rollbacks.append(server.rollback(UPGRADE))
            result.package_sets.append((before, between, package_set(server)))
            result.links.append((link, venv_link(server)))
    return result


# -- the report ---------------------------------------------------------


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def size_goal(r: DepsResult) -> Goal | None:
    s = r.size(UPGRADE)
    if s is None:
        return None
    limit = s.wheel_bytes + WHEEL_ALLOWANCE
    met = s.bytes <= limit
    return Goal(
        f"Size: the update of one dependency ({UPGRADE}) ≤ its wheel + 20 KiB",
        met,
        f"{_kib(s.bytes)} against the wheel's {_kib(s.wheel_bytes)}: {_kib(s.overhead)} more "
        f"({_kib(abs(limit - s.bytes))} {'under' if met else 'over'} the {_kib(limit)} limit) (§2)",
    )


def size_markdown(r: DepsResult) -> str:
    rows = []
    for s in r.sizes:
        full = s.version == BASE
        wheels = ", ".join(f"`{w.split('-')[0]}-{w.split('-')[1]}` {_kib(n)}" for w, n in s.wheels)
        rows.append(
            [
                f"{'`--full` package of' if full else 'update'} `{s.file}`",
                _kib(s.bytes),
                wheels,
                _kib(s.wheel_bytes),
                _kib(s.overhead),
                _kib(s.wheel_bytes + WHEEL_ALLOWANCE) if s.version == UPGRADE else "",
                f"{s.build_s:.2f} s",
            ]
        )
    upgrade = r.size(UPGRADE)
    why = ""
    if upgrade is not None:
        why = (
            f"\nWhy: {UPGRADE} ships {len(upgrade.files)} app file(s) "
            f"({', '.join(f'`{f}`' for f in upgrade.files)}) and the one new wheel; the server keeps "
            "every wheel it was sent, so the unchanged gunicorn wheel does not travel again. Of the "
            f"{_kib(upgrade.overhead)} besides the wheel, the control archive is "
            f"{_kib(upgrade.control_bytes)} (the maintainer scripts, as in every update) and the "
            f"data archive {_kib(upgrade.data_bytes - upgrade.wheel_bytes)} more than the wheel (a "
            "zip, which does not compress further): the new `requirements.txt` and the manifest, "
            f"which carries the requirements too, {upgrade.hashes} sha256 pins (every file PyPI "
            "has of each version, as `pip-compile --generate-hashes` writes them), hex digits that "
            "compress to half at best.\n"
        )
    return (
        f"The store's 1.1.x releases, built for Python {r.python} on amd64 (Debian 13): 1.1.1 "
        "upgrades MarkupSafe 3.0.3 → 3.0.4, a compiled wheel, and changes nothing else; 1.1.2 adds "
        "itsdangerous (a pure wheel) and the code that uses it. Goal: the update of one "
        "dependency weighs at most its wheel + 20 KiB.\n\n"
        + table(
            ["package", "size", "wheels shipped", "wheels", "besides the wheels", "limit", "build time"],
            rows,
        )
        + why
    )


def _steps_ms(ops: list[OpResult], block: str) -> str:
    totals = [sum(op.steps(block).get(s, 0.0) for s in outage.IN_OUTAGE) for op in ops]
    return f"{statistics.median(totals) * 1000:.0f}"


ROLLBACK_IN_OUTAGE = (*outage.IN_OUTAGE, "undo")  # a rollback's undo puts the venv link back too


def _undo_ms(ops: list[OpResult]) -> str:
    """A rollback's steps from its stop to its start (the undo, the link put back in it)."""
    totals = [sum(op.steps("roll back").get(s, 0.0) for s in ROLLBACK_IN_OUTAGE) for op in ops]
    return f"{statistics.median(totals) * 1000:.0f}"


def _before_row(label: str, ops: list[OpResult]) -> list[str]:
    built, reused = built_seconds(ops)
    text = f"{Stat.of(built).seconds(2)}" if built else "none built"
    if reused:
        text += f"; found built already in {reused} run(s)"
    return [
        label,
        Stat.of(op.steps("apply ").get("venv-build", 0.0) for op in ops).seconds(2),
        text,
        "`venv-switch`: " + Stat.of(op.steps("apply ").get("venv-switch", 0.0) for op in ops).millis(),
        Stat.of(op.block("apply ") for op in ops).seconds(2),
        Stat.of(op.wall for op in ops).seconds(2),
    ]


def built_seconds(ops: list[OpResult]) -> tuple[list[float], int]:
    """The "virtualenv ... built in X s" times of ``ops`` and how many found theirs built already."""
    built = [float(m["seconds"]) for op in ops for m in op.lines(_BUILT)]
    reused = sum(1 for op in ops if op.lines(_REUSED))
    return built, reused


def outage_markdown(r: DepsResult) -> str:
    base = r.baseline().median
    upgrade = r.size(UPGRADE)
    upgrade_file = upgrade.file if upgrade else f"…_{UPGRADE}_py{r.python}_amd64.deb"
    rows = [
        outage._row(f"`systemctl restart` (gunicorn store at {BASE} and {UPGRADE})", r.restarts, base, ""),
        outage._row(f"`systemctl stop`, `systemctl start` (store at {BASE})", r.stop_starts, base, ""),
        outage._row(
            f"`apt install ./{upgrade_file}` ({BASE} → {UPGRADE}: MarkupSafe 3.0.3 → 3.0.4)",
            r.upgrades,
            base,
            _steps_ms(r.upgrades, "apply "),
        ),
        outage._row(
            f"`apt install nesop-store-update={UPGRADE}` ({ADDED} → {UPGRADE}: itsdangerous removed)",
            r.rollbacks,
            base,
            _undo_ms(r.rollbacks),
        ),
        outage._row(
            f"`apt install ./…_{ADDED}_py{r.python}_amd64.deb` ({UPGRADE} → {ADDED}: +itsdangerous; "
            "sets up the rollback)",
            r.additions,
            base,
            _steps_ms(r.additions, "apply "),
        ),
    ]
    header = outage.HEADER
    before = [
        _before_row(f"{BASE} → {UPGRADE} (apply: gunicorn, markupsafe)", r.upgrades),
        _before_row(f"{UPGRADE} → {ADDED} (apply: gunicorn, itsdangerous, markupsafe)", r.additions),
        [
            f"{ADDED} → {UPGRADE} (apt rollback)",
            "–",
            f"none: {UPGRADE}'s environment is kept while a backup names it",
            "`undo`: " + Stat.of(op.steps("roll back").get("undo", 0.0) for op in r.rollbacks).millis(),
            Stat.of(op.block("roll back") for op in r.rollbacks).seconds(2),
            Stat.of(op.wall for op in r.rollbacks).seconds(2),
        ],
    ]
    return (
        f"The store on gunicorn (1.1.x), in a Debian 13 container (Python {r.python}; a private "
        "network, so it reaches nothing: the packages carry the wheels), measured as above: "
        f"median (min–max) of {r.runs} runs, each on a new server first installed at {BASE} "
        "(so that each update builds its virtualenv: a server keeps the environments its backups "
        "name, and the same update applied again would find it built), every operation of a run "
        "in that one container. "
        f'"vs restart" divides by the median of all {len(r.restarts)} bare restarts of the gunicorn '
        f"store ({r.baseline().millis()}), at {BASE} and at {UPGRADE}, not by the stdlib store's "
        f"above. The rollback compared is `apt install nesop-store-update={UPGRADE}` from {ADDED}, "
        f"which added itsdangerous: the rollback takes it out of the live virtualenv by putting "
        f"the link back to {UPGRADE}'s environment (from 1.1.3, whose requirements are "
        f"{UPGRADE}'s, a rollback to {UPGRADE} would leave the virtualenv as it is). For the "
        'rollback, "update.log stop…start" adds up its steps from `stop` to `start` (`undo` '
        "among them).\n\n"
        + table(header, rows)
        + "\nBefore the stop, and the whole apt command: `venv-build` copies the shipped wheels into "
        "the wheel store, builds the environment offline and imports every module in it as the "
        'app\'s account; its log line "virtualenv … built in" times the build and the import check. '
        "Inside the outage the switch is one rename of the link (`venv-switch`; a rollback puts "
        "the link back in its `undo` step).\n\n"
        + table(
            [
                "operation",
                "`venv-build` step",
                '"virtualenv … built in"',
                "link switched (in the outage)",
                "transaction",
                "apt command",
            ],
            before,
        )
        + "\n"
        + _sets_text(r)
        + "\n"
        + _why(r)
    )


def _sets_text(r: DepsResult) -> str:
    if not r.package_sets:
        return ""
    equal = r.sets_equal()
    same_link = sum(a == b for a, b in r.links)
    before, between, after = r.package_sets[0]
    added = sorted(set(between) - set(before))
    removed = sorted(set(before) - set(between))
    change = ", ".join([f"+{x}" for x in added] + [f"−{x}" for x in removed]) or "nothing"
    return (
        f"The live virtualenv's package set (`{VENV}/bin/python -I -B`, `importlib.metadata`: every "
        f"distribution, name==version), read at {UPGRADE} before the {ADDED} update and again "
        f"after the apt rollback to {UPGRADE}: **{'equal' if equal == len(r.package_sets) else 'NOT equal'} "
        f"in {equal} of {len(r.package_sets)} runs**. At {UPGRADE}: {', '.join(before)}; the "
        f"{ADDED} update changed {change}; after the rollback: {', '.join(after)}. The link "
        f"`{VENV}` named the same environment before the update and after the rollback in "
        f"{same_link} of {len(r.links)} runs.\n"
    )


def _why(r: DepsResult) -> str:
    lines = []
    restarts = r.restarts
    for label, ops in ((f"{BASE} → {UPGRADE}", r.upgrades), (f"rollback {ADDED} → {UPGRADE}", r.rollbacks)):
        extra = (Stat.of(op.outage_s for op in ops).median - r.baseline().median) * 1000
        delta = {k: (_service(ops, k) - _service(restarts, k)) * 1000 for k in ("stop", "gap", "startup")}
        lines.append(
            f"- {label}: {extra:+.0f} ms against the restart. Stopping {delta['stop']:+.0f} ms, "
            f"Stopped→Started {delta['gap']:+.0f} ms, start-up {delta['startup']:+.0f} ms."
        )
    return (
        "Why: as for the stdlib store, the outage runs from `Stopping` to the first answer after "
        "`Started`, and an update adds its steps between `Stopped` and `Started`; building the "
        "virtualenv is not among them (it is done, imports checked, before the stop), and the "
        'switch is a rename. gunicorn\'s start-up ("Started→listening" ends at its '
        '"Listening at:" line; the first answer needs a worker too) runs while apt, dpkg and the '
        "health gate share the two CPUs.\n\n" + "\n".join(lines) + "\n"
    )


def _service(ops: list[OpResult], key: str) -> float:
    values = [op.service[key] for op in ops if key in op.service]
    return statistics.median(values) if values else 0.0


def goals(r: DepsResult) -> list[Goal]:
    out: list[Goal] = []
    sized = size_goal(r)
    if sized is not None:
        out.append(sized)
    if not r.restarts:
        return out
    base = r.baseline().median
    least = Stat.of(op.outage_s for op in r.stop_starts).median
    checks = (
        (f"Outage of {UPGRADE} (a dependency upgraded, its virtualenv built before the stop)", r.upgrades),
        (f"Outage of the apt rollback {ADDED} → {UPGRADE} (a dependency removed)", r.rollbacks),
    )
    for name, ops in checks:
        compared = Stat.of(op.outage_s for op in ops).median
        ratio = compared / base
        limit = base * outage.GOAL_RATIO
        margin = (
            f"{(limit - compared) * 1000:.0f} ms under the {limit * 1000:.0f} ms limit"
            if ratio <= outage.GOAL_RATIO
            else f"{(compared - limit) * 1000:.0f} ms over the {limit * 1000:.0f} ms limit"
        )
        out.append(
            Goal(
                f"{name} ≤ {outage.GOAL_RATIO}x a bare restart of the gunicorn store",
                ratio <= outage.GOAL_RATIO,
                f"outage {compared * 1000:.0f} ms vs restart {base * 1000:.0f} ms = {ratio:.2f}x "
                f"({margin}); a bare `systemctl stop` + `systemctl start` takes "
                f"{least * 1000:.0f} ms ({least / base:.2f}x the restart) (§1)",
            )
        )
    equal = r.sets_equal()
    out.append(
        Goal(
            f"The apt rollback {ADDED} → {UPGRADE} gives back the virtualenv's package set",
            equal == len(r.package_sets) > 0,
            f"equal at {UPGRADE} before the {ADDED} update and after the rollback in {equal} of "
            f"{len(r.package_sets)} runs (§1)",
        )
    )
    return out
