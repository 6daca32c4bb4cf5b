"""A benchmark server: a booted Debian container (the host's release, or the one asked for)
running the example store.

Each operation (an update, a rollback, a bare restart) is timed from the host, watched by the
health poller, and returns the per-step durations that the runtime wrote to ``update.log``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.poller import HealthPoller, Outage, Sample, longest_outage
from tests.e2e import store
from tests.e2e.testbed import BASE_PACKAGES, Container, build_base_root, cache_dir_from_env, host_suite

LOG = f"{store.APP_ROOT}/logs/update.log"
TAIL = 0.25  # seconds of probes kept before and after an operation, for the plot
# `2026-11-27T14:34:11+0000 INFO   <- stop (0.069 s)`: two spaces of indent per level
_END = re.compile(r"^\S+ \S+ (?P<indent> *)<- (?P<name>.+?) \((?P<seconds>[0-9.]+) s\)$")
_FAILED = re.compile(r"^\S+ \S+ (?P<indent> *)<- (?P<name>.+?) failed after")


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a slow result: a broken one)."""


@dataclass(frozen=True)
class Block:
    """A top-level block of update.log (an apply, a rollback, a check) and its steps."""

    name: str
    seconds: float
    steps: dict[str, float]


@dataclass
class OpResult:
    """One timed operation on the server."""

    label: str
    wall: float  # the command, as the operator waits for it
    outage: Outage | None  # the longest time /health did not answer 2xx (t since the start)
    blocks: list[Block] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)  # probes, t in seconds since the start (± TAIL)
    probe_rate: float = 0.0
    service: dict[str, float] = field(default_factory=dict)  # from the journal, see service_phases
    log: str = ""  # what the operation wrote to update.log

    def lines(self, pattern: str) -> list[re.Match[str]]:
        """The update.log lines of this operation that ``pattern`` matches (searched)."""
        return [m for m in map(re.compile(pattern).search, self.log.splitlines()) if m]

    @property
    def outage_s(self) -> float:
        return self.outage.seconds if self.outage else 0.0

    def steps(self, block_prefix: str) -> dict[str, float]:
        """Step durations of the blocks whose name starts with ``block_prefix``, summed by name."""
        out: dict[str, float] = {}
        for b in self.blocks:
            if b.name.startswith(block_prefix):
                for name, seconds in b.steps.items():
                    out[name] = out.get(name, 0.0) + seconds
        return out

    def block(self, block_prefix: str) -> float:
        return sum(b.seconds for b in self.blocks if b.name.startswith(block_prefix))


@dataclass(frozen=True)
class Entry:
    """One line of the container's journal."""

    t: float  # wall clock, from the journal's microseconds
    pid: int
    unit: str  # UNIT= of systemd's own lines, else the unit that wrote it
    message: str


def journal_entries(text: str) -> list[Entry]:
    """``journalctl -o json`` lines; binary messages and unparsable lines are skipped."""
    out: list[Entry] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        stamp = entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP")
        message = entry.get("MESSAGE")
        if stamp is None or not isinstance(message, str):
            continue
        unit = entry.get("UNIT") or entry.get("_SYSTEMD_UNIT") or ""
        out.append(Entry(int(stamp) / 1e6, int(entry.get("_PID") or 0), str(unit), message))
    return out


def service_phases(journal_json: str, since: float) -> dict[str, float]:
    """Where a stop-and-start of the store spent its time, from the container's journal.

    ``stop``: systemd's "Stopping" to "Stopped"; ``gap``: "Stopped" to "Started" (a bare restart
    only forks here; an update also runs its steps between the two); ``startup``: "Started" to
    the app's "listening on" line (gunicorn's "Listening at:" when it serves the store);
    ``at_<event>``: when each happened, in seconds after ``since`` (wall-clock time). Empty when the
    operation did not stop and start the store.
    """
    marks: dict[str, float] = {}
    for entry in journal_entries(journal_json):
        t, message = entry.t, entry.message
        for key, prefix in (("stopping", "Stopping "), ("stopped", "Stopped "), ("started", "Started ")):
            if message.startswith(prefix) and key not in marks:
                marks[key] = t
        listening = "listening on" in message or "Listening at: " in message
        if listening and "started" in marks and "listening" not in marks:
            marks["listening"] = t
    if not {"stopping", "stopped", "started", "listening"} <= marks.keys():
        return {}
    return {
        "stop": marks["stopped"] - marks["stopping"],
        "gap": marks["started"] - marks["stopped"],
        "startup": marks["listening"] - marks["started"],
        **{f"at_{key}": t - since for key, t in marks.items()},
    }


def parse_log(text: str) -> list[Block]:
    """The top-level blocks of update.log text, with their direct steps (the transaction's)."""
    blocks: list[Block] = []
    steps: dict[str, float] = {}
    for line in text.splitlines():
        failed = _FAILED.match(line)
        if failed:
            raise BenchError(f"update.log reports a failure: {line.strip()}")
        m = _END.match(line)
        if not m:
            continue
        depth, name, seconds = len(m["indent"]) // 2, m["name"], float(m["seconds"])
        if depth == 1:
            # "undo 1.0.3", "undo 1.0.2": one rollback step, whatever the versions
            key = "undo" if name.startswith("undo ") else name
            steps[key] = steps.get(key, 0.0) + seconds
        elif depth == 0:
            blocks.append(Block(name, seconds, steps))
            steps = {}
    return blocks


def root_of(suite: str) -> Path:
    """The cached root file system of Debian ``suite`` the servers boot (built once)."""
    return build_base_root(cache_dir_from_env(), BASE_PACKAGES, suite=suite)


class Server:
    """A fresh container with the toolchain installed and the store at ``full``'s version.

    The container has a private network (its own loopback), so its port 5000 collides with
    nothing on the host or in a test run next door, and it reaches no other network; the poller
    thread enters that namespace. ``suite``: the Debian release it runs, by default the host's
    (the release plain `make package` builds the toolchain for); ``toolchain`` must be for it.
    ``prepare``: what the server needs before the store's first install (e.g. its database
    server), run once the toolchain is installed.
    """

    def __init__(
        self,
        toolchain: Path,
        full: Path,
        suite: str | None = None,
        prepare: Callable[[Container], object] | None = None,
    ) -> None:
        self.toolchain = toolchain
        self.full = full
        self.suite = suite or host_suite() or "bookworm"
        self.prepare = prepare
        self.box = Container(root_of(self.suite))
        self.box.private_network = True
        self._poller: HealthPoller | None = None

    @property
    def poller(self) -> HealthPoller:
        if self._poller is None:
            raise BenchError("the server is not running")
        return self._poller

    def __enter__(self) -> Server:
        try:
            self.box.boot()
            self._poller = HealthPoller(store.HEALTH, netns=f"/proc/{self.box.pid}/ns/net").start()
            store.install_toolchain(self.box, self.toolchain)
            if self.prepare is not None:
                self.prepare(self.box)
            self.install(self.full, label="first install")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
        self.box.stop()

    # -- operations ----------------------------------------------------

    def _log_size(self) -> int:
        path = self.box.path(LOG)
        return path.stat().st_size if path.exists() else 0

    def _journal(self, since: float) -> str:
        argv = ["journalctl", "-u", store.UNIT, "-o", "json", "--no-pager", "--since", f"@{since:.6f}"]
        return self.box.run(argv, check=False).stdout

    def _timed(self, label: str, argv: list[str], *, timeout: float = 600.0) -> OpResult:
        # a stop and start more than 5 times in 10 s hits systemd's start limit; the runtime
        # resets it before its own start, and so does this before the operation (not timed)
        self.box.run(["systemctl", "reset-failed", store.UNIT], check=False)
        offset = self._log_size()
        wall0 = time.time()
        t0 = time.monotonic()
        result = self.box.run(argv, check=False, timeout=timeout, env={"DEBIAN_FRONTEND": "noninteractive"})
        t1 = time.monotonic()
        if result.returncode != 0:
            raise BenchError(
                f"{label}: `{' '.join(argv)}` failed (exit code {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        up = self.poller.wait_up(t1)
        samples = self.poller.between(t0, up)
        time.sleep(TAIL)  # a little of the time after, for the plot
        context = self.poller.between(t0 - TAIL, up + TAIL)
        text = ""
        log = self.box.path(LOG)
        if log.exists():  # a first install logs to stderr only: the app root did not exist yet
            with log.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", errors="replace")
        self.poller.forget_before(up)
        return OpResult(
            label=label,
            wall=t1 - t0,
            outage=longest_outage([Sample(s.t - t0, s.ok) for s in samples]),
            blocks=parse_log(text),
            timeline=[Sample(s.t - t0, s.ok) for s in context],
            probe_rate=len(samples) / (up - t0) if up > t0 else 0.0,
            service=service_phases(self._journal(wall0), wall0),
            log=text,
        )

    def copy_in(self, deb: Path) -> str:
        dest = f"/var/tmp/{deb.name}"
        if not self.box.path(dest).exists():
            self.box.copy_in(deb, dest)
        return dest

    def install(self, deb: Path, *, label: str | None = None) -> OpResult:
        """``apt-get install ./update.deb``, as the operator applies an update."""
        path = self.copy_in(deb)
        return self._timed(label or deb.name, ["apt-get", "install", "-y", "-q", "--allow-downgrades", path])

    def rollback(self, version: str) -> OpResult:
        """``apt-get install --allow-downgrades <package>=<version>``: the Debian way back."""
        argv = ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}={version}"]
        return self._timed(f"rollback to {version}", argv)

    def restart(self) -> OpResult:
        """The baseline: a bare ``systemctl restart`` of the same app."""
        return self._timed("systemctl restart", ["systemctl", "restart", store.UNIT])

    def stop_start(self) -> OpResult:
        """The floor of any update that changes the app while it is down: ``systemctl stop`` and
        then ``systemctl start``, two commands, with nothing in between."""
        unit = store.UNIT
        return self._timed(
            "systemctl stop, start", ["sh", "-c", f"systemctl stop {unit} && systemctl start {unit}"]
        )

    def version(self) -> str:
        return store.dpkg_status(self.box)[1]

    # -- shaping the app -----------------------------------------------

    def stop_service(self) -> None:
        self.box.run(["systemctl", "stop", store.UNIT])

    def start_service(self) -> None:
        self.box.run(["systemctl", "reset-failed", store.UNIT], check=False)
        self.box.run(["systemctl", "start", store.UNIT])
        self.poller.wait_up(time.monotonic())

    def chown_app(self, *paths: str) -> None:
        self.box.run(["chown", "-R", "nesop:nesop", *paths])

    def newest_backup_bytes(self) -> int:
        """Bytes in the newest backup directory: what the last transaction copied aside."""
        backups = self.box.path(f"{store.APP_ROOT}/backups")
        dirs = [d for d in backups.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if not dirs:
            return 0
        newest = max(dirs, key=lambda d: d.stat().st_mtime)
        return sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())

    def remove(self, path: str) -> None:
        target = self.box.path(path)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
