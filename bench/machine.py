"""The machine the benchmarks ran on: they mean little without it."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from bench.common import table


def _meminfo() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _disk(path: Path) -> str:
    df = subprocess.run(
        ["df", "-h", "--output=source,fstype,size", str(path)], capture_output=True, text=True, check=False
    )
    lines = df.stdout.split("\n")
    if df.returncode != 0 or len(lines) < 2:
        return "unknown"
    source, fstype, total = lines[1].split()
    rotational = "unknown"
    name = Path(source).name.rstrip("0123456789")
    flag = Path(f"/sys/block/{name}/queue/rotational")
    if flag.exists():
        rotational = "rotational" if flag.read_text().strip() == "1" else "non-rotational"
    return f"{source} ({fstype}, {total}, {rotational})"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "missing"
    return out.splitlines()[0].strip() if out else "missing"


def markdown(work: Path, started: float) -> str:
    rows = [
        ["date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))],
        ["CPUs (nproc)", f"{os.cpu_count()} × {_cpu_model()}"],
        ["memory", _meminfo()],
        ["kernel", platform.release()],
        ["OS", platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")],
        ["disk (work and containers)", _disk(work)],
        ["Python", platform.python_version()],
        ["dpkg", _version(["dpkg-deb", "--version"])],
    ]
    return table(["", ""], rows, align="ll")
