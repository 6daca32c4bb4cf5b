"""The fleet test bed itself: booted hosts on a private bridge, Ansible over SSH with strict host
keys, a web server on the controller's address, faults, and a clean stop."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import FleetFactory
from .fleet import CONTROLLER, Fleet
from .testbed import SUITES

pytestmark = pytest.mark.e2e

_CONNECT = """
import errno, json, socket, sys
result = {}
for address, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((address, port))
        result[address] = "connected"
    except OSError as error:
        result[address] = errno.errorcode.get(error.errno, str(error))
    finally:
        s.close()
print(json.dumps(result))
"""


def ping(fleet: Fleet, pattern: str = "all") -> tuple[int, dict[str, str], str]:
    """`ansible PATTERN -m ping` as the controller: exit code, each host's outcome, output."""
    result = fleet.run_controller(["ansible", pattern, "-m", "ping", "-o"], timeout=120)
    output = result.stdout + result.stderr
    outcomes = dict(re.findall(r"^(\S+) \| (SUCCESS|UNREACHABLE!|FAILED!)", result.stdout, re.MULTILINE))
    return result.returncode, outcomes, output


def host_network() -> set[str]:
    """The host's listening TCP sockets and links (other runs may change them too)."""
    listeners = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    return {" ".join(line.split()) for line in (listeners + links).splitlines()}


def fleet_traces(lines: set[str]) -> list[str]:
    """What of the host's network would come from a fleet: its address, ports, links."""
    pattern = re.compile(r"10\.77\.0\.|:8000 |:22 |^(br0|v\d+|eth0@)")
    return [line for line in lines if pattern.search(line)]


def netns_members(netns: Path) -> list[int]:
    ns = netns.stat()
    members = []
    for entry in Path("/proc").iterdir():
        try:
            mine = (entry / "ns/net").stat()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and (mine.st_dev, mine.st_ino) == (ns.st_dev, ns.st_ino):
            members.append(int(entry.name))
    return members


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def test_five_hosts_boot_and_answer_ansible_over_ssh_with_strict_host_keys(new_fleet: FleetFactory) -> None:
    fleet = new_fleet(5)

    for index, host in enumerate(fleet.hosts, start=1):
        assert (host.name, host.address) == (f"host{index}", f"10.77.0.{10 + index}")
        assert host.box.boot_state == "running", host.box.failed_units
        assert host.box.run(["systemctl", "is-active", "ssh.service"]).stdout.strip() == "active"
        assert host.box.run(["hostname"]).stdout.strip() == host.name
        assert host.box.path("/etc/apt/sources.list").read_text() == ""
        assert not host.box.path("/etc/apt/sources.list.d/debian.sources").exists()
    keys = [line.split()[2] for line in fleet.known_hosts.read_text().splitlines()]
    assert len(set(keys)) == 5  # each host its own key
    assert "StrictHostKeyChecking=yes" in fleet.config.read_text()

    # a host whose key is not the one known is refused (no connection was made before)
    known = fleet.known_hosts.read_text()
    lines = known.splitlines()
    fleet.known_hosts.write_text("\n".join([lines[0].rsplit(" ", 1)[0] + " " + keys[1], *lines[1:]]) + "\n")
    code, outcomes, output = ping(fleet, "host1")
    assert (code, outcomes) == (4, {"host1": "UNREACHABLE!"}), output
    assert "Host key verification failed" in output
    fleet.known_hosts.write_text(known)

    code, outcomes, output = ping(fleet)

    assert code == 0, output
    assert outcomes == {f"host{i}": "SUCCESS" for i in range(1, 6)}, output


def test_a_mixed_fleet_sees_only_its_network_and_the_served_repository(
    new_fleet: FleetFactory, tmp_path: Path
) -> None:
    fleet = new_fleet(suites=["trixie", "bookworm"])
    served = tmp_path / "repo"
    (served / "dists").mkdir(parents=True)
    (served / "dists" / "Release").write_text("Origin: fleet\n")

    url = fleet.serve(served)

    assert url == f"http://{CONTROLLER}:8000/"
    code, outcomes, output = ping(fleet)
    assert (code, outcomes) == (0, {"host1": "SUCCESS", "host2": "SUCCESS"}), output
    host_addresses = re.findall(
        r"inet (\S+)/",
        subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True
        ).stdout,
    )
    outside = [(address, 22) for address in [*host_addresses, "8.8.8.8"]]
    for host, suite in zip(fleet.hosts, ("trixie", "bookworm"), strict=True):
        os_release = host.box.run(["cat", "/etc/os-release"]).stdout
        assert f'VERSION_ID="{SUITES[suite]}"' in os_release
        fetched = host.box.run(
            [
                "python3",
                "-c",
                "import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())",
                url + "dists/Release",
            ]
        ).stdout
        assert fetched == "Origin: fleet\n\n"
        peer = fleet.hosts[1 - fleet.hosts.index(host)]
        targets = [*outside, (peer.address, 22), (CONTROLLER, 8000)]
        reached = json.loads(host.box.run(["python3", "-c", _CONNECT, json.dumps(targets)]).stdout)
        # no route beyond the fleet's /24: refused at once, nothing is sent
        assert reached == {
            **{address: "ENETUNREACH" for address, _ in outside},
            peer.address: "connected",
            CONTROLLER: "connected",
        }, host.name


def test_a_host_without_sshd_or_link_is_unreachable_until_restored(new_fleet: FleetFactory) -> None:
    fleet = new_fleet(5)
    assert ping(fleet)[0] == 0  # the controller's multiplexed connections are open now
    host2, host3 = fleet.host("host2"), fleet.host("host3")

    fleet.stop_sshd(host2)
    fleet.cut_link(host3)
    code, outcomes, output = ping(fleet)

    assert code == 4, output
    assert outcomes == {
        "host1": "SUCCESS",
        "host2": "UNREACHABLE!",
        "host3": "UNREACHABLE!",
        "host4": "SUCCESS",
        "host5": "SUCCESS",
    }, output

    fleet.start_sshd(host2)
    fleet.restore_link(host3)
    code, outcomes, output = ping(fleet)

    assert code == 0, output
    assert set(outcomes.values()) == {"SUCCESS"} and len(outcomes) == 5, output


def test_stop_leaves_nothing_behind_even_after_a_killed_controller(
    new_fleet: FleetFactory, tmp_path: Path
) -> None:
    before = host_network()
    fleet = new_fleet(2)
    (tmp_path / "www").mkdir()
    fleet.serve(tmp_path / "www")
    log = tmp_path / "controller.log"
    controller = fleet.start_controller(["ansible", "all", "-m", "command", "-a", "sleep 300"], log)
    deadline = time.monotonic() + 60
    while not all(h.box.run(["pgrep", "-x", "sleep"], check=False).returncode == 0 for h in fleet.hosts):
        assert controller.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert fleet_traces(host_network() - before) == []  # all of it is in the fleet's namespaces
    fleet.kill_controller(controller)
    # left in the controller's namespace: the web server and ssh's ControlPersist masters
    left = netns_members(fleet.netns_path)
    assert len(left) >= 3, left

    fleet.stop()
    fleet.stop()  # idempotent

    assert controller.poll() is not None
    assert [pid for pid in left if not process_gone(pid)] == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert fleet.id not in namespaces
    commands = []
    for entry in Path("/proc").iterdir():
        try:
            commands.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    assert [c for c in commands if str(fleet.workdir) in c or fleet.id in c] == []
    mount_points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert [point for point in mount_points if point.startswith(str(fleet.workdir))] == []
    assert fleet_traces(host_network() - before) == []
    assert all(h.box.console_log.is_file() for h in fleet.hosts)  # kept for a post-mortem
