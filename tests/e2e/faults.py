"""Faults injected from outside the product: an apt run in the container, paused from the host at
the moment a file it writes says so, then killed, broken or resumed.

The runtime writes its journal (``journal.json``: the step in progress) and its update log before
each step's work; the host watches those files with inotify and stops the whole apt process group
with SIGSTOP at once, so a fault lands inside the step the journal names, not "some time later".
Some steps take a millisecond, less than the host needs to react, so strace (from the host, on the
apt process tree) makes every fsync of the run slow: each step's journal write and the step's own
durable writes then take long enough to be caught, and no line of the product changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .testbed import Container

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_libc = ctypes.CDLL(None, use_errno=True)


class _Watch:
    """inotify on one host directory: ``wait`` returns after something in it changed."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.fd, 1 << 16)

    def close(self) -> None:
        os.close(self.fd)


def _host_pids_in(box: Container) -> list[int]:
    """The host PIDs of the processes in the container's PID namespace."""
    ns = os.readlink(f"/proc/{box.pid}/ns/pid")
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                    pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


PACKAGE_TOOLS = ("apt-get", "dpkg", "nesop_deb.hooks")
SLOW_FSYNC_US = 40_000


class Background:
    """A command started in its own session in the container, steered from the host; every fsync
    of its process tree takes ``slow_fsync_us`` longer."""

    def __init__(self, box: Container, command: str, name: str, slow_fsync_us: int = SLOW_FSYNC_US) -> None:
        self.box = box
        self.names = (*PACKAGE_TOOLS, name)
        box.run(["sh", "-c", f"setsid {command} >/var/tmp/apt.log 2>&1 &"])
        deadline = time.monotonic() + 30
        self.pgid = 0
        while not self.pgid:
            assert time.monotonic() < deadline, f"{name} did not start"
            for pid in _host_pids_in(box):
                argv = _cmdline(pid)
                if not argv:
                    continue  # gone between the listing and the read
                # the command itself (or the script its interpreter runs), once setsid made it
                # the leader of its own process group: not setsid on its way to exec it
                script = len(argv) > 1 and "python" in argv[0] and argv[1].endswith(name)
                ours = argv[0].endswith(name) or script
                with contextlib.suppress(ProcessLookupError):
                    if ours and os.getpgid(pid) == pid:
                        self.pgid = pid
            time.sleep(0.005)
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
             "-e", f"inject=fsync,fdatasync:delay_enter={slow_fsync_us}", "-p", str(self.pgid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while "TracerPid:\t0\n" in Path(f"/proc/{self.pgid}/status").read_text():
            assert time.monotonic() < deadline and self.tracer.poll() is None, "strace did not attach"
            time.sleep(0.005)

    def pause_when(self, directory: str, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Stop every package tool the moment ``ready()`` holds, checked on each change in
        ``directory`` (a path in the container)."""
        host_dir = self.box.path(directory)
        host_dir.mkdir(parents=True, exist_ok=True)
        watch = _Watch(host_dir)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if time.monotonic() > deadline:
                    raise AssertionError(f"the update never reached {what}: {self.output()[-1500:]}")
                watch.wait(0.01)
            os.killpg(self.pgid, signal.SIGSTOP)
        finally:
            watch.close()
        self._stop_stragglers()
        # the fault must land inside the step, not after the update moved on
        assert ready(), f"the update left {what} before it could be paused"

    def _tools(self) -> list[int]:
        return [
            pid
            for pid in _host_pids_in(self.box)
            if any(tool in arg for arg in _cmdline(pid)[:4] for tool in self.names)
        ]

    def _stop_stragglers(self) -> None:
        """A maintainer script that left the group (none should) is stopped too, and waited for."""
        for pid in self._tools():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while any(_state(p) not in ("T", "t", "gone", "Z") for p in self._tools()):
            assert time.monotonic() < deadline, "the package tools did not stop"
            time.sleep(0.002)

    def resume(self) -> None:
        for pid in self._tools():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL apt, dpkg and the maintainer scripts (stopped or not) and wait until none is left."""
        deadline = time.monotonic() + 30
        while tools := self._tools():
            assert time.monotonic() < deadline, "apt or dpkg survived SIGKILL"
            for pid in tools:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.untrace()

    def untrace(self) -> None:
        if self.tracer.poll() is None:
            self.tracer.kill()
        self.tracer.wait()

    def wait(self, timeout: float = 300) -> int:
        """Let it finish; its exit status (from the log it leaves)."""
        deadline = time.monotonic() + timeout
        while self._tools():
            assert time.monotonic() < deadline, f"apt did not finish: {self.output()[-1500:]}"
            time.sleep(0.05)
        self.untrace()
        return 0 if "E: " not in self.output() else 1

    def output(self) -> str:
        path = self.box.path("/var/tmp/apt.log")
        return path.read_text(errors="replace") if path.exists() else ""


class BackgroundApt(Background):
    """``apt-get ARGS`` in the background."""

    def __init__(self, box: Container, args: str) -> None:
        super().__init__(box, f"apt-get {args}", "apt-get")


def journal_at(box: Container, journal: str, step: str, kind: str = "apply") -> Callable[[], bool]:
    """True once the write-ahead journal names ``step`` as the step in progress."""
    path = box.path(journal)

    def ready() -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if data.get("kind") != kind:
            return False
        return kind != "apply" or (data.get("phase") == "applying" and data.get("steps", [None])[-1] == step)

    return ready


def log_says(box: Container, log_file: str, text: str) -> Callable[[], bool]:
    """True once the update log has ``text`` in what was written after this call."""
    path = box.path(log_file)
    offset = path.stat().st_size if path.exists() else 0

    def ready() -> bool:
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return text.encode() in fh.read()
        except OSError:
            return False

    return ready


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system (a host path); returns the file."""
    directory.mkdir(mode=0o700, exist_ok=True)
    filler = directory / ".filler"
    st = os.statvfs(directory)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
        block = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, block)
    finally:
        os.close(fd)
    return filler
