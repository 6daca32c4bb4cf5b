"""Debian machines (12 or 13) with systemd as PID 1, for end-to-end tests.

A base root file system is built once with mmdebstrap and cached (see
baseroot.py).  Each scenario gets a `Container`: an overlayfs (or, failing
that, a copy) on top of the cached root, booted with systemd-nspawn and
driven from the host with nsenter.  No pytest in here, so it also works from
a shell, run from the repository root::

    python3 -m tests.e2e.testbed build   # build or find the cached root
    python3 -m tests.e2e.testbed boot    # ... and boot a container once
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Literal

from .baseroot import (
    BASE_PACKAGES,
    SUITES,
    base_root_key,
    build_base_root,
    cache_dir_from_env,
    default_suite,
    host_suite,
    missing_prerequisites,
)
from .hostside import (
    CommandError,
    HttpResponse,
    TestbedError,
    children,
    container_cgroups,
    free_port,
    group_members,
    http_get,
    http_in_netns,
    http_request,
    in_cgroups,
    pid_namespace,
    remove_cgroups,
    remove_tree,
    resolve_in_root,
)

__all__ = [
    "BASE_PACKAGES",
    "SUITES",
    "Backend",
    "CommandError",
    "Container",
    "HttpResponse",
    "TestbedError",
    "base_root_key",
    "build_base_root",
    "cache_dir_from_env",
    "default_suite",
    "free_port",
    "host_suite",
    "http_get",
    "missing_prerequisites",
]

# Inside a booted container these are fresh virtual file systems, so files
# written there through the host path would never be seen.
_HIDDEN_IN_CONTAINER: tuple[PurePosixPath, ...] = tuple(
    PurePosixPath(p) for p in ("/tmp", "/run", "/proc", "/sys", "/dev")
)

CONTAINER_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}

# --------------------------------------------------------------------------
# Containers

Backend = Literal["overlay", "copy"]

_LIVE: set[Container] = set()


@atexit.register
def _stop_all_live() -> None:
    # Safety net for callers that forgot stop() or died on an exception.
    for container in list(_LIVE):
        with contextlib.suppress(Exception):
            container.stop()


class Container:
    """One booted Debian machine with systemd as PID 1.

    Its file system is an overlay on the cached base root (upper layer in
    `workdir`), so it starts clean in milliseconds and survives `kill_hard()`
    and a new `boot()`.  `stop()` ends it for good and is always safe to call.

    `netns` joins an existing network namespace (e.g. `/run/netns/NAME`, set
    up from outside with its links and addresses) instead of the host's
    network or a private one of its own; it outlives the container's boots.
    """

    def __init__(
        self,
        base_root: Path,
        workdir: Path | None = None,
        *,
        name: str | None = None,
        backend: Backend | None = None,
        netns: Path | None = None,
    ) -> None:
        self.base_root = base_root.resolve()
        self._owns_workdir = workdir is None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="nesop-testbed-", dir="/var/tmp"))
        self.workdir = workdir.resolve()
        self.name = name or f"nesop-{uuid.uuid4().hex[:10]}"
        requested = backend or os.environ.get("NESOP_TESTBED_BACKEND") or None
        if requested not in (None, "overlay", "copy"):
            raise ValueError(f"unknown backend {requested!r}")
        self._requested_backend: Backend | None = requested  # type: ignore[assignment]
        self.backend: Backend | None = None
        self.backend_note = ""
        self.root = self.workdir / "merged"
        self.console_log = self.workdir / "console.log"
        self.boot_seconds: float | None = None
        self.boot_state: str | None = None
        self.failed_units: list[str] = []  # when the boot ended "degraded"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None
        self._cgroups: list[Path] = []
        self._mounted = False
        self._stopped = False
        # A private network namespace (only its own loopback): the app's fixed port cannot
        # collide with anything on the host or in another container. HTTP then goes through
        # `nsenter --net` from the host (see http_get).
        self.private_network = netns is not None or os.environ.get("NESOP_TESTBED_PRIVATE_NETWORK") == "1"
        self.netns = netns
        _LIVE.add(self)

    # -- context manager -------------------------------------------------

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- file system -----------------------------------------------------

    def _ensure_root(self) -> None:
        if self._stopped:
            raise TestbedError(f"container {self.name} was stopped")
        if self._mounted:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        fresh = not (self.workdir / "upper").exists() and not self.root.exists()
        if self.backend != "copy" and self._requested_backend != "copy":
            note = self._mount_overlay()
            if note is None:
                self.backend = "overlay"
            elif self._requested_backend == "overlay":
                raise TestbedError(f"overlayfs not usable: {note}")
            else:
                self.backend_note = f"overlayfs not usable ({note}); copied the root"
        if self.backend != "overlay":
            if not self.root.exists():
                # Copy into a temporary name first so a half copy is never booted.
                partial = self.workdir / "merged.partial"
                remove_tree(partial)
                subprocess.run(
                    ["cp", "-a", "--reflink=auto", str(self.base_root), str(partial)],
                    check=True,
                    stdin=subprocess.DEVNULL,
                )
                partial.rename(self.root)
            self.backend = "copy"
        self._mounted = True
        if fresh and (self.root / "etc").is_dir():
            # Unique per container, kept across its reboots, as on a server.
            (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")

    def _mount_overlay(self) -> str | None:
        """Mount the overlay; return why it failed, or None on success."""
        upper, work = self.workdir / "upper", self.workdir / "work"
        paths = (self.base_root, upper, work)
        if any(ch in str(p) for p in paths for ch in ",:\\"):
            return "path contains a character overlayfs options cannot carry"
        for directory in (upper, work, self.root):
            directory.mkdir(exist_ok=True)
        options = f"lowerdir={self.base_root},upperdir={upper},workdir={work}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            for directory in (upper, work, self.root):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            return result.stderr.strip() or f"mount exit code {result.returncode}"
        return None

    def path(self, container_path: str) -> Path:
        """Host path of `container_path` in this container's root.

        Raises ValueError for paths under /tmp, /run, /proc, /sys or /dev:
        inside the booted container those are separate virtual file systems.
        """
        self._ensure_root()
        host, canonical = resolve_in_root(self.root, container_path)
        for hidden in _HIDDEN_IN_CONTAINER:
            if canonical == hidden or hidden in canonical.parents:
                raise ValueError(
                    f"{container_path!r} is on a virtual file system inside the container "
                    f"({hidden}); use /var/tmp, /root, /opt, /etc, ..."
                )
        return host

    def copy_in(self, host_path: Path, dest: str, *, mode: int | None = None) -> Path:
        """Copy a file or directory from the host to `dest` in the container."""
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if host_path.is_dir():
            shutil.copytree(host_path, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(host_path, target)
        if mode is not None:
            target.chmod(mode)
        return target

    def write_file(self, dest: str, content: str | bytes, *, mode: int = 0o644) -> Path:
        """Create `dest` in the container with `content` (e.g. a unit file)."""
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        target.chmod(mode)
        return target

    # -- life cycle ------------------------------------------------------

    @property
    def pid(self) -> int:
        """Host PID of the container's PID 1 (systemd)."""
        if self._pid1 is None or not self.is_running():
            raise TestbedError(f"container {self.name} is not running")
        return self._pid1

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def boot(self, timeout: float = 60.0) -> None:
        """Boot systemd and wait until the system is running or degraded."""
        if self.is_running():
            raise TestbedError(f"container {self.name} is already running")
        self._ensure_root()
        self._reap()
        started = time.monotonic()
        deadline = started + timeout
        with self.console_log.open("ab") as log:
            log.write(f"\n=== boot {self.name} at {time.ctime()} ===\n".encode())
            log.flush()
            self._cgroups = container_cgroups(self.name)
            self._proc = subprocess.Popen(
                in_cgroups(
                    self._cgroups,
                    [
                        "systemd-nspawn",
                        "--directory",
                        str(self.root),
                        "--machine",
                        self.name,
                        "--boot",
                        # No systemd on the host to register with or to own a unit.
                        "--register=no",
                        "--keep-unit",
                        "--link-journal=no",
                        "--console=read-only",
                        *self._network_options(),
                    ],
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: kill_hard() and stop() can end it all.
                start_new_session=True,
                # Each container has its own root, so nspawn's image lock
                # (a file left in the host's /run) protects nothing here.
                env={**os.environ, "SYSTEMD_NSPAWN_LOCK": "0"},
            )
        try:
            self._pid1 = self._wait_for_pid1(deadline)
            self.boot_state = self._wait_for_system_running(deadline)
            self.failed_units = (
                self.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout.split("\n")
                if self.boot_state == "degraded"
                else []
            )
        except BaseException:
            self.kill_hard()
            raise
        self.boot_seconds = time.monotonic() - started

    def _network_options(self) -> list[str]:
        if self.netns is not None:
            # nspawn refuses it together with any other network option.
            return [f"--network-namespace-path={self.netns}"]
        return ["--private-network"] if self.private_network else []

    def _boot_failure(self, message: str) -> TestbedError:
        return TestbedError(
            f"container {self.name}: {message}\n--- console ({self.console_log}) ---\n{self.console_tail()}"
        )

    def _wait_for_pid1(self, deadline: float) -> int:
        assert self._proc is not None
        own_namespace = pid_namespace("self")
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._boot_failure(f"systemd-nspawn exited with {self._proc.returncode}")
            for child in children(self._proc.pid):
                try:
                    # Until exec the child is still nspawn in our namespace.
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                    if comm == "systemd" and pid_namespace(child) != own_namespace:
                        return child
                except OSError:
                    continue
            time.sleep(0.02)
        raise self._boot_failure("timed out waiting for systemd to start")

    def _wait_for_system_running(self, deadline: float) -> str:
        assert self._proc is not None
        state = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._proc.poll() is not None:
                raise self._boot_failure(f"systemd-nspawn exited with {self._proc.returncode}")
            try:
                result = self.run(
                    ["systemctl", "is-system-running", "--wait"],
                    check=False,
                    timeout=remaining,
                )
                state = result.stdout.strip()
            except TestbedError:
                state = "no answer"  # nspawn's exit is reported just above
            if state in ("running", "degraded"):
                return state
            if state in ("maintenance", "stopping"):
                # Emergency mode or a shutdown: waiting longer changes nothing.
                failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
                raise self._boot_failure(f"system is {state}; failed units:\n{failed}")
            # Early on the manager may not answer yet ("offline", bus errors).
            time.sleep(0.1)
        raise self._boot_failure(f"timed out waiting for boot; last state: {state or 'none'}")

    def poweroff(self, timeout: float = 15.0) -> None:
        """Shut down cleanly; kill hard if that takes longer than `timeout`.

        The file system stays in place, so `boot()` may be called again.
        """
        if not self.is_running():
            self._reap()
            return
        assert self._proc is not None
        try:
            self.run(["systemctl", "poweroff", "--no-block"], check=True, timeout=timeout)
        except TestbedError:
            # nspawn turns SIGTERM into a clean shutdown request to systemd.
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_hard()
        self._reap()

    def kill_hard(self) -> None:
        """End every process of the container at once, like pulling the plug.

        No shutdown code runs inside.  Data already written is kept (the
        kernel's page cache is shared with the host), so this simulates a
        crash of the machine's software, not loss of unsynced disk writes.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # Killing PID 1 takes the whole PID namespace down.  Killing only
            # nspawn would leave the container's systemd running orphaned.
            if self._pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid1, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            # With no tmpfs on the host's /run nspawn cannot remove this
            # per-machine directory itself; it is empty and ours.
            with contextlib.suppress(OSError):
                os.rmdir(f"/run/systemd/nspawn/propagate/{self.name}")
            remove_cgroups(self._cgroups)
            self._proc = None
            self._pid1 = None

    def stop(self) -> None:
        """Power off, unmount and delete the container's files (console log
        stays).  Idempotent; safe after a failed boot or a kill_hard()."""
        if self._stopped:
            return
        try:
            try:
                self.poweroff(timeout=10)
            finally:
                self.kill_hard()
                self._unmount()
                for leftover in ("merged", "merged.partial", "upper", "work"):
                    remove_tree(self.workdir / leftover)
                if self._owns_workdir:
                    remove_tree(self.workdir)
        finally:
            self._stopped = True
            _LIVE.discard(self)

    def _unmount(self) -> None:
        if self.backend == "overlay" and self._mounted:
            for attempt in range(20):
                result = subprocess.run(
                    ["umount", str(self.root)],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
                if result.returncode == 0 or not os.path.ismount(self.root):
                    break
                if attempt == 19:
                    # Still busy: detach it so nothing stays visible.
                    subprocess.run(["umount", "--lazy", str(self.root)], check=False)
                time.sleep(0.1)
        self._mounted = False

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- commands --------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container as root, output captured as text.

        The environment is a clean one (see CONTAINER_ENV) plus `env`; the
        host's environment never leaks in.  Commands start in / unless `cwd`
        says otherwise.
        """
        # nsenter's own --wd=DIR is resolved before entering the container's
        # root, so a directory change is left to env(1) inside instead.
        chdir = ["env", f"--chdir={cwd}"] if cwd else []
        command = ["nsenter", "--target", str(self.pid), "--all", "--", *chdir, *argv]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",  # binary output must not hide the exit code
            env={**CONTAINER_ENV, **(env or {})},
            # nsenter forks into the PID namespace; on timeout the whole
            # group is killed, not only nsenter.
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = self._kill_command(proc)
            raise CommandError(argv, None, stdout, stderr, f"timed out after {timeout:.0f} s") from None
        result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise CommandError(argv, result.returncode, stdout, stderr)
        return result

    @staticmethod
    def _kill_command(proc: subprocess.Popen[str]) -> tuple[str, str]:
        """Kill a timed-out command; return the output it had written."""
        # Everything in nsenter's group but nsenter itself, which must live
        # to reap its child: an orphan of nsenter is adopted by the host's
        # PID 1, not the container's, and if that never reaps it the zombie
        # blocks the container's shutdown.
        for pid in group_members(proc.pid):
            if pid != proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            return proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.communicate()

    def sh(
        self,
        script: str,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script (sh -e: stops at the first failing command)."""
        return self.run(["/bin/sh", "-ec", script], check=check, env=env, timeout=timeout)

    def service_main_pid(self, unit: str) -> int:
        """MainPID of `unit` as seen inside the container; 0 if not running."""
        result = self.run(["systemctl", "show", "--property=MainPID", "--value", unit])
        return int(result.stdout.strip() or "0")

    def http_get(self, url: str, timeout: float = 5.0) -> HttpResponse:
        """GET ``url`` as seen from inside the container's network (errors are returned)."""
        return self.http("GET", url, timeout=timeout)

    def http(self, method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> HttpResponse:
        """One HTTP request in the container's network: directly when it shares the host's,
        else through `nsenter --net` running the host's Python (the container needs none)."""
        if not self.private_network:
            return http_request(method, url, body, timeout)
        return http_in_netns(self.pid, method, url, body, timeout)

    def wait_http(self, url: str, timeout: float = 15.0) -> HttpResponse:
        """Poll `url` until something answers (a service just started)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.http_get(url, timeout=max(0.5, deadline - time.monotonic()))
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                if time.monotonic() > deadline:
                    raise TestbedError(f"no HTTP answer from {url} in {timeout} s: {error}") from error
                time.sleep(0.1)


# --------------------------------------------------------------------------
# Command line


def _main(args: Sequence[str]) -> int:
    if not args or args[0] not in ("build", "boot"):
        print("usage: python3 -m tests.e2e.testbed build|boot", file=sys.stderr)
        return 2
    problems = missing_prerequisites()
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return 1
    started = time.monotonic()
    root = build_base_root(cache_dir_from_env(), BASE_PACKAGES, suite=default_suite())
    print(f"base root {root} ready in {time.monotonic() - started:.1f} s")
    if args[0] == "boot":
        with Container(root) as container:
            container.boot()
            print(
                f"booted {container.name} ({container.backend}) in "
                f"{container.boot_seconds:.2f} s: {container.boot_state}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
