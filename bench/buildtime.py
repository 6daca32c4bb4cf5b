"""Benchmark 3: `nesop-deb build` time as the repository grows (runs bench/build_time.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import TOP, Goal, size, table

SCRIPT = TOP / "bench" / "build_time.py"


@dataclass(frozen=True)
class BuildTimes:
    data: dict[str, Any]

    @property
    def results(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.data["results"]
        return rows

    def goals(self) -> list[Goal]:
        first, last = self.results[0], self.results[-1]
        worst = max(self.results, key=lambda r: float(r["ratio"]))
        limit = float(self.data["goal_ratio"])
        return [
            Goal(
                f"Build time: {last['files']:,} files ≤ {limit:g}x the {first['files']:,}-file build",
                bool(self.data["goal_met"]),
                f"{last['median_s']:.3f} s vs {first['median_s']:.3f} s = {float(last['ratio']):.2f}x "
                f"(largest ratio {float(worst['ratio']):.2f}x at {worst['files']:,} files; limit {limit:g}x)",
            )
        ]


def measure(work: Path, sizes: list[int], runs: int) -> BuildTimes:
    out = work / "build_time.json"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--json",
        str(out),
        "--work",
        str(work / "repos"),
        "--runs",
        str(runs),
        "--sizes",
        ",".join(str(n) for n in sizes),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} failed:\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return BuildTimes(data)


def markdown(b: BuildTimes) -> str:
    first = b.results[0]
    rows = [
        [
            f"{r['files']:,}",
            f"{r['median_s']:.3f} s",
            f"{r['min_s']:.3f} s",
            f"{r['max_s']:.3f} s",
            f"{float(r['ratio']):.2f}x",
            size(r["update_deb_bytes"]),
            size(r["full_deb_bytes"]),
            f"{r['full_build_s']:.2f} s",
        ]
        for r in b.results
    ]
    return (
        f"One changed file in a generated repository of N tracked files; `nesop-deb build` run as a "
        f"subprocess {first['runs']} times per size (after one warm-up), sizes interleaved, by "
        f"`bench/build_time.py`.\n\n"
        + table(
            [
                "files",
                "median",
                "min",
                "max",
                f"vs {first['files']:,} files",
                "update .deb",
                "--full .deb",
                "--full build",
            ],
            rows,
        )
    )
