"""Host-side helpers of the test bed: errors, processes, paths, HTTP, cgroups."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath


class TestbedError(RuntimeError):
    """The test bed itself failed (build, mount, boot, shutdown)."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    """A command run inside the container failed or timed out."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        note: str = "",
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.note = note
        status = f"exit code {returncode}" if returncode is not None else "no exit code"
        super().__init__(
            f"command {self.argv!r} failed ({status}){' ' + note if note else ''}\n"
            f"--- stdout ---\n{tail(stdout)}\n--- stderr ---\n{tail(stderr)}"
        )


def tail(text: str, limit: int = 4000) -> str:
    """The end of a long output: that is where the error usually is."""
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into another file system.

    A build or container killed at the wrong moment can leave a mount (for
    example /dev) inside the tree; following it would delete host files.
    """
    if os.path.lexists(path):
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
        )


def pid_namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process (from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may contain spaces; fields restart after ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        yield int(entry), int(fields[1]), int(fields[2])


def children(parent: int) -> list[int]:
    return [pid for pid, ppid, _ in _processes() if ppid == parent]


def group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group in _processes() if group == pgid]


def resolve_in_root(root: Path, path: str) -> tuple[Path, PurePosixPath]:
    """Host path and canonical container path of `path` inside `root`.

    Symbolic links are followed as the container would (absolute targets are
    relative to `root`), so e.g. /var/run never leads to the host's /run.
    """
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        raise ValueError(f"container path must be absolute: {path!r}")
    pending = deque(pure.parts[1:])
    current: list[str] = []
    links = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink():
            links += 1
            if links > 40:
                raise ValueError(f"too many symbolic links in {path!r}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = []
                pending.extendleft(reversed(target.parts[1:]))
            else:
                pending.extendleft(reversed(target.parts))
            continue
        current.append(part)
    return root.joinpath(*current), PurePosixPath("/", *current)


@dataclasses.dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


# No proxies: a proxy set in the environment would not reach loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> HttpResponse:
    """GET `url`; an HTTP error status is returned, not raised."""
    return http_request("GET", url, None, timeout)


def http_request(method: str, url: str, body: bytes | None, timeout: float = 5.0) -> HttpResponse:
    """One request (JSON body if any); an HTTP error status is returned, not raised."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, body, headers, method=method)
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return HttpResponse(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, error.read(), dict(error.headers))


_NETNS_CLIENT = """
import base64, json, sys
sys.path.insert(0, sys.argv[1])
from hostside import http_request
method, url, body, timeout = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
try:
    r = http_request(method, url, base64.b64decode(body) if body != "-" else None, timeout)
except OSError as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
else:
    print(json.dumps({"status": r.status, "body": base64.b64encode(r.body).decode(), "headers": r.headers}))
"""


def http_in_netns(pid: int, method: str, url: str, body: bytes | None, timeout: float) -> HttpResponse:
    """The same request from inside the network namespace of process ``pid`` (host files)."""
    import base64
    import json
    import subprocess
    import sys

    encoded = base64.b64encode(body).decode() if body is not None else "-"
    here = str(Path(__file__).resolve().parent)
    argv = ["nsenter", "--target", str(pid), "--net", "--", sys.executable, "-c", _NETNS_CLIENT]
    out = subprocess.run(
        [*argv, here, method, url, encoded, str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    if out.returncode != 0:
        raise ConnectionError(f"nsenter --net request failed: {out.stderr.strip()[-300:]}")
    data = json.loads(out.stdout)
    if "error" in data:
        raise ConnectionError(data["error"])
    return HttpResponse(int(data["status"]), base64.b64decode(data["body"]), dict(data["headers"]))


def free_port() -> int:
    """A TCP port free on loopback (containers share the host's network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- cgroups ----------------------------------------------------------------
#
# systemd-nspawn --keep-unit puts the container under its own cgroup (a `payload` child beside a
# `supervisor` one). Containers started from one process would all share that cgroup, and each
# container's systemd makes its units' cgroups there by the unit's name: two machines starting
# and stopping the same unit at once then create and remove each other's cgroups, and a start
# fails ("Failed to spawn executor: No such file or directory"). So each nspawn first moves into
# a cgroup of its own container, in every hierarchy systemd uses.


def _cgroup_bases() -> list[tuple[Path, str]]:
    """(mount point, this process's path there) for the unified hierarchy and, on a hybrid
    host, systemd's named v1 one."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            own["unified"] = path
        elif controllers == "name=systemd":
            own["systemd"] = path
    root = Path("/sys/fs/cgroup")
    bases: list[tuple[Path, str]] = []
    if "unified" in own:
        unified = root if (root / "cgroup.controllers").exists() else root / "unified"
        if (unified / "cgroup.procs").exists():
            bases.append((unified, own["unified"]))
    if "systemd" in own and (root / "systemd" / "cgroup.procs").exists():
        bases.append((root / "systemd", own["systemd"]))
    return bases


def container_cgroups(name: str) -> list[Path]:
    """A new cgroup per hierarchy for the container ``name``, under this process's own; empty
    where none can be made (the container then shares this process's, as before)."""
    made: list[Path] = []
    for base, own in _cgroup_bases():
        path = base / own.lstrip("/") / f"nesop-testbed-{name}"
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            continue
        made.append(path)
    return made


def in_cgroups(cgroups: list[Path], argv: list[str]) -> list[str]:
    """``argv``, run after its process moved into ``cgroups`` (by a shell that then execs it)."""
    if not cgroups:
        return argv
    script = (
        'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; '
        'shift; n=$((n-1)); done; exec "$@"'
    )
    return ["sh", "-c", script, "sh", str(len(cgroups)), *map(str, cgroups), *argv]


def remove_cgroups(cgroups: list[Path]) -> None:
    """Remove a stopped container's cgroups (and what its systemd left in them), deepest first."""
    for top in cgroups:
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(Path(entry[0]).parts)):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
