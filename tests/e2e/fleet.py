"""A fleet of booted Debian machines on a private network, driven by Ansible over SSH.

Each machine is a `Container` from the cached fleet root (`FLEET_PACKAGES`: the base packages and
openssh-server) in its own network namespace. A controller namespace holds a bridge with the
controller's address; Ansible (the host's ansible-core) and a web server run in it, entered with
`nsenter --net`, so nothing listens on or talks to the host's network::

     host netns: untouched
     netns nesop-<id>-ctl: br0 10.77.0.1/24  <- controller (ansible, http.server)
       ├─ v1 ─ veth ─ eth0 10.77.0.11 in netns nesop-<id>-h1  <- host1
       ├─ v2 ─ veth ─ eth0 10.77.0.12 in netns nesop-<id>-h2  <- host2 ...

Every machine gets its own SSH host key before its first boot; the controller knows them all
(`known_hosts`, `StrictHostKeyChecking=yes`) and logs in as root with its own key pair. The
machines have no Debian mirror (empty apt sources): packages come from a repository the test
serves with `serve()`.

From the repository root, as root::

    python3 -m tests.e2e.fleet boot --size 5 [--suites trixie,bookworm] [--serve DIR]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .baseroot import (
    BASE_PACKAGES,
    SUITES,
    build_base_root,
    cache_dir_from_env,
    default_suite,
    missing_prerequisites,
)
from .hostside import TestbedError, remove_tree
from .testbed import Container

__all__ = [
    "CONTROLLER",
    "FLEET_PACKAGES",
    "FLEET_TOOLS",
    "SUBNET",
    "Fleet",
    "Host",
    "missing_fleet_prerequisites",
]

SUBNET = "10.77.0"  # a /24 that exists only inside a fleet's namespaces
CONTROLLER = f"{SUBNET}.1"  # the bridge: Ansible and the web server

# No python3-apt: playbooks install with apt-get through `command`, not the apt module.
FLEET_PACKAGES: tuple[str, ...] = (*BASE_PACKAGES, "openssh-server")

FLEET_TOOLS: tuple[str, ...] = ("ip", "ssh", "ssh-keygen", "ansible-playbook")
FLEET_NEEDS = "apt-get install iproute2 openssh-client ansible-core"

CONTROLLER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SSHD_CONFIG = "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n"

MAX_HOSTS = 200  # addresses .11 .. .210


def missing_fleet_prerequisites() -> list[str]:
    """Why this machine cannot run a fleet; empty when it can."""
    problems = missing_prerequisites()
    problems.extend(f"{tool} not found" for tool in FLEET_TOOLS if shutil.which(tool) is None)
    return problems


@dataclass(frozen=True)
class Host:
    """One machine of a fleet."""

    name: str  # inventory name and hostname: "host1", ...
    address: str  # "10.77.0.11", ...
    netns: str  # its network namespace's name: "nesop-<id>-h1"
    link: str  # its port on the bridge, in the controller's namespace: "v1"
    box: Container  # the machine itself: run(), sh(), path(), kill_hard(), boot(), ...

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns


_LIVE: set[Fleet] = set()


@atexit.register
def _stop_all_live() -> None:
    # Safety net for an aborted run: namespaces and processes are global to the machine.
    for fleet in list(_LIVE):
        with contextlib.suppress(Exception):
            fleet.stop()


def _ip(*args: str) -> None:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise TestbedError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at `path`; returns the public key as "ssh-ed25519 AAAA..."."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def _in_parallel(action: Callable[[Host], None], hosts: Sequence[Host]) -> dict[str, BaseException]:
    """`action` on every host in its own thread; returns the errors by host name.

    Plain threads: concurrent.futures refuses new work once the interpreter shuts down, and
    `stop()` also runs from atexit.
    """
    errors: dict[str, BaseException] = {}

    def run(host: Host) -> None:
        try:
            action(host)
        except BaseException as error:  # reported by the caller
            errors[host.name] = error

    threads = [threading.Thread(target=run, args=(host,), name=f"fleet-{host.name}") for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Fleet:
    """N booted machines on one private bridge; a controller namespace with Ansible and a web server.

    `roots` is one root file system for every host (then `size` hosts, default 5), or one root per
    host (e.g. Debian 13 and Debian 12 roots from `build_base_root(cache, FLEET_PACKAGES,
    suite=...)`). `names` are the inventory names (default host1..hostN); host i always has the
    address 10.77.0.(10+i) and its bridge port v<i>. Files live in `workdir`: `ssh/` (the
    controller's key pair, `known_hosts`), `inventory.ini`, `ansible.cfg`, `home/` (the
    controller's HOME), `vars/` (extra vars of each playbook run), one directory per host (its
    overlay and `console.log`).

    `start()` sets up the network and boots every host; `stop()` ends everything (also at exit
    when a run is aborted) and is always safe to call. Usable as a context manager.
    """

    def __init__(
        self,
        roots: Path | Sequence[Path],
        workdir: Path,
        size: int | None = None,
        *,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(roots, Path):
            count = size if size is not None else len(names) if names is not None else 5
            per_host = [roots] * count
        else:
            per_host = list(roots)
            if size is not None and size != len(per_host):
                raise ValueError(f"size {size} but {len(per_host)} roots")
        names = list(names) if names is not None else [f"host{i}" for i in range(1, len(per_host) + 1)]
        if len(names) != len(per_host) or len(set(names)) != len(names):
            raise ValueError(f"need {len(per_host)} distinct host names, got {names}")
        if not 1 <= len(per_host) <= MAX_HOSTS:
            raise ValueError(f"a fleet has 1 to {MAX_HOSTS} hosts, not {len(per_host)}")
        self.workdir = workdir.resolve()
        self.id = uuid.uuid4().hex[:6]
        self.netns = f"nesop-{self.id}-ctl"  # names in /run/netns are global: unique per fleet
        self.hosts: list[Host] = []
        for i, (name, root) in enumerate(zip(names, per_host, strict=True), start=1):
            netns = f"nesop-{self.id}-h{i}"
            box = Container(
                root, self.workdir / name, name=netns, backend="overlay", netns=Path("/run/netns") / netns
            )
            self.hosts.append(Host(name, f"{SUBNET}.{10 + i}", netns, f"v{i}", box))
        self.key = self.workdir / "ssh" / "id_ed25519"
        self.known_hosts = self.workdir / "ssh" / "known_hosts"
        self.inventory = self.workdir / "inventory.ini"
        self.config = self.workdir / "ansible.cfg"
        self.home = self.workdir / "home"
        self._control_dir: Path | None = None  # ssh's sockets: short path under /tmp
        self._procs: list[subprocess.Popen[bytes]] = []
        self._runs = 0
        self._started = False
        self._stopped = False

    # -- context manager -------------------------------------------------

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- set-up ----------------------------------------------------------

    @property
    def netns_path(self) -> Path:
        """The controller's network namespace (for `nsenter --net=`)."""
        return Path("/run/netns") / self.netns

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in the fleet: {', '.join(h.name for h in self.hosts)}")

    def start(self) -> None:
        """Network, keys and per-host files, then boot every host (in parallel) until `running`.

        On failure everything made so far is undone and the error (with the console's end of a
        host that did not boot) raised.
        """
        if self._started or self._stopped:
            raise TestbedError("a fleet is started once")
        self._started = True
        _LIVE.add(self)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.key.parent.mkdir(exist_ok=True)
            self.home.mkdir(exist_ok=True)
            _keygen(self.key, "fleet-controller")
            self._control_dir = Path(tempfile.mkdtemp(prefix="nesop-cp-", dir="/tmp"))
            _ip("netns", "add", self.netns)
            _ip("-n", self.netns, "link", "set", "lo", "up")
            _ip("-n", self.netns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.netns, "addr", "add", f"{CONTROLLER}/24", "dev", "br0")
            _ip("-n", self.netns, "link", "set", "br0", "up")
            host_keys: dict[str, str] = {}

            def prepare(host: Host) -> None:
                host_keys[host.name] = self._prepare(host)

            _raise_first(_in_parallel(prepare, self.hosts))
            self.known_hosts.write_text("".join(f"{h.address} {host_keys[h.name]}\n" for h in self.hosts))
            self.inventory.write_text(self._inventory())
            self.config.write_text(self._ansible_cfg())
            _raise_first(_in_parallel(lambda h: h.box.boot(), self.hosts))
        except BaseException:
            self.stop()
            raise

    def _prepare(self, host: Host) -> str:
        """The host's network namespace and files before its first boot; returns its host key."""
        _ip("netns", "add", host.netns)
        _ip(
            "-n",
            self.netns,
            "link",
            "add",
            host.link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
        )
        _ip("-n", self.netns, "link", "set", host.link, "master", "br0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        box = host.box
        # The root's host keys were made once when it was built: the same on every machine.
        for old in box.path("/etc/ssh").glob("ssh_host_*"):
            old.unlink()
        public = _keygen(box.path("/etc/ssh/ssh_host_ed25519_key"), f"root@{host.name}")
        box.write_file("/etc/ssh/sshd_config.d/10-fleet.conf", SSHD_CONFIG)
        box.write_file("/root/.ssh/authorized_keys", self.key.with_suffix(".pub").read_text(), mode=0o600)
        box.path("/root/.ssh").chmod(0o700)
        box.write_file("/etc/hostname", f"{host.name}\n")
        box.write_file(
            "/etc/hosts",
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        )
        # No mirror in the fleet: a failing Debian source would fail every `apt-get update`.
        box.write_file("/etc/apt/sources.list", "")
        box.path("/etc/apt/sources.list.d/debian.sources").unlink(missing_ok=True)
        return public

    def _inventory(self) -> str:
        lines = ["[fleet]"]
        lines += [f"{h.name} ansible_host={h.address}" for h in self.hosts]
        lines += ["", "[fleet:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={self.key}"]
        return "\n".join(lines) + "\n"

    def _ansible_cfg(self) -> str:
        ssh_args = " ".join(
            [
                "-F /dev/null",
                "-o ControlMaster=auto -o ControlPersist=60s",
                f"-o UserKnownHostsFile={shlex.quote(str(self.known_hosts))}",
                "-o StrictHostKeyChecking=yes",
                "-o ServerAliveInterval=2 -o ServerAliveCountMax=3",
            ]
        )
        return (
            "[defaults]\n"
            f"inventory = {self.inventory}\n"
            "interpreter_python = /usr/bin/python3\n"
            "host_key_checking = True\n"
            "timeout = 3\n"
            "forks = 20\n"
            "retry_files_enabled = False\n"
            "\n[ssh_connection]\n"
            "pipelining = True\n"
            # unix socket paths are at most 108 bytes: a test's tmp_path may be too long
            f"control_path_dir = {self._control_dir}\n"
            f"ssh_args = {ssh_args}\n"
        )

    # -- the controller --------------------------------------------------

    def controller_env(self) -> dict[str, str]:
        """The environment of commands run as the controller: nothing of the host user's
        ~/.ssh or ~/.ansible is used."""
        return {
            "PATH": CONTROLLER_PATH,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "ANSIBLE_CONFIG": str(self.config),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }

    def _in_netns(self, argv: Sequence[str]) -> list[str]:
        # Only the network namespace: the controller sees the host's files (playbooks, repo).
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]

    def run_controller(
        self, argv: Sequence[str], *, timeout: float = 600, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` (e.g. ["ansible", "all", "-m", "ping"]) in the controller's network with
        `controller_env()` plus `env`; output captured, exit code not checked. On timeout the
        whole command is killed and TestbedError raised with its output."""
        proc = subprocess.Popen(
            self._in_netns(argv),
            env={**self.controller_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise TestbedError(
                f"{shlex.join(argv)} timed out after {timeout:.0f} s:\n{stdout[-3000:]}{stderr[-3000:]}"
            ) from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)

    def start_controller(
        self, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as the controller in its own session, output (both streams) to `log`;
        for a controller that is killed midway (`kill_controller`). `stop()` kills it if alive."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self._in_netns(argv),
                env={**self.controller_env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def kill_controller(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the controller's process group, as a crash of the operator's machine would.

        ssh's ControlPersist masters are daemons of their own (not in the group): they stay
        until they time out or `stop()`, as on a real controller.
        """
        _kill_group(proc)

    def _playbook_argv(self, playbook: Path, extra_vars: Mapping[str, object] | None) -> list[str]:
        argv = ["ansible-playbook"]
        if extra_vars is not None:
            self._runs += 1
            variables = self.workdir / "vars" / f"run-{self._runs}.json"
            variables.parent.mkdir(exist_ok=True)
            variables.write_text(json.dumps(extra_vars, indent=2) + "\n")
            argv += ["-e", f"@{variables}"]
        return [*argv, str(playbook)]

    def playbook(
        self,
        playbook: Path,
        extra_vars: Mapping[str, object] | None = None,
        *,
        timeout: float = 900,
    ) -> subprocess.CompletedProcess[str]:
        """`ansible-playbook PLAYBOOK -e @vars.json` as the controller (the extra vars written to
        a JSON file in `workdir/vars/`). Exit code not checked: 0 ok, 2 a task failed, 4 a host
        was unreachable."""
        return self.run_controller(self._playbook_argv(playbook, extra_vars), timeout=timeout)

    def start_playbook(
        self, playbook: Path, extra_vars: Mapping[str, object] | None, log: Path
    ) -> subprocess.Popen[bytes]:
        """`playbook()` started with `start_controller` (to be killed midway)."""
        return self.start_controller(self._playbook_argv(playbook, extra_vars), log)

    def serve(self, directory: Path, port: int = 8000) -> str:
        """Serve `directory` over HTTP on the controller's address (python3 -m http.server, in
        its own session, killed by `stop()`); returns its URL, e.g. http://10.77.0.1:8000/,
        once it listens. Its log is `workdir/http-PORT.log`."""
        log = self.workdir / f"http-{port}.log"
        argv = [
            "python3",
            "-m",
            "http.server",
            "--bind",
            CONTROLLER,
            "--directory",
            str(directory),
            str(port),
        ]
        proc = self.start_controller(argv, log)
        # nsenter execs the server: its /proc/PID/net/tcp is the controller namespace's table.
        listening = f"{_hex_address(CONTROLLER)}:{port:04X} 00000000:0000 0A"
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise TestbedError(f"http.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if listening in Path(f"/proc/{proc.pid}/net/tcp").read_text():
                    return f"http://{CONTROLLER}:{port}/"
            if time.monotonic() > deadline:
                _kill_group(proc)
                raise TestbedError(f"http.server did not listen on {CONTROLLER}:{port} in 15 s")
            time.sleep(0.02)

    # -- faults ----------------------------------------------------------

    def stop_sshd(self, host: Host) -> None:
        """Stop sshd and end its sessions: the controller's multiplexed connection too, which
        would otherwise keep the host reachable (ssh.service has KillMode=process)."""
        host.box.sh("systemctl stop ssh.service; pkill -KILL -x 'sshd|sshd-session' || true")

    def start_sshd(self, host: Host) -> None:
        """Start sshd again (returns once it is ready)."""
        host.box.run(["systemctl", "start", "ssh.service"])

    def cut_link(self, host: Host) -> None:
        """Take the host's bridge port down: its packets are lost (connections time out); the
        machine cannot undo this from inside."""
        _ip("-n", self.netns, "link", "set", host.link, "down")

    def restore_link(self, host: Host) -> None:
        _ip("-n", self.netns, "link", "set", host.link, "up")

    # -- tear-down -------------------------------------------------------

    def stop(self) -> None:
        """Stop every host (in parallel; overlays unmounted, console logs kept), kill the
        controller's processes (own ones by group, and every other process in its network
        namespace, e.g. ssh's ControlPersist masters), delete every namespace of the fleet.
        Idempotent; raises TestbedError at the end if a host could not be stopped."""
        if self._stopped:
            return
        self._stopped = True
        errors: dict[str, BaseException] = {}
        try:
            for proc in self._procs:
                _kill_group(proc)
            self._kill_members(self.netns)
            errors = _in_parallel(lambda h: h.box.stop(), self.hosts)
            for name in [self.netns, *(h.netns for h in self.hosts)]:
                self._kill_members(name)
                if (Path("/run/netns") / name).exists():
                    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            if self._control_dir is not None:
                remove_tree(self._control_dir)
        finally:
            _LIVE.discard(self)
        if errors:
            raise TestbedError(
                "could not stop hosts:\n" + "\n".join(f"{name}: {error}" for name, error in errors.items())
            )

    @staticmethod
    def _kill_members(netns: str) -> None:
        """SIGKILL every process in the named network namespace."""
        try:
            ns = os.stat(Path("/run/netns") / netns)
        except FileNotFoundError:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                mine = os.stat(f"/proc/{entry}/ns/net")
                if (mine.st_dev, mine.st_ino) == (ns.st_dev, ns.st_ino):
                    os.kill(int(entry), signal.SIGKILL)


def _raise_first(errors: dict[str, BaseException]) -> None:
    for error in errors.values():
        raise error


def _hex_address(address: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it (little-endian hex)."""
    return "".join(f"{int(part):02X}" for part in reversed(address.split(".")))


# --------------------------------------------------------------------------
# Command line


def _main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.e2e.fleet")
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("boot", help="boot a fleet and keep it until Ctrl-C")
    boot.add_argument("--size", type=int, default=5)
    boot.add_argument(
        "--suites",
        default="",
        help="Debian release of each host, comma separated (e.g. trixie,trixie,bookworm); "
        "the last one repeats up to --size; default NESOP_TESTBED_SUITE or trixie",
    )
    boot.add_argument("--serve", type=Path, help="a directory to serve on http://10.77.0.1:8000/")
    boot.add_argument("--workdir", type=Path, help="default: a new directory in /var/tmp")
    options = parser.parse_args(args)
    problems = missing_fleet_prerequisites()
    if problems:
        print(f"cannot run: {'; '.join(problems)} ({FLEET_NEEDS})", file=sys.stderr)
        return 1
    suites = [s for s in options.suites.split(",") if s] or [default_suite()]
    suites += [suites[-1]] * (options.size - len(suites))
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        print(f"--suites: unknown {', '.join(unknown)}; one of {', '.join(SUITES)}", file=sys.stderr)
        return 2
    roots = {s: build_base_root(cache_dir_from_env(), FLEET_PACKAGES, suite=s) for s in sorted(set(suites))}
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="nesop-fleet-", dir="/var/tmp"))
    # Both end the wait below and stop the fleet (SIGINT is ignored in a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    with Fleet([roots[s] for s in suites[: options.size]], workdir) as fleet:
        print(f"fleet {fleet.id}: {len(fleet.hosts)} hosts booted in {time.monotonic() - started:.1f} s")
        for host, suite in zip(fleet.hosts, suites, strict=False):
            print(f"  {host.name}  {host.address}  Debian {SUITES[suite]}  netns {host.netns}")
        if options.serve:
            print(f"serving {options.serve} on {fleet.serve(options.serve)}")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in fleet.controller_env().items())
        enter = f"nsenter --net={fleet.netns_path}"
        print(f"\nAs the controller:\n  {enter} env {env} ansible all -m ping")
        print(
            f"  {enter} ssh -F /dev/null -i {fleet.key} -o UserKnownHostsFile={fleet.known_hosts} "
            f"root@{fleet.hosts[0].address}"
        )
        print(f"A host's shell: nsenter --target {fleet.hosts[0].box.pid} --all /bin/bash")
        print("Ctrl-C stops the fleet.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    print(f"fleet stopped; console logs and keys are in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
