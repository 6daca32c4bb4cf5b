"""The cached Debian root file systems (12 "bookworm", 13 "trixie") test containers start from."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .hostside import TestbedError, remove_tree, tail

# Bump when the way the root is built changes, so old caches are not reused.
FORMAT_VERSION = "1"

# Debian releases a test bed can boot, with their numbers (the toolchain's +debNNu1 suffix).
SUITES: dict[str, int] = {"bookworm": 12, "trixie": 13}
# The release tests run on unless they ask for another (NESOP_TESTBED_SUITE overrides it): Debian's
# stable release. The story marked every_release (releases.py) runs on Debian 12 too.
DEFAULT_SUITE = "trixie"


def default_suite() -> str:
    suite = os.environ.get("NESOP_TESTBED_SUITE") or DEFAULT_SUITE
    if suite not in SUITES:
        raise TestbedError(f"NESOP_TESTBED_SUITE={suite}: not one of {', '.join(SUITES)}")
    return suite


def host_suite() -> str | None:
    """This machine's Debian release, when it is one the test bed knows."""
    try:
        fields = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
    except OSError:
        return None
    name = fields.get("VERSION_CODENAME", "").strip('"')
    return name if name in SUITES else None


def mirrors(suite: str) -> tuple[str, ...]:
    """Explicit one-line sources: given none, mmdebstrap reads sources from stdin, which fails or
    hangs when there is no terminal (as in CI)."""
    return (
        f"deb http://deb.debian.org/debian {suite} main",
        f"deb http://deb.debian.org/debian {suite}-updates main",
        f"deb http://deb.debian.org/debian-security {suite}-security main",
    )


BASE_PACKAGES: tuple[str, ...] = (
    "apt",
    "apt-utils",
    "ca-certificates",
    "dbus",
    "gpgv",  # the toolchain depends on it (signatures); Debian 13's apt verifies with sqv instead
    "iproute2",
    # PostgreSQL 15 (Debian 12) or 17 (Debian 13) with its client; installed but stopped, see
    # POSTGRESQL_HOOK (tests/e2e/postgres.py starts it for the tests that use it).
    "postgresql",
    "procps",
    "python3",
    "sqlite3",
    "sudo",  # the guide's server commands are run as written (tests/e2e/test_guide_scenarios.py)
    "systemd",
    "systemd-sysv",
)

HOSTNAME = "nesop-testbed"

# /var/tmp survives reboots, so the slow build is paid once per machine.
DEFAULT_CACHE_DIR = Path("/var/tmp/nesop-deb-testbed")


def cache_dir_from_env() -> Path:
    return Path(os.environ.get("NESOP_TESTBED_CACHE") or DEFAULT_CACHE_DIR)


# Units that only cost boot time or do periodic work behind a test's back
# (the apt timers would try the network and take the dpkg lock).
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "console-getty.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty.target",
    "systemd-networkd-wait-online.service",
)

# The Debian mirror is routed to a closed port so that apt fails at once
# instead of quietly downloading.  The sources list stays as on a real server;
# local .debs and local repositories (file: or loopback) are not affected.
APT_OFFLINE_CONF = """\
// Test bed: the Debian mirror is unreachable on purpose so that no test
// depends on the network.  Local .debs and local repositories still work.
Acquire::http::Proxy::deb.debian.org "http://127.0.0.1:9/";
Acquire::Retries "0";
APT::Periodic::Enable "0";
"""

HOSTS = f"""\
127.0.0.1\tlocalhost
127.0.1.1\t{HOSTNAME}
::1\tlocalhost ip6-localhost ip6-loopback
"""

# The cluster Debian's postinst creates (<version>/main) is left stopped and does not start at
# boot (start.conf "manual", postgresql.service disabled), so containers that do not use it pay
# nothing for it; tests/e2e/postgres.py turns it back into Debian's default and starts it.
POSTGRESQL_HOOK = (
    'for conf in "$1"/etc/postgresql/*/main/start.conf; do '
    'if [ -e "$conf" ]; then sed -i "s/^auto$/manual/" "$conf"; fi; done; '
    'if [ -e "$1/usr/lib/systemd/system/postgresql.service" ]; then '
    'chroot "$1" systemctl disable --quiet postgresql.service; fi'
)

# The file contents go into single-quoted shell words below.
assert "'" not in HOSTS + APT_OFFLINE_CONF

CUSTOMIZE_HOOKS: tuple[str, ...] = (
    'chroot "$1" systemctl mask --quiet ' + " ".join(MASKED_UNITS),
    'chroot "$1" systemctl set-default --quiet multi-user.target',
    POSTGRESQL_HOOK,
    f'echo {HOSTNAME} > "$1/etc/hostname"',
    f"printf '%s' '{HOSTS}' > \"$1/etc/hosts\"",
    f"printf '%s' '{APT_OFFLINE_CONF}' > \"$1/etc/apt/apt.conf.d/99nesop-testbed\"",
    # Each container writes its own machine-id (see Container); the shared
    # base must not carry one.
    ': > "$1/etc/machine-id"',
)

REQUIRED_TOOLS: tuple[str, ...] = ("mmdebstrap", "systemd-nspawn", "nsenter", "unshare", "mount")


def missing_prerequisites() -> list[str]:
    """Why this machine cannot run the test bed; empty when it can."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    problems.extend(f"{tool} not found" for tool in REQUIRED_TOOLS if shutil.which(tool) is None)
    return problems


def base_root_key(packages: Sequence[str], suite: str = DEFAULT_SUITE) -> str:
    """Cache key: everything that changes the content of the built root."""
    recipe = {
        "format": FORMAT_VERSION,
        "suite": suite,
        "mirrors": list(mirrors(suite)),
        "packages": sorted(set(packages)),
        "hooks": list(CUSTOMIZE_HOOKS),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"{suite}-{digest[:16]}"


def _is_complete(root: Path) -> bool:
    return (root / "usr/lib/systemd/systemd").exists()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestbedError(f"timed out waiting for lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_base_root(
    cache_dir: Path,
    packages: Sequence[str] = BASE_PACKAGES,
    *,
    suite: str = DEFAULT_SUITE,
    lock_timeout: float = 900.0,
) -> Path:
    """Return a cached root of Debian ``suite`` with `packages`, building it if needed.

    The root is built into a temporary directory and renamed into place, so
    an interrupted build never leaves a half root under the final name.  A
    lock file makes concurrent runs wait for one build instead of racing.
    Treat the result as read-only: containers use it as overlay lower layer.
    Packages a test needs inside (beyond local .debs) must be listed here:
    the containers cannot download anything.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    if suite not in SUITES:
        raise TestbedError(f"unknown Debian suite {suite!r}: one of {', '.join(SUITES)}")
    key = base_root_key(packages, suite)
    final = cache_dir / key
    if _is_complete(final):
        return final
    with _file_lock(cache_dir / f"{key}.lock", lock_timeout):
        if _is_complete(final):
            return final  # another run built it while we waited
        for stale in cache_dir.glob(f"{key}.tmp-*"):
            remove_tree(stale)
        tmp = cache_dir / f"{key}.tmp-{os.getpid()}"
        log_path = cache_dir / f"{key}.build.log"
        started = time.monotonic()
        argv = [
            # A private mount namespace: the /proc, /sys and /dev mounts that
            # mmdebstrap makes in the chroot vanish with it even if killed.
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--include=" + ",".join(sorted(set(packages))),
            *(f"--customize-hook={hook}" for hook in CUSTOMIZE_HOOKS),
            suite,
            str(tmp),
            *mirrors(suite),
        ]
        with log_path.open("w") as log:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        seconds = time.monotonic() - started
        if result.returncode != 0 or not _is_complete(tmp):
            remove_tree(tmp)
            raise TestbedError(
                f"mmdebstrap failed (exit code {result.returncode}); log {log_path}:\n"
                + tail(log_path.read_text(errors="replace"))
            )
        tmp.rename(final)
        info = {"key": key, "packages": sorted(set(packages)), "build_seconds": round(seconds, 1)}
        (cache_dir / f"{key}.json").write_text(json.dumps(info, indent=2) + "\n")
        return final
