#!/usr/bin/env python3
"""Benchmark 6: building an app's virtualenv offline from a wheel directory, with pip and with uv.

    python3 -m bench.venv_build [--runs 5] [--python /usr/bin/python3] [--json PATH]
    bench/run.py --only venv        # the same, into the benchmark report

A server builds the app's virtualenv from the wheels an update package ships, before the stop and
without a network: no index (`--no-index`), only the wheel directory (`--find-links`), every pin
hashed (`--require-hashes`), wheels only, none of the machine's pip or uv configuration. For a
20-wheel web app and a 3-wheel one this times each way of doing it: create the virtualenv,
install the wheels, import every module (the check before the switch, `python -I -B`, so it writes
nothing), the total, and the size on disk. Every command runs in a new network namespace
(`unshare -n`: a loopback that is down and nothing else), so a build that reached for the network
would fail.

The wheels are downloaded once (pip download, for the target interpreter) into
build/bench-cache/venv-build/ and kept across runs; their hashes make the requirements files. uv
and a current pip are installed there into scratch virtualenvs, never into the project's. Runs of
the installers are interleaved, after one warm-up round. Nothing here is a goal: the ways are
compared with each other within the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: bench/venv_build.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import TOP, Stat, say, size, table

# A web app's pins, closed under their dependencies on Python >= 3.11: flask and its dependencies,
# gunicorn, requests and its dependencies, SQLAlchemy with greenlet, dateutil (tzdata), pytz,
# packaging. Four are compiled (markupsafe, charset-normalizer, greenlet, sqlalchemy).
PINS: dict[str, str] = {
    "blinker": "1.9.0",
    "certifi": "2026.10.19.post1",
    "charset-normalizer": "3.5.3",
    "click": "8.5.1",
    "flask": "3.1.3",
    "greenlet": "3.5.6",
    "gunicorn": "27.0.1",
    "idna": "3.20",
    "itsdangerous": "2.2.0",
    "jinja2": "3.1.6",
    "markupsafe": "3.0.4",
    "packaging": "26.4",
    "python-dateutil": "4.0.0",
    "pytz": "2026.6",
    "requests": "2.34.2",
    "sqlalchemy": "2.1.9",
    "typing-extensions": "4.16.0",
    "tzdata": "2026.6",
    "urllib3": "2.8.0",
    "werkzeug": "3.1.9",
}
MODULES = {
    "charset-normalizer": "charset_normalizer",
    "python-dateutil": "dateutil",
    "typing-extensions": "typing_extensions",
}
APPS: dict[str, tuple[str, ...]] = {
    "web app, 20 wheels": tuple(PINS),
    "small app, 3 wheels": ("gunicorn", "markupsafe", "packaging"),
}
PIP_VERSION = "26.3"
UV_VERSION = "0.13.9"
CACHE = TOP / "build" / "bench-cache" / "venv-build"
# What every measured command gets as its whole environment: nothing of the caller's (no PIP_*,
# UV_*, PYTHON* variables), no pip configuration file at all (PIP_CONFIG_FILE=/dev/null; pip's
# --isolated alone still reads /etc/pip.conf and /etc/xdg/pip/pip.conf).
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull}


class Unavailable(RuntimeError):
    """The benchmark cannot run here (no wheels, no uv); the report says why."""


@dataclass(frozen=True)
class Row:
    app: str
    key: str
    label: str
    create: Stat
    install: Stat
    imports: Stat
    total: Stat
    disk_bytes: int
    files: int
    pyc_files: int


@dataclass(frozen=True)
class VenvResult:
    python: str
    versions: dict[str, str]
    apps: dict[str, tuple[int, int]]  # app: wheels, bytes
    rows: list[Row]
    runs: int
    isolation: str
    unshare: Stat | None
    tool_bytes: dict[str, int]

    def row(self, app: str, key: str) -> Row | None:
        return next((r for r in self.rows if r.app == app and r.key == key), None)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    create: Callable[[Path], list[str]]
    install: Callable[[Path, Path], list[str]]  # (virtualenv, requirements file)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` failed with exit code {result.returncode}:\n"
            f"{(result.stderr or result.stdout)[-3000:]}"
        )
    return result.stdout


def _tag(python: str) -> str:
    out = _run(
        [python, "-c", "import platform, sys; print(sys.implementation.cache_tag, platform.machine())"]
    )
    return "-".join(out.split())


def _python_version(python: str) -> str:
    return _run([python, "-c", "import platform; print(platform.python_version())"]).strip()


def _ready(directory: Path, build: Callable[[Path], None]) -> Path:
    """A cached directory, built in place (a virtualenv does not move) and marked when complete."""
    if (directory / ".complete").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    build(directory)
    (directory / ".complete").write_text("")
    return directory


def tools(python: str, cache: Path) -> tuple[Path, Path]:
    """Two scratch virtualenvs: one as `python -m venv` makes it (the pip python3-venv bundles) with
    uv installed into it, one with the current pip."""
    tag = _tag(python)

    def bundled(d: Path) -> None:
        say(f"venv build: a scratch virtualenv with uv {UV_VERSION}")
        _run([python, "-m", "venv", "--clear", str(d)])
        _run([str(d / "bin" / "python"), "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"])

    def current(d: Path) -> None:
        say(f"venv build: a scratch virtualenv with pip {PIP_VERSION}")
        _run([python, "-m", "venv", "--clear", str(d)])
        _run([str(d / "bin" / "python"), "-m", "pip", "install", "-q", f"pip=={PIP_VERSION}"])

    try:
        return (
            _ready(cache / f"tools-uv{UV_VERSION}-{tag}", bundled),
            _ready(cache / f"pip{PIP_VERSION}-{tag}", current),
        )
    except RuntimeError as e:
        raise Unavailable(f"could not install uv {UV_VERSION} or pip {PIP_VERSION}: {e}") from e


def wheels(python: str, pip: Path, cache: Path) -> Path:
    """The pinned wheels for ``python``, downloaded once."""

    def download(d: Path) -> None:
        say(f"venv build: downloading {len(PINS)} wheels for {python}")
        _run(
            [
                str(pip / "bin" / "python"),
                "-m",
                "pip",
                "--python",
                python,
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(d),
                *(f"{name}=={version}" for name, version in PINS.items()),
            ]
        )

    try:
        directory = _ready(cache / f"wheels-{_tag(python)}", download)
    except RuntimeError as e:
        raise Unavailable(f"could not download the wheels: {e}") from e
    _wheel_files(directory)  # all there, one each
    return directory


def _wheel_files(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        if PINS.get(_normalize(name)) == version:
            found[_normalize(name)] = path
    missing = sorted(set(PINS) - set(found))
    if missing:
        raise Unavailable(f"{directory} lacks wheels for {', '.join(missing)}; remove it to download again")
    return found


def requirements(app: tuple[str, ...], found: dict[str, Path], path: Path) -> None:
    """A pinned, hashed requirements file, as `pip-compile --generate-hashes` writes it."""
    lines = []
    for name in sorted(app):
        digest = hashlib.sha256(found[name].read_bytes()).hexdigest()
        lines.append(f"{name}=={PINS[name]} \\\n    --hash=sha256:{digest}")
    path.write_text("\n".join(lines) + "\n")


def network_namespace() -> list[str]:
    """The prefix that runs a command with no network: `unshare -n` (as root) or in a user namespace."""
    if shutil.which("unshare"):
        for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
            if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0:
                return prefix
    return []


def _isolation(netns: list[str], python: str) -> str:
    if not netns:
        return "not isolated: `unshare -n` is not available here, so nothing proves the builds offline"
    # the interfaces of the namespace the command is in, up or down (SIOCGIFFLAGS; /sys/class/net
    # shows the namespace that mounted /sys), and whether a TCP connection even to 127.0.0.1 fails
    probe = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def up(name):
    return struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", name.encode(), 0)))[1] & 1
seen = [f"{n} ({'up' if up(n) else 'down'})" for _, n in socket.if_nameindex()]
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1).close()
    reach = "a TCP connection to 127.0.0.1 was made"
except OSError as e:
    reach = f"a TCP connection to 127.0.0.1 failed: {e.strerror}"
print(", ".join(seen) + "; " + reach)
"""
    seen = _run([*netns, python, "-c", probe]).strip()
    return f"every command ran under `{' '.join(netns)}`; its network interfaces: {seen}"


def variants(python: str, bundled: Path, current: Path, wheel_dir: Path, work: Path) -> list[Variant]:
    uv = str(bundled / "bin" / "uv")

    def pip_install(*extra: str) -> list[str]:
        return [
            "install",
            "--isolated",
            "--disable-pip-version-check",
            "--no-input",
            "--root-user-action=ignore",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheel_dir),
            "--only-binary=:all:",
            "--require-hashes",
            *extra,
        ]

    def pip_outside(pip: Path, *extra: str) -> Callable[[Path, Path], list[str]]:
        return lambda venv, req: [
            str(pip / "bin" / "python"),
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            *pip_install(*extra),
            "-r",
            str(req),
        ]

    def uv_install(*extra: str) -> Callable[[Path, Path], list[str]]:
        return lambda venv, req: [
            uv,
            "pip",
            "install",
            "--no-config",
            "--offline",
            "--no-python-downloads",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheel_dir),
            "--only-binary",
            ":all:",
            "--require-hashes",
            "--python",
            str(venv / "bin" / "python"),
            *extra,
            "-r",
            str(req),
        ]

    def stdlib_venv(venv: Path) -> list[str]:
        return [python, "-m", "venv", "--without-pip", str(venv)]

    def uv_venv(venv: Path) -> list[str]:
        return [
            uv,
            "venv",
            "--no-config",
            "--no-project",
            "--offline",
            "--no-python-downloads",
            "--quiet",
            "--python",
            python,
            str(venv),
        ]

    no_cache = ("--no-cache", "--link-mode", "copy")
    bundled_pip, current_pip = pip_version(bundled), pip_version(current)
    return [
        Variant(
            "pip-bundled",
            f"`venv --without-pip` + pip {bundled_pip} `--python`",
            stdlib_venv,
            pip_outside(bundled),
        ),
        Variant(
            "pip-current",
            f"`venv --without-pip` + pip {current_pip} `--python`",
            stdlib_venv,
            pip_outside(current),
        ),
        Variant(
            "pip-current-no-deps",
            "the same, `--no-deps`",
            stdlib_venv,
            pip_outside(current, "--no-deps"),
        ),
        Variant(
            "pip-current-no-compile",
            "the same, `--no-compile` (no byte code)",
            stdlib_venv,
            pip_outside(current, "--no-compile"),
        ),
        Variant(
            "pip-inside",
            f"`venv` (ensurepip: pip {bundled_pip}) + its own pip",
            lambda venv: [python, "-m", "venv", str(venv)],
            lambda venv, req: [str(venv / "bin" / "python"), "-m", "pip", *pip_install(), "-r", str(req)],
        ),
        Variant("uv", "`uv venv` + `uv pip install` (no cache, copy)", uv_venv, uv_install(*no_cache)),
        Variant(
            "uv-compile",
            "the same, `--compile-bytecode`",
            uv_venv,
            uv_install(*no_cache, "--compile-bytecode"),
        ),
        Variant(
            "uv-compile-no-deps",
            "the same, `--compile-bytecode --no-deps`",
            uv_venv,
            uv_install(*no_cache, "--compile-bytecode", "--no-deps"),
        ),
        Variant(
            "uv-hardlink",
            "uv, no cache, hardlink (its temporary cache on the same file system), `--compile-bytecode`",
            uv_venv,
            uv_install("--no-cache", "--link-mode", "hardlink", "--compile-bytecode"),
        ),
        Variant(
            "uv-cache",
            "uv, warm cache in the work directory (hardlink), `--compile-bytecode`",
            uv_venv,
            uv_install(
                "--cache-dir", str(work / "uv-cache"), "--link-mode", "hardlink", "--compile-bytecode"
            ),
        ),
    ]


def pip_version(venv: Path) -> str:
    return _run([str(venv / "bin" / "python"), "-m", "pip", "--version"]).split()[1]


def _disk(path: Path) -> tuple[int, int, int]:
    """Bytes on disk (each inode once), regular files, byte-code files."""
    seen: set[tuple[int, int]] = set()
    blocks = files = pyc = 0
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            blocks += st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                files += 1
                pyc += name.endswith(".pyc")
    return blocks, files, pyc


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.monotonic()
    _run(argv, env=env, cwd=cwd)
    return time.monotonic() - started


def measure(work: Path, runs: int = 5, python: str = "/usr/bin/python3", cache: Path = CACHE) -> VenvResult:
    work.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    bundled, current = tools(python, cache)
    wheel_dir = wheels(python, current, cache)
    found = _wheel_files(wheel_dir)
    netns = network_namespace()
    env = {**BASE_ENV, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp")}
    for d in ("home", "tmp", "venvs"):
        (work / d).mkdir(exist_ok=True)
    reqs: dict[str, Path] = {}
    for i, (app, names) in enumerate(APPS.items()):
        reqs[app] = work / f"requirements-{i}.txt"
        requirements(names, found, reqs[app])
    ways = variants(python, bundled, current, wheel_dir, work)

    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    sizes: dict[tuple[str, str], tuple[int, int, int]] = {}
    for run in range(runs + 1):
        say(f"venv build: {'warm-up round' if run == 0 else f'round {run} of {runs}'}")
        for app, names in APPS.items():
            imports = "import " + ", ".join(MODULES.get(n, n) for n in names)
            for way in ways:
                venv = work / "venvs" / way.key
                shutil.rmtree(venv, ignore_errors=True)
                create = _timed([*netns, *way.create(venv)], env, work)
                install = _timed([*netns, *way.install(venv, reqs[app])], env, work)
                check = _timed([*netns, str(venv / "bin" / "python"), "-I", "-B", "-c", imports], env, work)
                sizes[(app, way.key)] = _disk(venv)
                shutil.rmtree(venv)
                if run == 0:
                    continue
                t = times.setdefault((app, way.key), {"create": [], "install": [], "imports": []})
                t["create"].append(create)
                t["install"].append(install)
                t["imports"].append(check)

    rows = []
    for app in APPS:
        for way in ways:
            t = times[(app, way.key)]
            total = [sum(parts) for parts in zip(t["create"], t["install"], t["imports"], strict=True)]
            disk, files, pyc = sizes[(app, way.key)]
            rows.append(
                Row(
                    app,
                    way.key,
                    way.label,
                    Stat.of(t["create"]),
                    Stat.of(t["install"]),
                    Stat.of(t["imports"]),
                    Stat.of(total),
                    disk,
                    files,
                    pyc,
                )
            )
    unshare = None
    if netns:
        unshare = Stat.of(_timed([*netns, "true"], env, work) for _ in range(max(runs, 5)))
    uv_bin = bundled / "bin"
    tool_bytes = {
        "uv": sum((uv_bin / n).stat().st_size for n in ("uv", "uvx") if (uv_bin / n).exists()),
        f"pip {pip_version(current)}": _disk(_site_packages(current) / "pip")[0],
    }
    return VenvResult(
        python=f"{_python_version(python)} ({python})",
        versions={
            "pip (python3-venv's)": pip_version(bundled),
            "pip (current)": pip_version(current),
            "uv": _run([str(uv_bin / "uv"), "--version"]).split()[1],
        },
        apps={app: (len(names), sum(found[n].stat().st_size for n in names)) for app, names in APPS.items()},
        rows=rows,
        runs=runs,
        isolation=_isolation(netns, python),
        unshare=unshare,
        tool_bytes=tool_bytes,
    )


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _ms(s: Stat) -> str:
    return f"{s.median * 1000:.0f} ({s.low * 1000:.0f})"


def markdown(r: VenvResult) -> str:
    parts = [
        f"Python {r.python}; "
        + ", ".join(f"{k} {v}" for k, v in r.versions.items())
        + f". Median (min) of {r.runs} runs in ms, after a warm-up round; the ways interleaved. "
        "Create, install and import run one after the other before the stop (none of it is "
        f"outage). Isolation: {r.isolation}"
        + (f" (`unshare -n true` alone: {_ms(r.unshare)} ms, in every step)" if r.unshare else "")
        + ".\n",
    ]
    for app, (count, nbytes) in r.apps.items():
        rows = [row for row in r.rows if row.app == app]
        best = min(row.total.median for row in rows)
        parts.append(f"\n**{app}** ({count} wheels, {size(nbytes)})\n\n")
        parts.append(
            table(
                [
                    "way",
                    "create",
                    "install",
                    "import check",
                    "total",
                    "vs fastest",
                    "on disk",
                    "files (.pyc)",
                ],
                [
                    [
                        row.label,
                        _ms(row.create),
                        _ms(row.install),
                        _ms(row.imports),
                        _ms(row.total),
                        f"{row.total.median / best:.1f}x",
                        size(row.disk_bytes),
                        f"{row.files} ({row.pyc_files})",
                    ]
                    for row in rows
                ],
            )
        )
    parts.append("\n" + _why(r))
    return "".join(parts)


def _why(r: VenvResult) -> str:
    app = next(iter(r.apps))
    keys = (
        "pip-current",
        "pip-current-no-compile",
        "pip-inside",
        "uv",
        "uv-compile",
        "uv-hardlink",
        "uv-cache",
    )
    rows = {k: r.row(app, k) for k in keys}
    if any(row is None for row in rows.values()):
        return ""
    pip, pip_nc, inside, uv, uvc, uvh, uv_cache = (rows[k] for k in keys)
    assert pip and pip_nc and inside and uv and uvc and uvh and uv_cache  # for the type checker
    tools = ", ".join(f"{k} {size(v)}" for k, v in r.tool_bytes.items())
    return (
        f"Why ({app}): writing byte code is a large part of the install for both: pip's install "
        f"took {_ms(pip.install)} ms, {_ms(pip_nc.install)} ms with `--no-compile`. uv writes none "
        f"unless told to (`--compile-bytecode`); without it the first import compiles in memory, "
        f"every time the app starts and so inside the outage: the import check took "
        f"{_ms(uv.imports)} ms without byte code against {_ms(uvc.imports)} ms with it. Like for like "
        f"(byte code written, files copied), uv built the virtualenv in {_ms(uvc.total)} ms against "
        f"pip's {_ms(pip.total)} ms (uv took {uvc.total.median / pip.total.median:.2f}x pip's time); "
        f"hard-linking from "
        f"its temporary cache instead of copying, {_ms(uvh.total)} ms; from a warm persistent cache, "
        f"{_ms(uv_cache.total)} ms. A virtualenv made with its own pip (ensurepip) takes "
        f"{_ms(inside.create)} ms just to be created, needs the python3-venv package, and carries pip "
        f"(and on Python 3.11 setuptools): {size(inside.disk_bytes)} against {size(pip.disk_bytes)}. "
        f"What the installer itself weighs, installed: {tools}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="timed builds per way and app (5)")
    p.add_argument("--python", default="/usr/bin/python3", help="the servers' interpreter (/usr/bin/python3)")
    p.add_argument(
        "--work", type=Path, default=TOP / "build" / "bench-venv", help="scratch directory (emptied)"
    )
    p.add_argument("--cache", type=Path, default=CACHE, help="wheels and installers, kept across runs")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    work: Path = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    try:
        result = measure(work, args.runs, args.python, args.cache.resolve())
    except Unavailable as e:
        raise SystemExit(f"venv build: {e}") from e
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
