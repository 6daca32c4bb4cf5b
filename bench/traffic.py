"""Requests during an update, with and without the app's socket unit.

Eight clients in the container's network namespace keep a page that reads the database busy
(:mod:`bench.clients`: 4 open a new connection per request, 4 keep an HTTP/1.1 connection alive)
while the server goes through, ``rounds`` times in a row: a bare ``systemctl restart``, the
update 1.2.0 → 1.2.1 (a page, no migration), 1.2.1 → 1.2.2 (a migration), a failing migration
and a release that will not start (each undone, then dpkg's state set right again with
``apt install …=1.2.2``), and the apt rollbacks 1.2.2 → 1.2.1 (a down-migration) and
1.2.1 → 1.2.0. The example store's 1.2.0 brings socket activation (``[app] socket_file``); the
same releases without it (:mod:`bench.socketless`) run the same way on a second server.

Every request is recorded; each is counted in the operation during which it started (from the
command's start to the app's first answer after it, and a short pause). From the container's
journal: the outage (systemd's ``Stopping`` to the first answer after the last master's
``Listening at:``), the app processes each operation started, and whether one started while an
update held the gate (between the runtime's ``stop`` and ``start`` steps, or ``undo start`` and
``undo stop``).

Goals, with the socket unit: no failed request in any operation; exactly one new app process per
successful update or rollback and none before the gate opens; the longest request at most the
outage + 100 ms.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench import clients, deps, socketless
from bench.common import Goal, say, table
from bench.server import BenchError, Entry, journal_entries, root_of
from tests.e2e import store
from tests.e2e.testbed import Container

SUITE = deps.SUITE  # Debian 13: the gunicorn store's Python
PAGE = "http://127.0.0.1:5000/catalogue"  # the price list, read from the database at each request
BASE, NO_MIGRATION, MIGRATION = "1.2.0", "1.2.1", "1.2.2"
BROKEN_MIGRATION, BROKEN_START = "broken/socket-migration", "broken/socket-start"
# each ref and the one it follows: the socketless copy rebuilds them in this order
REFS: tuple[tuple[str, str | None], ...] = (
    (f"v{BASE}", None),
    (f"v{NO_MIGRATION}", f"v{BASE}"),
    (f"v{MIGRATION}", f"v{NO_MIGRATION}"),
    (BROKEN_MIGRATION, f"v{MIGRATION}"),
    (BROKEN_START, f"v{MIGRATION}"),
)
SOCKET = "nesop-store.socket"
# where the gate's "this start waits" line comes from when the gate is a unit of its own (else the
# app's own unit, from an ExecCondition=)
GATE_UNIT = f"nesop-update-gate@{store.UNIT.removesuffix('.service')}.service"
FRESH, KEEP_ALIVE = 4, 4
PAUSE = 0.005  # seconds each client waits after an answer
TIMEOUT = 60.0  # a request's timeout, a proxy's usual one
SETTLE = 0.5  # seconds of requests after the app's first answer, still counted in the operation
SLACK = 0.1  # the longest request may exceed the outage by this much

KINDS = {
    "restart": "`systemctl restart` (no update)",
    "update": f"update {BASE} → {NO_MIGRATION} (a page, no migration)",
    "migration": f"update {NO_MIGRATION} → {MIGRATION} (a migration)",
    "broken-migration": "failing migration (`broken/socket-migration`), undone",
    "broken-start": "release that will not start (`broken/socket-start`), undone",
    "fixup": f"dpkg fix-up after a failure (`apt install …={MIGRATION}`)",
    "rollback-migration": f"apt rollback {MIGRATION} → {NO_MIGRATION} (a down-migration)",
    "rollback": f"apt rollback {NO_MIGRATION} → {BASE}",
}
# each replaces the app with one new process
SUCCESSFUL = ("update", "migration", "rollback-migration", "rollback")


def broken_versions(round_: int) -> tuple[str, str]:
    """The versions the failing migration and the failing start get in round ``round_``: a new
    version each time, so that apt always sees a package it has not had before."""
    return f"1.2.{3 + 2 * round_}", f"1.2.{4 + 2 * round_}"


# -- the packages ----------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    socket: bool
    full: Path  # --full package of BASE
    debs: dict[str, Path]  # version: update package


@dataclass(frozen=True)
class Packages:
    toolchain: Path  # for SUITE
    python: str
    rounds: int  # the failing releases are built for this many rounds
    work: Path  # where the packages are, and each server's journal goes
    variants: tuple[Variant, ...]


def _variant(name: str, socket: bool, repo: store.ExampleRepo, python: str, rounds: int) -> Variant:
    def build(ref: str, *args: str, name: str | None = None) -> Path:
        return repo.build(ref, "--python", python, *args, name=name)

    debs = {v: build(f"v{v}") for v in (NO_MIGRATION, MIGRATION)}
    for r in range(rounds):
        for ref, version in zip((BROKEN_MIGRATION, BROKEN_START), broken_versions(r), strict=True):
            key = f"{ref.replace('/', '-')}-{version}"
            debs[version] = build(ref, "--version", version, "--since", f"v{MIGRATION}", name=key)
    return Variant(name, socket, build(f"v{BASE}", "--full", name=f"full-{BASE}"), debs)


def build(work: Path, toolchain: Path, rounds: int) -> Packages:
    """The store's 1.2.x packages with and without its socket unit, for the server's Python; the
    toolchain copied aside (a `make package` meanwhile cannot swap it)."""
    if not toolchain.is_file():
        raise FileNotFoundError(f"{toolchain}: build it first with `make package SUITE={SUITE}`")
    (work / "socket").mkdir(parents=True)
    own_toolchain = work / toolchain.name
    shutil.copyfile(toolchain, own_toolchain)
    python = deps.server_python(SUITE)
    repo = store.ExampleRepo.create(work / "socket")
    for ref, _ in REFS:
        found = subprocess.run(
            ["git", "-C", str(repo.path), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
        )
        if found.returncode != 0:
            raise BenchError(f"the example store has no {ref}: examples/nesop-store/releases lacks it")
    say(f"requests: building the store's {BASE}..{MIGRATION} and its failing releases for Python {python}")
    with_socket = _variant("socket unit", True, repo, python, rounds)
    say("requests: the same releases without the socket unit")
    plain = socketless.copy(repo, work / "no-socket", REFS)
    without = _variant("no socket unit", False, plain, python, rounds)
    return Packages(own_toolchain, python, rounds, work, (with_socket, without))


# -- the server and its operations ----------------------------------------


@dataclass(frozen=True)
class Op:
    """One command on the server and the time it is answerable for."""

    kind: str  # a key of KINDS
    round: int
    label: str
    start: float  # wall clock: the command started
    done: float  # the command returned
    end: float  # the app answered after it, and SETTLE more
    exit_code: int
    socket_state: str  # after it (with a socket unit): "active/running" while the app has it


class _Server:
    """A Debian 13 container with the toolchain and the store at ``full``'s version; a private
    network (its loopback only), which the clients' threads enter."""

    def __init__(self, toolchain: Path, full: Path, socket: bool) -> None:
        self.toolchain = toolchain
        self.full = full
        self.socket = socket
        self.box = Container(root_of(SUITE))
        self.box.private_network = True

    def __enter__(self) -> _Server:
        try:
            self.box.boot()
            store.install_toolchain(self.box, self.toolchain)
            result = self.apt(["install", "-y", "-q", self.copy_in(self.full)])
            if result.returncode != 0:
                raise BenchError(f"first install of {self.full.name} failed:\n{result.stdout[-3000:]}")
            self.box.wait_http(store.HEALTH, timeout=60)
            state = self.socket_state()
            if state.startswith("active/") != self.socket:
                raise BenchError(
                    f"after the first install {SOCKET} is {state!r}: not the {self.variant} variant"
                )
        except BaseException:
            self.box.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.box.stop()

    @property
    def variant(self) -> str:
        return "socket unit" if self.socket else "no socket unit"

    @property
    def netns(self) -> str:
        return f"/proc/{self.box.pid}/ns/net"

    def copy_in(self, deb: Path) -> str:
        dest = f"/var/tmp/{deb.name}"
        if not self.box.path(dest).exists():
            self.box.copy_in(deb, dest)
        return dest

    def apt(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        return self.box.run(["apt-get", *args], check=False, timeout=600, env=env)

    def socket_state(self) -> str:
        argv = ["systemctl", "show", "-p", "ActiveState,SubState", "--value", SOCKET]
        return "/".join(self.box.run(argv, check=False).stdout.split())

    def op(self, load: clients.Load, kind: str, round_: int, label: str, argv: list[str], ok: bool) -> Op:
        # a stop and a start more than 5 times in 10 s hit systemd's start limit: reset, untimed
        self.box.run(["systemctl", "reset-failed", store.UNIT, SOCKET], check=False)
        start = time.time()
        result = self.box.run(argv, check=False, timeout=600, env={"DEBIAN_FRONTEND": "noninteractive"})
        done = time.time()
        if (result.returncode == 0) != ok:
            raise BenchError(
                f"{self.variant}: {label}: `{' '.join(argv)}` exited {result.returncode}, "
                f"expected {'0' if ok else 'a failure'}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
            )
        try:
            load.wait_ok(done, timeout=TIMEOUT)
        except TimeoutError as exc:
            raise BenchError(f"{self.variant}: {label}: the store does not answer afterwards: {exc}") from exc
        time.sleep(SETTLE)
        end = time.time()
        state = self.socket_state() if self.socket else ""
        if self.socket and not state.startswith("active/"):
            # measured as it is; started again so that the next operation is measured on its own
            self.box.run(["systemctl", "start", SOCKET], check=False)
        return Op(kind, round_, label, start, done, end, result.returncode, state)

    def journal(self, since: float, keep: Path) -> list[Entry]:
        """The journal of the store's units (its socket's and its gate's too) and the runtime's
        (``-t nesop-update``) since ``since``; a copy of each, as ``journalctl -o short-precise``
        shows them, kept in ``keep``."""
        base = ["journalctl", "--no-pager", "--since", f"@{since:.6f}"]
        which = ["-u", store.UNIT, "-u", SOCKET, "-u", GATE_UNIT], ["-t", "nesop-update"]
        texts = [self.box.run([*base, "-o", "json", *w], check=False).stdout for w in which]
        keep.write_text(
            "".join(
                f"# journalctl {' '.join(w)}\n"
                + self.box.run([*base, "-o", "short-precise", *w], check=False).stdout
                for w in which
            )
        )
        return sorted(journal_entries(texts[0]) + journal_entries(texts[1]), key=lambda e: e.t)


def _rounds(server: _Server, load: clients.Load, variant: Variant, rounds: int) -> list[Op]:
    ops: list[Op] = []
    apt_file = ["apt-get", "install", "-y", "-q", "--allow-downgrades"]
    apt_version = [*apt_file, f"{store.PACKAGE}="]

    def run(kind: str, r: int, argv: list[str], ok: bool = True, label: str = "") -> None:
        ops.append(server.op(load, kind, r, label or KINDS[kind], argv, ok))

    def to(version: str) -> list[str]:
        return [*apt_version[:-1], apt_version[-1] + version]

    for r in range(rounds):
        broken_migration, broken_start = broken_versions(r)
        say(f"requests: {variant.name}, round {r + 1} of {rounds}")
        run("restart", r, ["systemctl", "restart", store.UNIT])
        run("update", r, [*apt_file, server.copy_in(variant.debs[NO_MIGRATION])])
        run("migration", r, [*apt_file, server.copy_in(variant.debs[MIGRATION])])
        run("broken-migration", r, [*apt_file, server.copy_in(variant.debs[broken_migration])], ok=False)
        run("fixup", r, to(MIGRATION), label=f"fix-up after {broken_migration}")
        run("broken-start", r, [*apt_file, server.copy_in(variant.debs[broken_start])], ok=False)
        run("fixup", r, to(MIGRATION), label=f"fix-up after {broken_start}")
        run("rollback-migration", r, to(NO_MIGRATION))
        run("rollback", r, to(BASE))
    return ops


# -- the journal --------------------------------------------------------------


_STEP = re.compile(r"(?:^|\s)-> (?P<step>stop|start|undo start|undo stop)$")
_LISTENING = re.compile(r"Listening at: .*\((?P<pid>[0-9]+)\)")
GATE_WAITS = "nesop-update gate:"


def gate_held(entries: Iterable[Entry]) -> list[tuple[float, float]]:
    """When an update held the gate: from the runtime's ``stop`` (or ``undo start``) step to its
    ``start`` (or ``undo stop``), which close and open it before they stop or start the app."""
    held: list[tuple[float, float]] = []
    since: float | None = None
    for e in sorted(entries, key=lambda e: e.t):
        m = _STEP.search(e.message.rstrip())
        if m is None:
            continue
        if m["step"] in ("stop", "undo start"):
            since = e.t if since is None else since
        elif since is not None:
            held.append((since, e.t))
            since = None
    if since is not None:
        held.append((since, math.inf))
    return held


def systemd_says(entries: Iterable[Entry], unit: str, verb: str) -> list[float]:
    """When systemd (PID 1) logged ``verb`` ("Started", "Stopping") for ``unit``."""
    return [e.t for e in entries if e.pid == 1 and e.unit == unit and e.message.startswith(verb + " ")]


def masters(entries: Iterable[Entry], unit: str) -> list[tuple[float, int]]:
    """gunicorn masters that began to serve: (when, pid) of their ``Listening at:`` line."""
    out = []
    for e in entries:
        m = _LISTENING.search(e.message) if e.unit == unit else None
        if m:
            out.append((e.t, int(m["pid"])))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (0 when empty)."""
    if not values:
        return 0.0
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


# -- per operation ------------------------------------------------------------


@dataclass
class OpStats:
    kind: str
    round: int
    label: str
    exit_code: int
    wall: float  # the command
    requests: int
    served: int
    failures: dict[str, int]  # by kind ("refused", "non-2xx 503", …)
    idle_lost: int
    reused: int  # requests sent on a kept-alive connection that had served before
    p50: float
    p99: float
    longest: float
    outage: float | None  # None: the app was not stopped
    processes: int  # gunicorn masters that began to serve
    starts: int  # systemd's "Started" of the service
    held: float  # seconds an update held the gate (from the runtime's steps)
    before_gate: int  # starts while an update held the gate
    gate_waits: int  # starts that waited at the gate
    socket_state: str
    examples: list[str] = field(default_factory=list)  # a few failed requests, for the report

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _inside(t: float, spans: Iterable[tuple[float, float]]) -> bool:
    return any(a < t < b for a, b in spans)


def analyze(op: Op, requests: Sequence[clients.Request], idle_lost: int, entries: Sequence[Entry]) -> OpStats:
    """The numbers of one operation: ``requests`` started during it, ``entries`` are the journal's
    lines of its time, ``idle_lost`` the kept-alive connections found closed in it."""
    seconds = sorted(r.seconds for r in requests)
    failed = [r for r in requests if not r.ok]
    unit = store.UNIT
    started = systemd_says(entries, unit, "Started")
    listening = masters(entries, unit)
    held = gate_held(entries)
    before_gate = max(
        sum(_inside(t, held) for t in started), len({pid for t, pid in listening if _inside(t, held)})
    )
    outage = None
    stopping = systemd_says(entries, unit, "Stopping")
    ups = [t for t, _ in listening] or started
    if stopping and ups and max(ups) > stopping[0]:
        answered = [r.end for r in requests if r.ok and r.end >= max(ups)]
        if answered:
            outage = min(answered) - stopping[0]
    examples = [
        f"{r.client} at +{r.start - op.start:.3f} s: {r.failure()} after {r.seconds * 1000:.0f} ms"
        + (" (on a reused connection)" if r.reused else "")
        for r in failed[:5]
    ]
    return OpStats(
        kind=op.kind,
        round=op.round,
        label=op.label,
        exit_code=op.exit_code,
        wall=op.done - op.start,
        requests=len(requests),
        served=len(requests) - len(failed),
        failures=dict(Counter(r.failure() for r in failed)),
        idle_lost=idle_lost,
        reused=sum(1 for r in requests if r.reused),
        p50=percentile(seconds, 50),
        p99=percentile(seconds, 99),
        longest=seconds[-1] if seconds else 0.0,
        outage=outage,
        processes=len({pid for _, pid in listening}),
        starts=len(started),
        held=sum(min(b, op.end) - max(a, op.start) for a, b in held),
        before_gate=before_gate,
        gate_waits=sum(
            1
            for e in entries
            if e.unit in (unit, GATE_UNIT) and GATE_WAITS in e.message and "waits" in e.message
        ),
        socket_state=op.socket_state,
        examples=examples,
    )


@dataclass
class KindStats:
    """The operations of one kind in one variant, their requests pooled."""

    kind: str
    ops: list[OpStats]
    p50: float
    p99: float

    @property
    def failures(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for op in self.ops:
            total.update(op.failures)
        return dict(total)

    @property
    def failed(self) -> int:
        return sum(op.failed for op in self.ops)

    def total(self, name: str) -> int:
        return sum(int(getattr(op, name)) for op in self.ops)

    @property
    def longest(self) -> float:
        return max(op.longest for op in self.ops)

    def outages(self) -> list[float]:
        return [op.outage for op in self.ops if op.outage is not None]

    def over_outage(self) -> float | None:
        """The most a request outlasted its operation's outage (negative: within it)."""
        values = [op.longest - op.outage for op in self.ops if op.outage is not None]
        return max(values) if values else None


@dataclass
class VariantResult:
    name: str
    socket: bool
    ops: list[OpStats]
    kinds: dict[str, KindStats]
    requests: int
    outside: dict[str, int]  # failures of requests started between operations (or before the first)
    seconds: float  # the load ran this long

    @property
    def failed(self) -> int:
        return sum(op.failed for op in self.ops) + sum(self.outside.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def summarize(
    name: str,
    socket: bool,
    ops: Sequence[Op],
    requests: Sequence[clients.Request],
    idle_lost: Sequence[float],
    entries: Sequence[Entry],
    seconds: float,
) -> VariantResult:
    """Each request and journal line goes to the operation during which it started (or was written)."""
    stats: list[OpStats] = []
    pooled: dict[str, list[float]] = {}
    counted: set[int] = set()
    for op in ops:
        mine = [r for r in requests if op.start <= r.start < op.end]
        counted.update(id(r) for r in mine)
        lost = sum(1 for t in idle_lost if op.start <= t < op.end)
        lines = [e for e in entries if op.start <= e.t < op.end]
        stats.append(analyze(op, mine, lost, lines))
        pooled.setdefault(op.kind, []).extend(r.seconds for r in mine)
    kinds = {}
    for kind in KINDS:
        of_kind = [s for s in stats if s.kind == kind]
        if of_kind:
            values = sorted(pooled[kind])
            kinds[kind] = KindStats(kind, of_kind, percentile(values, 50), percentile(values, 99))
    outside = Counter(r.failure() for r in requests if id(r) not in counted and not r.ok)
    return VariantResult(name, socket, stats, kinds, len(requests), dict(outside), seconds)


# -- the run ------------------------------------------------------------------


@dataclass
class RequestsResult:
    suite: str
    python: str
    rounds: int
    variants: list[VariantResult]
    clients: tuple[int, int] = (FRESH, KEEP_ALIVE)
    pause: float = PAUSE
    page: str = PAGE


def measure(packages: Packages, rounds: int) -> RequestsResult:
    rounds = min(rounds, packages.rounds)
    results = []
    for variant in packages.variants:
        say(f"requests: a new Debian 13 server, {variant.name}, the store at {BASE}")
        with _Server(packages.toolchain, variant.full, variant.socket) as server:
            load = clients.Load(
                PAGE, fresh=FRESH, keep_alive=KEEP_ALIVE, pause=PAUSE, timeout=TIMEOUT, netns=server.netns
            )
            began = time.time()
            with load:
                load.wait_ok(began, timeout=TIMEOUT)
                ops = _rounds(server, load, variant, rounds)
            load.check()
            seconds = time.time() - began
            keep = packages.work / f"journal-{variant.name.replace(' ', '-')}.txt"
            entries = server.journal(began - 1, keep)
        results.append(
            summarize(variant.name, variant.socket, ops, load.requests(), load.idle_lost(), entries, seconds)
        )
    return RequestsResult(SUITE, packages.python, rounds, results)


# -- the report ---------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "–"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid * 1000:.0f} ms ({low * 1000:.0f}–{high * 1000:.0f})"


def _range(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def _failures(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def markdown(r: RequestsResult) -> str:
    rows = []
    for kind, what in KINDS.items():
        for v in r.variants:
            k = v.kinds.get(kind)
            if k is None:
                continue
            over = k.over_outage()
            rows.append(
                [
                    what if v is r.variants[0] else "",
                    v.name,
                    str(len(k.ops)),
                    str(k.total("served")),
                    f"**{k.failed}**" if k.failed else "0",
                    str(k.total("idle_lost")),
                    _ms(k.p50),
                    _ms(k.p99),
                    _ms(k.longest),
                    _spread(k.outages()),
                    "–" if over is None else f"{over * 1000:+.0f} ms",
                    _range([op.processes for op in k.ops]),
                    _range([op.starts for op in k.ops]),
                    _spread([op.held for op in k.ops if op.held]),
                    str(k.total("before_gate")),
                    str(k.total("gate_waits")),
                ]
            )
    fresh, keep_alive = r.clients
    lines: list[str] = []
    odd: list[str] = []
    for v in r.variants:
        for kind, k in v.kinds.items():
            if k.failed:
                lines.append(f"- {v.name}, {KINDS[kind]}: {_failures(k.failures)}")
                examples = [e for op in k.ops for e in op.examples][:3]
                lines += [f"  - {e}" for e in examples]
        if v.outside:
            lines.append(f"- {v.name}, between operations: {_failures(v.outside)}")
        if v.socket:
            states = sorted({op.socket_state for op in v.ops if not op.socket_state.startswith("active/")})
            if states:
                odd.append(f"After some operations {SOCKET} was {', '.join(states)} (started again).")
    totals = "; ".join(
        f"{v.name}: {v.requests} requests in {v.seconds:.0f} s ({v.rate:.0f}/s), {v.failed} failed, "
        f"{sum(op.reused for op in v.ops)} sent on a reused keep-alive connection"
        for v in r.variants
    )
    return (
        f"The store's 1.2.x releases on Debian 13 (Python {r.python}), each variant on a new server "
        f"first installed at {BASE}. {fresh} clients open a new connection for each request and "
        f"{keep_alive} keep an HTTP/1.1 connection alive (checked for EOF before each reuse, as "
        f"urllib3 does), all GETting `{r.page.split('5000', 1)[1]}` (the price list, read from the "
        f"database) in closed loops with a {r.pause * 1000:.0f} ms pause, a {TIMEOUT:.0f} s timeout, "
        f"from threads in the container's network namespace. {r.rounds} rounds of the operations "
        "below, in this order, on each server; the failing releases get a new version each round. "
        "A request counts in the operation during which it started (until the app's first answer "
        f"after the command, and {SETTLE:g} s more). Failed: no 2xx answer to a request the client "
        "sent. Idle connections lost: a kept-alive connection found closed before a reuse (the "
        "client opened another; not a failure). Latencies are of every request, pooled over the "
        "runs. Outage: from systemd's `Stopping` of the store to the first answer after the last "
        'gunicorn master\'s `Listening at:` (median, min–max); "longest − outage": the most a '
        "request outlasted it. Masters: gunicorn masters that began to serve; starts: systemd's "
        "`Started` of the service; gate held: how long an update held the gate, from the runtime's "
        "`stop` step to its `start` (and from `undo start` to `undo stop`; median, min–max); before "
        "the gate: starts while an update held it; gated: starts that waited at the gate.\n\n"
        + table(
            [
                "operation",
                "variant",
                "runs",
                "served",
                "failed",
                "idle connections lost",
                "p50",
                "p99",
                "longest",
                "outage",
                "longest − outage",
                "masters",
                "starts",
                "gate held",
                "before the gate",
                "gated",
            ],
            rows,
            "ll" + "r" * 14,
        )
        + f"\n{totals}.\n"
        + ("\nFailed requests:\n\n" + "\n".join(lines) + "\n" if lines else "")
        + ("\n" + " ".join(odd) + "\n" if odd else "")
    )


def goals(r: RequestsResult) -> list[Goal]:
    socket = next((v for v in r.variants if v.socket), None)
    if socket is None:
        return []
    other = next((v for v in r.variants if not v.socket), None)
    besides = f"; without it {other.failed} of {other.requests}" if other else ""
    failing_ops = [op for op in socket.ops if op.failed]
    out = [
        Goal(
            "Requests during an update, with the socket unit: no failed request in any operation",
            socket.failed == 0,
            f"{socket.failed} failed of {socket.requests} in {len(socket.ops)} operations"
            + (f" (in {', '.join(sorted({op.label for op in failing_ops}))})" if failing_ops else "")
            + f", {sum(op.idle_lost for op in socket.ops)} idle connections lost{besides} (§7)",
        )
    ]
    successful = [op for op in socket.ops if op.kind in SUCCESSFUL]
    odd = [op for op in successful if (op.processes, op.starts) != (1, 1)]
    early = sum(op.before_gate for op in socket.ops)
    out.append(
        Goal(
            "With the socket unit: one new app process per successful update, none before the gate opens",
            not odd and early == 0 and bool(successful),
            f"{len(successful) - len(odd)} of {len(successful)} updates and rollbacks started exactly one "
            f"master; {early} starts while an update held the gate in {len(socket.ops)} operations"
            + (
                f"; not one: {', '.join(f'{op.label} ({op.processes}/{op.starts})' for op in odd)}"
                if odd
                else ""
            )
            + " (§7)",
        )
    )
    stopped = [op for op in socket.ops if op.outage is not None]
    worst = max(stopped, key=lambda op: op.longest - (op.outage or 0.0), default=None)
    if worst is not None and worst.outage is not None:
        over = worst.longest - worst.outage
        out.append(
            Goal(
                f"With the socket unit: the longest request ≤ the outage + {SLACK * 1000:.0f} ms",
                over <= SLACK,
                f"at worst {worst.label} (round {worst.round + 1}): longest {worst.longest * 1000:.0f} ms, "
                f"outage {worst.outage * 1000:.0f} ms ({over * 1000:+.0f} ms) in {len(stopped)} operations "
                "that stopped the app (§7)",
            )
        )
    return out
